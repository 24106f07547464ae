"""The LS-EMVAE module: per-lead encoders -> fusion -> (decoders, task heads).

Submodule names are a contract with the federation (state_dict prefixes are its parameter
groups): ``encoders.<lead>``, ``fusion``, ``decoders.<lead>`` (or ``decoders.shared``),
``heads.<task>``. Inputs are always ``[B, 12, T]`` in LEADS_12 order with a ``[B, 12]`` lead
mask; each lead reaches the encoder of its own name, absent leads contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lsemvae.leads import LEADS_12, lead_index
from lsemvae.model.config import ModelConfig
from lsemvae.model.decoders import build_decoders, decode_all
from lsemvae.model.encoders import LeadEncoder
from lsemvae.model.fusion import Fusion, GaussianMixture
from lsemvae.model.heads import build_heads

#: Parameter groups a federated round exchanges (decoders stay home: they are pretraining-only).
ROUND_GROUPS = ("encoders.", "fusion.", "heads.")


@dataclass(frozen=True)
class ModelOutput:
    mu_leads: Tensor  # [B, 12, D] per-lead posterior means (zeros for leads absent from the batch)
    logvar_leads: Tensor  # [B, 12, D]
    lead_mask: Tensor  # [B, 12] leads present in the data
    fusion_mask: Tensor  # [B, 12] experts the fusion used (lead_mask minus expert dropout)
    mixture: GaussianMixture  # fused posterior, components [K, B, D]
    mu: Tensor  # [B, D] mixture mean (deterministic fused latent)
    logvar: Tensor  # [B, D] moment-matched log-variance
    gates: Tensor  # [B, K] mixture weights (HiME: one per group in LEAD_GROUPS order)
    z: Tensor | None  # [K, B, D] one sample per component (component means when not sampling)
    recon_components: Tensor | None  # [K, B, 12, T]
    recon: Tensor | None  # [B, 12, T] mixture-weighted reconstruction
    logits: dict[str, Tensor]  # task -> [B, n_outputs]


class LSEMVAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({lead: LeadEncoder(config) for lead in LEADS_12})
        self.fusion = Fusion(config.fusion, config.latent_dim, config.gate_hidden)
        self.decoders = build_decoders(config)
        self.heads = build_heads(config)
        self._head_rows = [lead_index(lead) for lead in config.head_leads]

    @property
    def reads_any_length(self) -> bool:
        """Pooled encoders (compact) score inputs of any length; the faithful ones flatten a fixed length."""
        return self.config.encoder_pool != "flatten"

    def encode(self, x: Tensor, lead_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-lead posteriors ``[B, 12, D]``. Leads absent from the whole batch are not run at all."""
        batch, dim = x.shape[0], self.config.latent_dim
        in_batch = lead_mask.any(0).tolist()
        mus, logvars = [], []
        for i, lead in enumerate(LEADS_12):
            if in_batch[i]:
                mu, logvar = self.encoders[lead](x[:, i : i + 1])
            else:
                mu = logvar = x.new_zeros(batch, dim)
            mus.append(mu)
            logvars.append(logvar)
        return torch.stack(mus, 1), torch.stack(logvars, 1)

    def head_features(self, mu: Tensor, mu_leads: Tensor, lead_mask: Tensor) -> Tensor:
        """What the task heads see. ``leads+fused`` keeps every lead's own evidence next to the fused
        mean, so a gate that favours one group cannot hide the other leads from the heads."""
        kind = self.config.head_input
        if kind == "fused":
            return mu
        rows = self._head_rows if kind == "concat" else list(range(len(LEADS_12)))
        feats = torch.where(lead_mask[:, rows, None], mu_leads[:, rows], torch.zeros_like(mu_leads[:, rows])).flatten(1)
        return feats if kind == "concat" else torch.cat([feats, mu], dim=1)

    def fuse_and_predict(self, mu_leads: Tensor, logvar_leads: Tensor, lead_mask: Tensor,
                         fusion_mask: Tensor | None = None) -> tuple[GaussianMixture, dict[str, Tensor]]:
        """Fusion and task heads from per-lead posteriors ``[B, 12, D]`` (also used on cached encoder outputs)."""
        lead_mask = lead_mask.bool()
        fmask = lead_mask if fusion_mask is None else fusion_mask.bool()
        mixture = self.fusion(mu_leads.transpose(0, 1), logvar_leads.transpose(0, 1), fmask.T, LEADS_12)
        feats = self.head_features(mixture.mean(), mu_leads, lead_mask)
        return mixture, {name: head(feats) for name, head in self.heads.items()}

    def forward(
        self,
        x: Tensor,
        lead_mask: Tensor,
        *,
        fusion_mask: Tensor | None = None,
        decode: bool = True,
        sample: bool | None = None,
    ) -> ModelOutput:
        """Encode, fuse, predict and (``decode=True``) reconstruct all 12 leads.

        ``fusion_mask`` (a subset of ``lead_mask``) hides experts from the fusion, e.g. expert
        dropout; the decoders still reconstruct every lead. ``sample`` defaults to
        ``self.training``; in eval the component means are decoded (deterministic).
        """
        lead_mask = lead_mask.bool()
        fmask = lead_mask if fusion_mask is None else fusion_mask.bool() & lead_mask
        mu_leads, logvar_leads = self.encode(x, lead_mask)
        mixture, logits = self.fuse_and_predict(mu_leads, logvar_leads, lead_mask, fmask)
        mu = mixture.mean()
        z = recon_components = recon = None
        if decode:
            z = mixture.rsample() if (self.training if sample is None else sample) else mixture.mu
            k, b, d = z.shape
            recon_components = decode_all(self.decoders, z.reshape(k * b, d)).reshape(k, b, len(LEADS_12), -1)
            recon = (mixture.weights[..., None, None] * recon_components).sum(0)
        return ModelOutput(
            mu_leads, logvar_leads, lead_mask, fmask, mixture, mu, mixture.moment_matched_logvar(),
            mixture.weights.T, z, recon_components, recon, logits,
        )

    def forward_logits(self, x: Tensor, lead_mask: Tensor) -> dict[str, Tensor]:
        """The classifier interface shared with every baseline: logits from the posterior mean."""
        return self.forward(x, lead_mask, decode=False).logits


def build_model(config: ModelConfig) -> LSEMVAE:
    return LSEMVAE(config)


def parameter_count(model: nn.Module, prefixes: tuple[str, ...] | None = None) -> int:
    """Parameters whose state_dict name starts with one of ``prefixes`` (all when None)."""
    return sum(p.numel() for n, p in model.named_parameters() if prefixes is None or n.startswith(prefixes))


def round_bytes(model: nn.Module) -> int:
    """Bytes a federated round carries per direction: encoders + fusion + heads as float32."""
    return 4 * parameter_count(model, ROUND_GROUPS)
