"""Classic ECG measurements on median beats: how the phenotypes are checked.

Tests use them to show each phenotype does what a cardiologist would read (axis, R/S in V1,
P amplitude); the benchmark uses them for the separability check (a logistic regression on a few
of these must be clearly above chance, and not perfect, or the task is broken).
"""

from __future__ import annotations

import numpy as np

from lsemvae.leads import lead_index

_WINDOW_S = (-0.30, 0.50)


def median_beats(signals: np.ndarray, fs: float, r_peaks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Median beat per record and lead, ``[n, 12, W]``, baseline (PR segment) removed; and its times (s)."""
    lo, hi = (int(round(w * fs)) for w in _WINDOW_S)
    offsets = np.arange(lo, hi)
    out = np.zeros((len(signals), signals.shape[1], len(offsets)), dtype=np.float32)
    for i, (sig, peaks) in enumerate(zip(signals, r_peaks)):
        peaks = peaks[(peaks + lo >= 0) & (peaks + hi <= sig.shape[-1])]
        out[i] = np.median(sig[:, peaks[:, None] + offsets], axis=1)
    times = offsets / fs
    pr = (times >= -0.075) & (times <= -0.055)
    out -= out[:, :, pr].mean(axis=2, keepdims=True)
    return out, times


def beat_features(beats: np.ndarray, times: np.ndarray) -> dict[str, np.ndarray]:
    """Per-record measurements (mV, degrees) from median beats ``[n, 12, W]`` in LEADS_12 order."""
    qrs = (times >= -0.06) & (times <= 0.06)
    p_win = (times >= -0.26) & (times <= -0.09)
    dt = times[1] - times[0]

    def lead(name: str) -> np.ndarray:
        return beats[:, lead_index(name)]

    area_i = lead("I")[:, qrs].sum(axis=1) * dt
    area_avf = lead("aVF")[:, qrs].sum(axis=1) * dt
    v1, v6 = lead("V1")[:, qrs], lead("V6")[:, qrs]
    return {
        # aVF's lead vector is sqrt(3)/2 long: rescale so the angle is the true frontal axis.
        "qrs_axis_deg": np.rad2deg(np.arctan2(area_avf / (np.sqrt(3) / 2), area_i)),
        "v1_r_mv": v1.max(axis=1),
        "v1_s_mv": -v1.min(axis=1),
        "v6_r_mv": v6.max(axis=1),
        "v6_s_mv": -v6.min(axis=1),
        "p_ii_mv": lead("II")[:, p_win].max(axis=1),
        "p_v1_terminal_mv": lead("V1")[:, p_win].min(axis=1),
        "r_i_mv": lead("I")[:, qrs].max(axis=1),
        "s_i_mv": -lead("I")[:, qrs].min(axis=1),
    }
