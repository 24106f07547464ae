"""The one preprocessing pipeline: ECGRecord (mV, any rate) -> fixed-size standardised arrays.

Steps, in order (deterministic; the version and config hash go with every cache and checkpoint):

1. quality checks on the raw mV signal: NaN share, flat line, saturation/clipping, implausible
   amplitude (wrong units) -> reject with a reason naming the leads; limb-lead identities
   (Einthoven/Goldberger) -> flag (or reject, if configured);
2. NaN interpolation (linear, edges held);
3. resampling to ``cfg.fs`` (polyphase, ``resample_poly``);
4. band-pass (Butterworth, zero-phase ``sosfiltfilt``) and a powerline notch when below Nyquist;
5. crop (centred) / zero-pad (``sample_mask`` False) to ``cfg.n_samples``;
6. amplitude (``cfg.amplitude``): per-lead standardisation (mean/std over real samples), or the
   mean-removed signal in millimetres of standard ECG paper (0.1 mV), which keeps the voltages and
   the leads' relative sizes (hypertrophy voltage criteria, the electrical axis);
7. R peaks (always found on the standardised leads) on a multi-lead energy envelope and the
   per-lead R-aligned median beat over ``beat_window_s``, in the signal's units -- the
   reconstruction target (a pooled latent cannot reconstruct the raw 10-s signal: it cannot say
   where the beats fall). No beats -> reject.

Change anything that alters outputs -> bump :data:`PIPELINE_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from lsemvae.config import StrictModel
from lsemvae.data.record import ECGRecord
from lsemvae.errors import RecordError
from lsemvae.leads import check_limb_identities, to_12

PIPELINE_VERSION = "1.0"


class PreprocessConfig(StrictModel):
    """Preprocessing parameters. Every field changes the cache key."""

    fs: int = Field(100, ge=50, le=2000, description="model sampling rate, Hz")
    seconds: float = Field(10.0, gt=0, le=120, description="fixed window length; longer records are centre-cropped")
    min_seconds: float = Field(2.0, gt=0, description="records shorter than this are rejected")
    highpass_hz: float | None = Field(0.5, gt=0, description="baseline-wander cut-off (None: off)")
    lowpass_hz: float | None = Field(40.0, gt=0, description="noise cut-off; dropped when at/above Nyquist")
    filter_order: int = Field(4, ge=1, le=8, description="Butterworth order of each band edge")
    powerline_hz: Literal[50, 60] | None = Field(50, description="mains notch (applied only below Nyquist)")
    max_nan_share: float = Field(0.1, ge=0, le=1, description="reject when a present lead has more NaN than this")
    flat_std_mv: float = Field(0.005, ge=0, description="a lead with std below this (mV) is a flat line")
    saturation_share: float = Field(0.02, gt=0, le=1,
                                    description="reject when this share of a lead sits at its own max or min")
    max_amplitude_mv: float = Field(20.0, gt=0, description="|x - median| above this means wrong units/artefact")
    identity_tolerance_mv: float = Field(0.1, gt=0, description="limb-lead identity tolerance (median |residual|)")
    identity_action: Literal["flag", "reject", "off"] = Field(
        "flag", description="what a failed limb identity does. Real PTB-XL/LUDB limb leads reach 0.096 mV "
        "residual while some swaps stay under 0.05 mV, so no tolerance separates them cleanly: flag by default")
    beat_window_s: tuple[float, float] = Field((-0.3, 0.5), description="median-beat window around R, s")
    min_beats: int = Field(2, ge=1, description="reject when fewer complete beats are found")
    min_qrs_contrast: float = Field(5.0, ge=0, description="reject when QRS energy does not stand out this many "
                                    "times above the median (real ECGs here: 23 or more; white noise: 1.4)")
    amplitude: Literal["standardised", "millimetres"] = Field(
        "standardised", description="standardised: each lead z-scored per record (the paper's; voltages and the "
        "leads' relative sizes are lost); millimetres: mean-removed signal in mm of standard ECG paper (0.1 mV)")

    @model_validator(mode="after")
    def _check(self) -> "PreprocessConfig":
        lo, hi = self.beat_window_s
        if not lo < 0 < hi:
            raise ValueError(f"beat_window_s must straddle the R peak (start < 0 < end), got {self.beat_window_s}")
        if self.highpass_hz and self.lowpass_hz and self.highpass_hz >= self.lowpass_hz:
            raise ValueError(f"highpass_hz {self.highpass_hz} must be below lowpass_hz {self.lowpass_hz}")
        if self.min_seconds > self.seconds:
            raise ValueError(f"min_seconds {self.min_seconds} exceeds seconds {self.seconds}")
        return self

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * self.fs))

    @property
    def beat_offset(self) -> int:
        """Samples from the window start to the R peak."""
        return int(round(-self.beat_window_s[0] * self.fs))

    @property
    def beat_samples(self) -> int:
        return self.beat_offset + int(round(self.beat_window_s[1] * self.fs))

    def hash(self) -> str:
        """Stable hash of parameters and pipeline version (16 hex digits)."""
        blob = json.dumps({"version": PIPELINE_VERSION, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Preprocessed:
    """Model-ready arrays for one record, in ``LEADS_12`` order (absent leads zero, mask False)."""

    signal: np.ndarray  # float32 [12, T], per-lead standardised or in mm (cfg.amplitude)
    lead_mask: np.ndarray  # bool [12]
    sample_mask: np.ndarray  # bool [T], False where padded
    beat: np.ndarray  # float32 [12, Tb], R-aligned median beat, same units as signal
    n_beats: int
    heart_rate_bpm: float
    flags: tuple[str, ...] = ()  # non-fatal QC findings, e.g. "limb-identity: ..."


# ---------------------------------------------------------------------------------------------
# Quality checks on raw millivolts
# ---------------------------------------------------------------------------------------------


def _names(leads, mask) -> str:
    return ", ".join(l for l, m in zip(leads, mask) if m)


def quality_check(record: ECGRecord, cfg: PreprocessConfig) -> tuple[str, ...]:
    """Raise :class:`RecordError` for an unusable record; return non-fatal flags."""
    x = record.signal.astype(np.float64)
    where = record.source or record.record_id
    if np.isinf(x).any():
        raise RecordError(where, "signal contains infinite values", reason="non-finite")
    nan_share = np.isnan(x).mean(axis=1)
    bad = nan_share > cfg.max_nan_share
    if bad.any():
        worst = ", ".join(f"{l} {s:.0%}" for l, s, b in zip(record.leads, nan_share, bad) if b)
        raise RecordError(where, f"missing samples (NaN) above {cfg.max_nan_share:.0%} in leads {worst} "
                          "(partial recording)", reason="nan-share")
    if record.duration_s < cfg.min_seconds:
        raise RecordError(where, f"record lasts {record.duration_s:.2f} s, shorter than min_seconds "
                          f"{cfg.min_seconds} s", reason="too-short")
    with np.errstate(invalid="ignore"):
        std = np.nanstd(x, axis=1)
        flat = std < cfg.flat_std_mv
        if flat.any():
            raise RecordError(where, f"flat line (std < {cfg.flat_std_mv} mV) in leads {_names(record.leads, flat)}",
                              reason="flat-line")
        hi = np.nanmax(x, axis=1, keepdims=True)
        lo = np.nanmin(x, axis=1, keepdims=True)
        at_rail = np.maximum((x == hi).sum(axis=1), (x == lo).sum(axis=1)) / x.shape[1]
        sat = at_rail > cfg.saturation_share
        if sat.any():
            raise RecordError(where, f"clipped/saturated signal (over {cfg.saturation_share:.0%} of samples at the "
                              f"lead's extreme value) in leads {_names(record.leads, sat)}", reason="saturation")
        amp = np.nanmax(np.abs(x - np.nanmedian(x, axis=1, keepdims=True)), axis=1)
        big = amp > cfg.max_amplitude_mv
        if big.any():
            raise RecordError(where, f"amplitude above {cfg.max_amplitude_mv} mV in leads "
                              f"{_names(record.leads, big)}: wrong units or artefact", reason="amplitude")
    flags: list[str] = list(record.notes)  # what the reader did (calibration pulse dropped, units assumed...)
    if cfg.identity_action != "off":
        check = check_limb_identities(x, record.leads, tolerance_mv=cfg.identity_tolerance_mv)
        if not check.ok:
            if cfg.identity_action == "reject":
                raise RecordError(where, check.message, reason="limb-identity")
            flags.append(f"limb-identity: {check.message}")
    return tuple(flags)


# ---------------------------------------------------------------------------------------------
# Signal steps
# ---------------------------------------------------------------------------------------------


def interpolate_nan(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN runs per row; leading/trailing NaN take the nearest value."""
    out = x.copy()
    t = np.arange(x.shape[1])
    for row in out:
        bad = np.isnan(row)
        if bad.any() and not bad.all():
            row[bad] = np.interp(t[bad], t[~bad], row[~bad])
    return out


