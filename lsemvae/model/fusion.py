"""Fusion of per-lead Gaussian experts: pure functions plus the small HiME gate module.

Shape contract (as in pykale/cardiac): expert means and log-variances ``[M, B, D]``, an expert mask
``[M, B]`` (True = present) and the names of the M rows. Groups are found **by lead name**
(:data:`lsemvae.leads.LEAD_GROUPS`), never by position, so any row order or subset works.

Every fusion returns a :class:`GaussianMixture` whose components are products of experts that
**include the prior expert N(0, I)** (the paper's code appends it, then its grouping drops it again):

* ``poe``        one component: PoE over all present leads + prior.
* ``moe``        one component per lead (lead x prior), equal weights over present leads.
* ``hime``       one component per anatomical group (PoE inside the group + prior), equal weights
                 over present groups (the paper's fixed 1/4, but as a true mixture, not a
                 parameter average).
* ``hime-gated`` as ``hime`` with weights from a learned gate (softmax over present groups).

Absent components get weight exactly 0 and the rest renormalise; with no expert at all every
component equals the prior, so uniform weights are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from lsemvae.leads import LEAD_GROUPS, LEADS_12

_MASKED_LOGIT = -1e9  # finite: a fully masked row then softmaxes to uniform instead of NaN


@dataclass(frozen=True)
class GaussianMixture:
    """Diagonal-Gaussian mixture: ``mu``/``logvar`` ``[K, B, D]``, ``weights`` ``[K, B]`` summing to 1."""

    mu: Tensor
    logvar: Tensor
    weights: Tensor
    names: tuple[str, ...]

    def mean(self) -> Tensor:
        """Mixture mean ``[B, D]`` (the deterministic fused latent used by task heads)."""
        return (self.weights.unsqueeze(-1) * self.mu).sum(0)

    def moment_matched_logvar(self) -> Tensor:
        """Log-variance ``[B, D]`` of the moment-matched Gaussian (for reporting)."""
        w = self.weights.unsqueeze(-1)
        second = (w * (self.logvar.exp() + self.mu**2)).sum(0)
        return torch.log((second - self.mean() ** 2).clamp_min(1e-8))

    def rsample(self) -> Tensor:
        """One reparameterised sample from **every** component, ``[K, B, D]`` (stratified sampling)."""
        return self.mu + torch.exp(0.5 * self.logvar) * torch.randn_like(self.mu)


def poe(mu: Tensor, logvar: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Product of the present experts and the prior N(0, I): ``[M,B,D] -> [B,D]``.

    Precisions add (the prior contributes 1); the mean is precision-weighted. Masked experts
    contribute exactly nothing, including gradient, even if their values are not finite.
    """
    m = mask.unsqueeze(-1)
    precision = torch.where(m, torch.exp(-logvar), torch.zeros_like(logvar))
    weighted = torch.where(m, precision * mu, torch.zeros_like(mu))
    total = precision.sum(0) + 1.0
    return weighted.sum(0) / total, -torch.log(total)


def _renormalise(available: Tensor) -> Tensor:
    """Equal weights over available components ``[K, B]``; uniform if none is available."""
    a = available.float()
    count = a.sum(0, keepdim=True)
    return torch.where(count > 0, a / count.clamp_min(1.0), torch.full_like(a, 1.0 / a.shape[0]))


def masked_softmax(logits: Tensor, available: Tensor) -> Tensor:
    """Softmax over components (dim 0) of the available ones; uniform if none is available."""
    return torch.softmax(torch.where(available, logits, torch.full_like(logits, _MASKED_LOGIT)), dim=0)


def group_rows(leads: Sequence[str]) -> dict[str, list[int]]:
    """Rows of ``leads`` belonging to each anatomical group, by lead name (empty groups kept)."""
    return {group: [i for i, name in enumerate(leads) if name in members] for group, members in LEAD_GROUPS.items()}


