"""Signal augmentation for training batches: random crop, per-lead amplitude jitter, noise, and what
differs between hospitals (a device's gain calibration, electrode placement, its filters).

Applied per record with an explicit generator so epochs are reproducible (and resumable); an option
left at 0 draws no random numbers, so adding options never changes what the others do.
The median-beat reconstruction target is unaffected: it does not depend on where a crop falls.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from lsemvae.config import StrictModel
from lsemvae.leads import lead_index


class AugmentConfig(StrictModel):
    crop_samples: int | None = Field(None, gt=0, description="random crop length; None = whole signal")
    scale_jitter: float = Field(0.0, ge=0, description="per-lead amplitude factor 1 + N(0, s)")
    noise_std: float = Field(0.0, ge=0, description="additive Gaussian noise, in the signal's units "
                             "(mm or standard deviations)")
    gain_jitter: float = Field(0.0, ge=0, description="one amplitude factor exp(N(0, s)) for all of a record's leads: "
                               "devices and exports calibrate their gain differently")
    axis_rotation_deg: float = Field(0.0, ge=0, description="rotate the frontal-plane heart vector by N(0, s) degrees "
                                     "and derive the six limb leads from it again (Einthoven/Goldberger): electrode "
                                     "placement and body position. Needs millimetre inputs (voltages) with I and II")
    lowpass_share: float = Field(0.0, ge=0, le=1, description="share of records low-pass filtered at a random cut-off "
                                 "in lowpass_nyquist: monitors and exports filter more than a diagnostic ECG")
    lowpass_nyquist: tuple[float, float] = Field((0.3, 0.8), description="low-pass cut-off range as fractions of the "
                                                 "Nyquist frequency (at 100 Hz: 15-40 Hz)")


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator, *,
            sample_mask: torch.Tensor | None = None, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Augment a batch ``[B, L, T]``; with ``sample_mask [B, T]`` random crops start inside each record's real
    samples (a short record's zero padding is not trained on as signal, as scoring does not score it).
    ``lead_mask [B, 12]`` says which leads a record has (the axis rotation needs I and II)."""
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
    if cfg.gain_jitter:
        x = x * torch.exp(cfg.gain_jitter * torch.randn(b, 1, 1, generator=generator))
    if cfg.axis_rotation_deg:
        x = rotate_frontal_axis(x, cfg.axis_rotation_deg * torch.randn(b, generator=generator), lead_mask)
    if cfg.lowpass_share:
        x = random_lowpass(x, cfg.lowpass_share, cfg.lowpass_nyquist, generator)
    if cfg.scale_jitter:
        x = x * (1.0 + cfg.scale_jitter * torch.randn(b, leads, 1, generator=generator))
    if cfg.noise_std:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=generator)
    return x


_LIMB = [lead_index(n) for n in ("I", "II", "III", "aVR", "aVL", "aVF")]


def rotate_frontal_axis(x: torch.Tensor, degrees: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Limb leads of ``x [B, 12, T]`` (voltages) with the frontal heart vector rotated by ``degrees [B]``.

    Lead I sees the vector's x component, II its projection at 60 degrees; the six limb leads of the
    rotated vector replace those of the original, so what a record's leads carry beyond the vector
    (the identities' small residuals) stays. Records without I and II are unchanged; a limb lead the
    record lacks stays absent (zero).
    """
    i, ii = x[:, _LIMB[0]], x[:, _LIMB[1]]
    hx, hy = i, (ii - i / 2) * (2 / math.sqrt(3))  # the frontal vector: I at 0 degrees, aVF direction at 90
    a = torch.deg2rad(degrees)[:, None]
    rx, ry = hx * torch.cos(a) - hy * torch.sin(a), hx * torch.sin(a) + hy * torch.cos(a)
    change = _limb_leads(rx, rx / 2 + ry * (math.sqrt(3) / 2)) - _limb_leads(i, ii)
    present = (x[:, _LIMB] != 0).any(-1) if lead_mask is None else lead_mask[:, _LIMB].bool()
    can = (present[:, :1] & present[:, 1:2])[:, :, None] & present[:, :, None]
    out = x.clone()
    out[:, _LIMB] = x[:, _LIMB] + torch.where(can, change, torch.zeros_like(change))
    return out


def _limb_leads(i: torch.Tensor, ii: torch.Tensor) -> torch.Tensor:
    """I, II, III, aVR, aVL, aVF ``[B, 6, T]`` from I and II (Einthoven/Goldberger)."""
    return torch.stack([i, ii, ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2], dim=1)


def random_lowpass(x: torch.Tensor, share: float, nyquist: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Low-pass ``share`` of the records (brick-wall in the frequency domain, a random cut-off in ``nyquist``)."""
    b, _, t = x.shape
    chosen = torch.rand(b, generator=generator) < share
    cut = nyquist[0] + (nyquist[1] - nyquist[0]) * torch.rand(b, generator=generator)
    if not chosen.any():
        return x
    spectrum = torch.fft.rfft(x, dim=-1)
    freq = torch.linspace(0, 1, spectrum.shape[-1])  # fractions of Nyquist
    keep = (freq[None, :] <= cut[:, None]) | ~chosen[:, None]
    return torch.fft.irfft(spectrum * keep[:, None, :], n=t, dim=-1)
