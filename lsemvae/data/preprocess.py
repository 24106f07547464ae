"""The one preprocessing pipeline: ECGRecord (mV, any rate) -> fixed-size standardised arrays.

Steps, in order (deterministic; the version and config hash go with every cache and checkpoint):

1. quality checks on the raw mV signal: per lead NaN share, flat line, saturation/clipping,
   amplitude (wrong units, spikes) -> reject with a reason naming the leads when the caller uses the
   lead, otherwise leave the lead out with a note; the record's scale (QRS amplitude of its median
   beats) -> reject a wrong scale (every lead tiny or huge yet shaped like an ECG: a gain error, not
   a flat line) or flag an implausible one; limb-lead identities (Einthoven/Goldberger) -> flag (or
   reject, if configured);
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
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Literal, Mapping, Sequence

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
    qrs_amplitude_mv: tuple[float, float] = Field(
        (0.2, 4.0), description="plausible median over leads of the QRS peak-to-peak amplitude (median beat), mV; "
        "outside: flagged implausible-amplitude. 1,727 real PTB-XL and LUDB records here: 0.28-3.38 mV (6 limb "
        "leads alone: 0.22-3.40)")
    wrong_scale_factor: float = Field(4.0, gt=1, description="further outside qrs_amplitude_mv than this factor "
                                      "(or every lead flat yet shaped like an ECG): rejected as wrong-scale")
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
        if not 0 < self.qrs_amplitude_mv[0] < self.qrs_amplitude_mv[1]:
            raise ValueError(f"qrs_amplitude_mv must be (low, high) with 0 < low < high, got {self.qrs_amplitude_mv}")
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
    lead_faults: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # leads left out: {lead: (reason, item)}


# ---------------------------------------------------------------------------------------------
# Quality checks on raw millivolts
# ---------------------------------------------------------------------------------------------

#: Per-lead checks in the order they run, and how a group of failed leads is described.
LEAD_CHECKS: dict[str, str] = {
    "nan-share": "missing samples (NaN) above {cfg.max_nan_share:.0%} in leads {items} (partial recording)",
    "flat-line": "flat line (std < {cfg.flat_std_mv} mV) in leads {items}",
    "saturation": "clipped/saturated signal (over {cfg.saturation_share:.0%} of samples at the lead's extreme "
                  "value) in leads {items}",
    "amplitude": "amplitude above {cfg.max_amplitude_mv} mV in leads {items}: wrong units or artefact",
}

#: ``{lead: (reason, item)}``: a lead that failed a per-lead check; ``item`` is how it is listed ("V6 75%").
LeadFaults = Mapping[str, tuple[str, str]]


def describe_faults(faults: LeadFaults, cfg: PreprocessConfig) -> tuple[str, str]:
    """``(reason, message)`` for failed leads: the first check's reason, every check's leads named."""
    parts, reasons = [], []
    for reason, template in LEAD_CHECKS.items():
        items = [item for lead, (r, item) in faults.items() if r == reason]
        if items:
            reasons.append(reason)
            parts.append(template.format(cfg=cfg, items=", ".join(items)))
    return reasons[0], "; ".join(parts)


def lead_faults(record: ECGRecord, cfg: PreprocessConfig) -> dict[str, tuple[str, str]]:
    """Per-lead checks on the raw mV signal: ``{lead: (reason, item)}`` for each lead that fails one."""
    x = record.signal.astype(np.float64)
    faults: dict[str, tuple[str, str]] = {}
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN lead: its NaN share speaks first
        nan_share = np.isnan(x).mean(axis=1)
        std = np.nanstd(x, axis=1)
        hi = np.nanmax(x, axis=1, keepdims=True)
        lo = np.nanmin(x, axis=1, keepdims=True)
        at_rail = np.maximum((x == hi).sum(axis=1), (x == lo).sum(axis=1)) / x.shape[1]
        amp = np.nanmax(np.abs(x - np.nanmedian(x, axis=1, keepdims=True)), axis=1)
    for k, lead in enumerate(record.leads):
        if nan_share[k] > cfg.max_nan_share:
            faults[lead] = ("nan-share", f"{lead} {nan_share[k]:.0%}")
        elif not std[k] >= cfg.flat_std_mv:
            faults[lead] = ("flat-line", lead)
        elif at_rail[k] > cfg.saturation_share:
            faults[lead] = ("saturation", lead)
        elif amp[k] > cfg.max_amplitude_mv:
            faults[lead] = ("amplitude", lead)
    return faults


@dataclass(frozen=True)
class Scale:
    """How large a record's QRS complexes are, measured on every lead whose values can be trusted.

    ``median_mv``: median over those leads of the peak-to-peak amplitude of the lead's R-aligned
    median beat (band-passed, in mV); ``lead_ii_mv`` the same for lead II (None if absent);
    ``contrast``: :func:`qrs_contrast` of the leads standardised, i.e. whether they are shaped like
    an ECG whatever their size.
    """

    median_mv: float
    lead_ii_mv: float | None
    contrast: float

    def describe(self) -> str:
        ii = "" if self.lead_ii_mv is None else f", lead II {self.lead_ii_mv:.3g} mV"
        return f"median QRS peak-to-peak over leads {self.median_mv:.3g} mV{ii}"


def measure_scale(x: np.ndarray, fs: float, leads: Sequence[str], cfg: PreprocessConfig) -> Scale | None:
    """:class:`Scale` of raw mV rows ``x`` (``leads``) at ``fs``; None when no beat is found."""
    y = bandpass(resample(interpolate_nan(x), fs, cfg.fs), cfg)
    valid = np.ones(y.shape[1], dtype=bool)
    z = standardise(y, valid)
    contrast = qrs_contrast(qrs_envelope(z, cfg.fs, valid), valid)
    beat, n = median_beat(y, detect_r_peaks(z, cfg.fs, valid), valid, cfg)
    if n == 0:
        return None
    p2p = beat.max(axis=1) - beat.min(axis=1)
    ii = float(p2p[list(leads).index("II")]) if "II" in leads else None
    return Scale(float(np.median(p2p)), ii, contrast)


def check_scale(record: ECGRecord, faults: LeadFaults, cfg: PreprocessConfig) -> tuple[str, ...]:
    """Tell a wrong scale from flat lines and artefacts; return a flag for an implausible one.

    A record whose leads are all uniformly tiny (flat by ``flat_std_mv``) or huge, yet shaped like an
    ECG once standardised (QRS complexes stand out), has a scale problem: a gain error in the export
    or wrong units, not disconnected electrodes. Beyond ``wrong_scale_factor`` outside
    ``qrs_amplitude_mv`` it is rejected as ``wrong-scale``; outside that range but within the factor it
    is flagged ``implausible-amplitude`` (real low- or high-voltage ECGs exist there too). Either
    message gives the measured amplitude, the plausible range and the fix (a gain correction).
    """
    # values of NaN-filled or clipped leads cannot say how large the signal is; flat leads can when every lead is
    reason = {lead: faults.get(lead, ("",))[0] for lead in record.leads}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        constant = np.nanmax(record.signal, axis=1) == np.nanmin(record.signal, axis=1)  # no shape to measure
    trusted = [k for k, lead in enumerate(record.leads)
               if reason[lead] not in ("nan-share", "saturation") and not constant[k]]
    rows = [k for k in trusted if reason[record.leads[k]] != "flat-line"] or trusted
    if not rows:
        return ()
    flat = reason[record.leads[rows[0]]] == "flat-line"
    scale = measure_scale(record.signal[rows].astype(np.float64), record.fs, [record.leads[k] for k in rows], cfg)
    if scale is None or scale.contrast < cfg.min_qrs_contrast:
        return ()  # not shaped like an ECG: the flat-line, amplitude and no-beats checks say what is wrong
    where = record.source or record.record_id
    lo, hi = cfg.qrs_amplitude_mv
    m = scale.median_mv
    if m <= 0 or lo <= m <= hi:
        return ()
    small = m < lo
    outside = lo / m if small else m / hi  # how far outside the plausible range
    times = np.sqrt(lo * hi) / m if small else m / np.sqrt(lo * hi)  # against the range's middle (log scale)
    fix = (f"fix the export, or correct it with a gain correction of about {_factor(times if small else 1 / times)} "
           "(`lsemvae data prepare --gain-correction`, site config `data.gain_correction`)")
    size = "small" if small else "large"
    if (flat and small) or outside > cfg.wrong_scale_factor:
        shape = "all leads are uniformly tiny (flat by std) yet" if flat and small else "the leads are"
        raise RecordError(where, f"wrong scale: {shape} shaped like an ECG (QRS contrast {scale.contrast:.0f}), "
                          f"{scale.describe()}, about {_factor(times)}x too {size} for an ECG (plausible: {lo:g}-{hi:g} "
                          f"mV): a gain error in the export or wrong units, not the electrodes; {fix}",
                          reason="wrong-scale")
    return (f"implausible-amplitude: {scale.describe()}, outside the {lo:g}-{hi:g} mV of real ECGs (about "
            f"{_factor(times)}x too {size}): a gain error in the export or an extreme ECG; if the export is wrong, "
            f"{fix}",)


def _factor(x: float) -> str:
    """A scale factor for people: far off, the nearest power of ten (a unit mix-up: uV read as mV is 1000x)."""
    if x >= 30 or x <= 1 / 30:
        return f"{10.0 ** round(np.log10(x)):g}"
    return f"{x:.2g}"


def quality_check(record: ECGRecord, cfg: PreprocessConfig, *, leads: Sequence[str] | None = None
                  ) -> tuple[tuple[str, ...], dict[str, tuple[str, str]]]:
    """Raise :class:`RecordError` for an unusable record; return ``(flags, faults)``.

    ``leads``: the leads the caller will use (None: every lead the record has). A failed per-lead
    check (:data:`LEAD_CHECKS`) in one of them rejects the record; in another lead it is returned in
    ``faults`` (``{lead: (reason, item)}``) for the caller to mask, with a note among the flags. A
    record left with no usable lead is rejected.
    """
    x = record.signal.astype(np.float64)
    where = record.source or record.record_id
    if np.isinf(x).any():
        raise RecordError(where, "signal contains infinite values", reason="non-finite")
    if record.duration_s < cfg.min_seconds:
        raise RecordError(where, f"record lasts {record.duration_s:.2f} s, shorter than min_seconds "
                          f"{cfg.min_seconds} s", reason="too-short")
    faults = lead_faults(record, cfg)
    scale = check_scale(record, faults, cfg)
    flags = list(record.notes) + list(scale)  # the reader's notes (calibration pulse dropped, units assumed...)
    if record.meta.get("gain_correction", 1.0) != 1.0:
        flags.append(f"gain-correction: signals multiplied by {record.meta['gain_correction']:g} as the source's "
                     "settings say")
    used = set(record.leads if leads is None else leads)
    fatal = {lead: f for lead, f in faults.items() if lead in used}
    if fatal or len(faults) == len(record.leads):
        reason, message = describe_faults(fatal or faults, cfg)
        if scale and reason == "amplitude":
            message += f" ({scale[0]})"
        raise RecordError(where, message, reason=reason)
    if faults:
        flags.append(f"masked-leads: {describe_faults(faults, cfg)[1]}; these leads are left out (a model that "
                     "reads them skips the record)")
    if cfg.identity_action != "off":
        good = [k for k, lead in enumerate(record.leads) if lead not in faults]
        check = check_limb_identities(x[good], [record.leads[k] for k in good], tolerance_mv=cfg.identity_tolerance_mv)
        if not check.ok:
            if cfg.identity_action == "reject":
                raise RecordError(where, check.message, reason="limb-identity")
            flags.append(f"limb-identity: {check.message}")
    return tuple(flags), faults


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


def preprocess(record: ECGRecord, cfg: PreprocessConfig | None = None, *,
               leads: Sequence[str] | None = None) -> Preprocessed:
    """Run the full pipeline on one record; :class:`RecordError` (with ``reason``) on QC failure.

    ``leads``: the leads the caller will use (None: all the record has). A lead outside them that
    fails a per-lead check is left out (``lead_mask`` False, listed in ``lead_faults``, noted in
    ``flags``) instead of rejecting the record, so a 6-lead model is not refused for a flat V1.
    """
    cfg = cfg or PreprocessConfig()
    where = record.source or record.record_id
    flags, faults = quality_check(record, cfg, leads=leads)
    keep = [k for k, lead in enumerate(record.leads) if lead not in faults]
    kept_leads = [record.leads[k] for k in keep]
    x = interpolate_nan(record.signal[keep].astype(np.float64))
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
    signal12, lead_mask = to_12(z.astype(np.float32), kept_leads)
    beat12, _ = to_12(beat.astype(np.float32), kept_leads)
    if not (np.isfinite(signal12).all() and np.isfinite(beat12).all()):
        raise RecordError(where, "non-finite values after preprocessing", reason="non-finite")
    return Preprocessed(signal12, lead_mask, sample_mask, beat12, n_beats, hr, flags, faults)


__all__ = [
    "PIPELINE_VERSION", "PreprocessConfig", "Preprocessed", "preprocess", "quality_check", "lead_faults",
    "describe_faults", "check_scale", "measure_scale", "Scale", "LEAD_CHECKS", "interpolate_nan",
    "resample", "bandpass", "fix_length", "standardise", "in_millimetres", "qrs_envelope", "qrs_contrast",
    "detect_r_peaks", "median_beat",
]