def group_poe(mu: Tensor, logvar: Tensor, mask: Tensor, leads: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """PoE (with prior) inside each anatomical group: ``[G,B,D]`` means/logvars and ``[G,B]`` presence."""
    mus, logvars, present = [], [], []
    for rows in group_rows(leads).values():
        if rows:
            g_mu, g_lv = poe(mu[rows], logvar[rows], mask[rows])
            g_present = mask[rows].any(0)
        else:
            g_mu, g_lv = torch.zeros_like(mu[0]), torch.zeros_like(logvar[0])
            g_present = torch.zeros_like(mask[0])
        mus.append(g_mu)
        logvars.append(g_lv)
        present.append(g_present)
    return torch.stack(mus), torch.stack(logvars), torch.stack(present)


def poe_fusion(mu: Tensor, logvar: Tensor, mask: Tensor, leads: Sequence[str] = LEADS_12) -> GaussianMixture:
    p_mu, p_lv = poe(mu, logvar, mask)
    return GaussianMixture(p_mu[None], p_lv[None], torch.ones_like(mask[:1], dtype=mu.dtype), ("poe",))


def moe_fusion(mu: Tensor, logvar: Tensor, mask: Tensor, leads: Sequence[str] = LEADS_12) -> GaussianMixture:
    comp = [poe(mu[i : i + 1], logvar[i : i + 1], mask[i : i + 1]) for i in range(mu.shape[0])]
    return GaussianMixture(
        torch.stack([c[0] for c in comp]), torch.stack([c[1] for c in comp]), _renormalise(mask), tuple(leads)
    )


def hime_fusion(mu: Tensor, logvar: Tensor, mask: Tensor, leads: Sequence[str] = LEADS_12) -> GaussianMixture:
    g_mu, g_lv, g_present = group_poe(mu, logvar, mask, leads)
    return GaussianMixture(g_mu, g_lv, _renormalise(g_present), tuple(LEAD_GROUPS))


def hime_gated_fusion(
    mu: Tensor, logvar: Tensor, mask: Tensor, leads: Sequence[str], gate: Callable[[Tensor, Tensor], Tensor]
) -> GaussianMixture:
    """``gate`` maps the groups' ``[G,B,D]`` means and log-variances to ``[G,B]`` logits (:class:`GroupGate`)."""
    g_mu, g_lv, g_present = group_poe(mu, logvar, mask, leads)
    return GaussianMixture(g_mu, g_lv, masked_softmax(gate(g_mu, g_lv), g_present), tuple(LEAD_GROUPS))


class GroupGate(nn.Module):
    """Scores each group from its own PoE posterior (mean, log-variance) plus a learned group bias.

    Shared across groups so a missing group changes nothing but the renormalisation.
    """

    def __init__(self, latent_dim: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(2 * latent_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.score[-1].weight)  # starts at equal weights: a gate learns only what its loss asks
        nn.init.zeros_(self.score[-1].bias)
        self.group_bias = nn.Parameter(torch.zeros(len(LEAD_GROUPS)))

    def forward(self, g_mu: Tensor, g_logvar: Tensor) -> Tensor:
        # Batch first inside ([B, K, 2D]): Opacus computes per-sample gradients over dim 0, so the
        # group axis must not come first (it would be taken for the batch).
        x = torch.cat([g_mu, g_logvar], dim=-1).transpose(0, 1)
        return self.score(x).squeeze(-1).transpose(0, 1) + self.group_bias[:, None]


class Fusion(nn.Module):
    """The ``fusion`` submodule: dispatches on ``kind``; only ``hime-gated`` has parameters."""

    def __init__(self, kind: str, latent_dim: int, gate_hidden: int):
        super().__init__()
        self.kind = kind
        self.gate = GroupGate(latent_dim, gate_hidden) if kind == "hime-gated" else None

    def forward(self, mu: Tensor, logvar: Tensor, mask: Tensor, leads: Sequence[str] = LEADS_12) -> GaussianMixture:
        if self.kind == "poe":
            return poe_fusion(mu, logvar, mask, leads)
        if self.kind == "moe":
            return moe_fusion(mu, logvar, mask, leads)
        if self.kind == "hime":
            return hime_fusion(mu, logvar, mask, leads)
        return hime_gated_fusion(mu, logvar, mask, leads, self.gate)


def expert_dropout(lead_mask: Tensor, keep_prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Randomly drop present experts ``[B, 12]`` (keep each with ``keep_prob``), keeping at least one.

    Trains the fusion to work from any lead subset. A record whose draw dropped all
    of its leads keeps one present lead chosen at random.
    """
    u = torch.rand(lead_mask.shape, generator=generator)
    kept = lead_mask & (u < keep_prob)
    none_kept = ~kept.any(1) & lead_mask.any(1)
    if none_kept.any():
        score = torch.where(lead_mask, torch.rand(lead_mask.shape, generator=generator), torch.full(lead_mask.shape, -1.0))
        rescue = torch.zeros_like(lead_mask)
        rescue[torch.arange(lead_mask.shape[0]), score.argmax(1)] = True
        kept = kept | (rescue & none_kept[:, None])
    return kept
