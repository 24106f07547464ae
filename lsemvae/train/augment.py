"""Signal augmentation for training batches: random crop, per-lead amplitude jitter, noise.

Applied per record with an explicit generator so epochs are reproducible (and resumable).
The median-beat reconstruction target is unaffected: it does not depend on where a crop falls.
"""

from __future__ import annotations

import torch
from pydantic import Field

from lsemvae.config import StrictModel


class AugmentConfig(StrictModel):
    crop_samples: int | None = Field(None, gt=0, description="random crop length; None = whole signal")
    scale_jitter: float = Field(0.0, ge=0, description="per-lead amplitude factor 1 + N(0, s)")
    noise_std: float = Field(0.0, ge=0, description="additive Gaussian noise, in the signal's units "
                             "(mm or standard deviations)")


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator, *,
            sample_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Augment a batch ``[B, L, T]``; with ``sample_mask [B, T]`` random crops start inside each record's real
    samples (a short record's zero padding is not trained on as signal, as scoring does not score it)."""
    b, leads, t = x.shape
    if cfg.crop_samples is not None and cfg.crop_samples < t:
        real = sample_mask.sum(-1) if sample_mask is not None else None
        if real is None or bool((real == t).all()):
            start = torch.randint(0, t - cfg.crop_samples + 1, (b,), generator=generator)
        else:  # as many start positions as fit inside the real samples (one, at 0, when shorter than the crop)
            room = (real - cfg.crop_samples).clamp_min(0) + 1
            start = (torch.rand(b, generator=generator) * room).long().clamp_max(room - 1)
        idx = start[:, None] + torch.arange(cfg.crop_samples)
        x = x.gather(2, idx[:, None, :].expand(b, leads, -1))
    if cfg.scale_jitter:
        x = x * (1.0 + cfg.scale_jitter * torch.randn(b, leads, 1, generator=generator))
    if cfg.noise_std:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=generator)
    return x
