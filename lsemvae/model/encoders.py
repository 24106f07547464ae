"""Per-lead encoders: one small 1-D CNN per lead, each producing a diagonal Gaussian.

``avgmax`` (compact): conv blocks with GroupNorm (Opacus-safe, per-sample), then average and max
pooling over time, so any crop length works. ``flatten`` (faithful): the paper's three stride-2
convolutions, ReLU, no normalisation, flattened into two 40000->256 linears (~20.49 M parameters).
The log-variance is clamped (the paper's was not) so exp() cannot overflow.

``amplitude = "millimetres"`` (inputs that keep their voltage): GroupNorm would discard a lead's
size, so the convolutions see the lead divided by its RMS and the size enters the posterior
layers explicitly, as three numbers next to the pooled features: log RMS and asinh of the largest
positive and negative deflections (R and S/Q waves, what voltage criteria measure).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lsemvae.model.config import ModelConfig


def _activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU()


class LeadEncoder(nn.Module):
    """``[B, 1, T] -> (mu, logvar)`` each ``[B, latent_dim]``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, length = 1, cfg.n_samples
        for c_out, k, s in zip(cfg.encoder_channels, cfg.encoder_kernels, cfg.encoder_strides):
            pad = k // 2
            layers.append(nn.Conv1d(c_in, c_out, k, stride=s, padding=pad))
            if cfg.encoder_norm == "group":
                layers.append(nn.GroupNorm(min(8, c_out), c_out))
            layers.append(_activation(cfg.activation))
            c_in, length = c_out, (length + 2 * pad - k) // s + 1
        self.features = nn.Sequential(*layers)
        self.pool = cfg.encoder_pool
        width = c_in * length if self.pool == "flatten" else 2 * c_in
        self.amplitude = cfg.amplitude == "millimetres"
        width += 3 if self.amplitude else 0
        self.fc_mu = nn.Linear(width, cfg.latent_dim)
        self.fc_logvar = nn.Linear(width, cfg.latent_dim)
        self.logvar_range = (cfg.logvar_min, cfg.logvar_max)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.amplitude:
            rms = x.pow(2).mean(-1).clamp_min(1e-4).sqrt()  # [B, 1]; floor keeps absent (all-zero) leads finite
            size = torch.cat([rms.log(), torch.asinh(x.amax(-1)), torch.asinh(x.amin(-1))], dim=-1)
            x = x / rms.unsqueeze(-1)
        h = self.features(x)
        if self.pool == "flatten":
            h = h.flatten(1)
        else:
            h = torch.cat([h.mean(-1), h.amax(-1)], dim=-1)
        if self.amplitude:
            h = torch.cat([h, size], dim=-1)
        return self.fc_mu(h), self.fc_logvar(h).clamp(*self.logvar_range)