def resample(x: np.ndarray, fs_in: float, fs_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliasing included)."""
    from scipy.signal import resample_poly  # scipy is imported where signals are processed, not with the config:
    # the ServerApp and every ClientApp process import PreprocessConfig, and scipy.signal costs seconds per process
    ratio = Fraction(fs_out) / Fraction(fs_in).limit_denominator(1000)
    if ratio == 1:
        return x
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


@lru_cache(maxsize=32)
def _filters(fs: int, highpass: float | None, lowpass: float | None, order: int,
             powerline: int | None) -> tuple[np.ndarray, ...]:
    from scipy.signal import butter, iirnotch, tf2sos
    nyq = fs / 2.0
    sos = []
    low = lowpass if lowpass and lowpass < 0.95 * nyq else None
    if highpass and low:
        sos.append(butter(order, [highpass, low], btype="bandpass", fs=fs, output="sos"))
    elif highpass:
        sos.append(butter(order, highpass, btype="highpass", fs=fs, output="sos"))
    elif low:
        sos.append(butter(order, low, btype="lowpass", fs=fs, output="sos"))
    # Mains notch only where it exists in the band: below Nyquist and not already removed.
    if powerline and powerline < 0.95 * nyq and not (low and powerline > low * 1.5):
        b, a = iirnotch(powerline, Q=30.0, fs=fs)
        sos.append(tf2sos(b, a))
    return tuple(sos)


def bandpass(x: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Zero-phase band-pass and notch at ``cfg.fs``."""
    from scipy.signal import sosfiltfilt
    for sos in _filters(cfg.fs, cfg.highpass_hz, cfg.lowpass_hz, cfg.filter_order, cfg.powerline_hz):
        x = sosfiltfilt(sos, x, axis=-1)
    return x


