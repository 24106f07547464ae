"""Decoders: reconstruct every lead's target from a latent sample.

``per-lead`` (default): one small MLP per lead (``decoders.<lead>``), reconstructing the lead's
R-aligned median beat. A pooled latent cannot say where the beats of a 10-s strip fall, so
reconstructing the raw strip collapses (the latent learns nothing); the median beat is position-free.
``shared``: the paper's single unconditioned deconvolution decoder (``decoders.shared``); it is
called once and its output serves all 12 leads, which is what the paper's code computes
(12 bit-identical outputs: the decoder is told no lead). Kept for the faithful profile only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsemvae.leads import LEADS_12
from lsemvae.model.config import ModelConfig


class LeadDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.decoder_hidden), nn.GELU(),
            nn.Linear(cfg.decoder_hidden, cfg.decoder_hidden), nn.GELU(),
            nn.Linear(cfg.decoder_hidden, cfg.target_samples),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class SharedDeconvDecoder(nn.Module):
    """Linear latent->64 x T/8, then three stride-2 transposed convolutions (the paper's decoder)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.steps = cfg.n_samples // 8
        self.fc = nn.Linear(cfg.latent_dim, 64 * self.steps)
        self.deconv = nn.Sequential(
            nn.ConvTranspose1d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose1d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose1d(16, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.fc(z).view(-1, 64, self.steps)).squeeze(1)


def build_decoders(cfg: ModelConfig) -> nn.ModuleDict:
    if cfg.decoder == "shared":
        return nn.ModuleDict({"shared": SharedDeconvDecoder(cfg)})
    return nn.ModuleDict({lead: LeadDecoder(cfg) for lead in LEADS_12})


def decode_all(decoders: nn.ModuleDict, z: Tensor) -> Tensor:
    """``z`` ``[N, D]`` -> ``[N, 12, T]`` in LEADS_12 order, each lead through its own decoder by name."""
    if "shared" in decoders:
        out = decoders["shared"](z)
        return out.unsqueeze(1).expand(-1, len(LEADS_12), -1)
    return torch.stack([decoders[lead](z) for lead in LEADS_12], dim=1)
