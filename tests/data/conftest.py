"""Helpers for data tests: write small WFDB records (real format, written by wfdb) to tmp folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsemvae.leads import LEADS_12, derive_limb_leads


def synthetic_ecg(fs: float = 500.0, seconds: float = 10.0, hr_bpm: float = 72.0, seed: int = 0) -> np.ndarray:
    """A crude but beat-like 12-lead signal in mV ``[12, T]`` whose limb leads satisfy Einthoven."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    period = 60.0 / hr_bpm
    phase = (t % period) - period / 3
    qrs = np.exp(-0.5 * (phase / 0.012) ** 2)
    twave = 0.3 * np.exp(-0.5 * ((phase - 0.25) / 0.04) ** 2)
    base = qrs + twave
    # electrode offsets and respiration wander: shared through the limb identities like in real ECGs
    lead_i = 0.8 * base + 0.2 + 0.15 * np.sin(2 * np.pi * 0.2 * t) + 0.01 * rng.standard_normal(t.size)
    lead_ii = 1.2 * base - 0.3 + 0.1 * np.sin(2 * np.pi * 0.25 * t) + 0.01 * rng.standard_normal(t.size)
    limbs = derive_limb_leads(lead_i, lead_ii)
    prec = [(0.4 + 0.2 * k) * base * (-1 if k == 0 else 1) + 0.01 * rng.standard_normal(t.size) for k in range(6)]
    return np.stack([lead_i, lead_ii, limbs["III"], limbs["aVR"], limbs["aVL"], limbs["aVF"], *prec])


def write_wfdb(folder: Path, name: str, signal_mv: np.ndarray, fs: float = 500.0,
               leads=LEADS_12, units: str = "mV", gain: float = 1000.0) -> Path:
    """Write ``signal_mv [L, T]`` as a format-16 WFDB record; ``units`` "uV" scales samples by 1000."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    scale = 1000.0 if units == "uV" else 1.0
    wfdb.wrsamp(name, fs=fs, units=[units] * len(leads), sig_name=list(leads), p_signal=signal_mv.T * scale,
                fmt=["16"] * len(leads), adc_gain=[gain / scale] * len(leads), baseline=[0] * len(leads),
                write_dir=str(folder))
    return folder / f"{name}.hea"


@pytest.fixture
def wfdb_record(tmp_path: Path) -> Path:
    return write_wfdb(tmp_path, "rec", synthetic_ecg())