def fix_length(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop or zero-pad (at the end) to ``n`` samples; mask True on real samples."""
    t = x.shape[-1]
    mask = np.zeros(n, dtype=bool)
    if t >= n:
        start = (t - n) // 2
        mask[:] = True
        return x[..., start:start + n], mask
    out = np.zeros(x.shape[:-1] + (n,), dtype=x.dtype)
    out[..., :t] = x
    mask[:t] = True
    return out, mask


MM_PER_MV = 10.0  # standard ECG paper: 10 mm per mV


def in_millimetres(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-lead mean removed over valid samples, millivolts -> mm of ECG paper; padding stays 0."""
    out = (x - x[:, valid].mean(axis=1, keepdims=True)) * MM_PER_MV
    out[:, ~valid] = 0.0
    return out


def standardise(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-lead zero mean / unit variance over valid samples; padding stays 0."""
    seg = x[:, valid]
    mean = seg.mean(axis=1, keepdims=True)
    std = seg.std(axis=1, keepdims=True)
    out = (x - mean) / np.maximum(std, 1e-6)
    out[:, ~valid] = 0.0
    return out


def qrs_envelope(z: np.ndarray, fs: int, valid: np.ndarray) -> np.ndarray:
    """Mean over leads of the squared first difference, smoothed over 100 ms: QRS energy."""
    d = np.diff(z, axis=1, prepend=z[:, :1])
    energy = (d ** 2).mean(axis=0)
    energy[~valid] = 0.0
    width = max(1, int(round(0.1 * fs)))
    return np.convolve(energy, np.ones(width) / width, mode="same")


def qrs_contrast(env: np.ndarray, valid: np.ndarray) -> float:
    """98th percentile over median of the envelope: QRS complexes stand out (real ECGs: > 20;
    white noise: about 1.4)."""
    seg = env[valid]
    med = float(np.median(seg)) if seg.size else 0.0
    return float(np.percentile(seg, 98)) / med if med > 0 else 0.0


def detect_r_peaks(z: np.ndarray, fs: int, valid: np.ndarray) -> np.ndarray:
    """R-peak sample indices from standardised leads ``[L, T]``.

    Peaks of :func:`qrs_envelope` at least 250 ms apart (240 bpm) above 30% of its 98th
    percentile, each moved to the largest |amplitude| summed over leads within +-60 ms (the R apex).
    """
    from scipy.signal import find_peaks
    env = qrs_envelope(z, fs, valid)
    top = np.percentile(env[valid], 98) if valid.any() else 0.0
    if top <= 0:
        return np.zeros(0, dtype=int)
    peaks, _ = find_peaks(env, height=0.3 * top, distance=max(1, int(0.25 * fs)))
    amp = np.abs(z).sum(axis=0)
    half = max(1, int(round(0.06 * fs)))
    refined = []
    for p in peaks:
        lo = max(0, p - half)
        refined.append(lo + int(np.argmax(amp[lo:p + half + 1])))
    return np.unique(np.asarray(refined, dtype=int))


def median_beat(z: np.ndarray, peaks: np.ndarray, valid: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, int]:
    """Per-lead median over complete beat windows inside the valid samples: ``([L, Tb], n_beats)``."""
    before, length = cfg.beat_offset, cfg.beat_samples
    n_valid = int(valid.sum())
    starts = [p - before for p in peaks if p - before >= 0 and p - before + length <= n_valid]
    if not starts:
        return np.zeros((z.shape[0], length), dtype=np.float32), 0
    windows = np.stack([z[:, s:s + length] for s in starts])
    return np.median(windows, axis=0), len(starts)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def preprocess(record: ECGRecord, cfg: PreprocessConfig | None = None) -> Preprocessed:
    """Run the full pipeline on one record; :class:`RecordError` (with ``reason``) on QC failure."""
    cfg = cfg or PreprocessConfig()
    where = record.source or record.record_id
    flags = quality_check(record, cfg)
    x = interpolate_nan(record.signal.astype(np.float64))
    x = resample(x, record.fs, cfg.fs)
    x = bandpass(x, cfg)
    x, sample_mask = fix_length(x, cfg.n_samples)
    z = standardise(x, sample_mask)
    contrast = qrs_contrast(qrs_envelope(z, cfg.fs, sample_mask), sample_mask)
    if contrast < cfg.min_qrs_contrast:
        raise RecordError(where, f"no QRS complexes stand out from noise (envelope contrast {contrast:.1f}, "
                          f"need {cfg.min_qrs_contrast:g}): noise, disconnected electrodes or asystole",
                          reason="no-beats")
    peaks = detect_r_peaks(z, cfg.fs, sample_mask)
    if cfg.amplitude == "millimetres":
        z = in_millimetres(x, sample_mask)
    beat, n_beats = median_beat(z, peaks, sample_mask, cfg)
    if n_beats < cfg.min_beats:
        raise RecordError(where, f"found {n_beats} complete beat(s), need {cfg.min_beats}: no usable QRS "
                          "complexes (noise, asystole or a very short record)", reason="no-beats")
    hr = 60.0 * cfg.fs / float(np.median(np.diff(peaks))) if len(peaks) > 1 else float("nan")
    signal12, lead_mask = to_12(z.astype(np.float32), record.leads)
    beat12, _ = to_12(beat.astype(np.float32), record.leads)
    if not (np.isfinite(signal12).all() and np.isfinite(beat12).all()):
        raise RecordError(where, "non-finite values after preprocessing", reason="non-finite")
    return Preprocessed(signal12, lead_mask, sample_mask, beat12, n_beats, hr, flags)


__all__ = [
    "PIPELINE_VERSION", "PreprocessConfig", "Preprocessed", "preprocess", "quality_check", "interpolate_nan",
    "resample", "bandpass", "fix_length", "standardise", "in_millimetres", "qrs_envelope", "qrs_contrast",
    "detect_r_peaks", "median_beat",
]
