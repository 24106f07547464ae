"""Calibration pulses at the ends of a record are dropped and noted; a genuine ECG never loses a sample.

Crafted records are real PTB-XL records (../shared/data) with a device-style calibration segment added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from lsemvae.data.formats.calibration import drop_calibration
from lsemvae.data.preprocess import PreprocessConfig, preprocess
from lsemvae.data.readers import read_record
from lsemvae.leads import LEADS_12

from .spec_writers import quantise, write_aecg

RECORD = "records500/00000/00001_hr"


def _calibration(fs: float, n_leads: int, *, level_mv: float = 1.0) -> np.ndarray:
    """0.3 s at 0 mV, 0.2 s at ``level_mv`` on every lead, 0.3 s at 0 mV (the segment Philips carts append)."""
    seg = np.zeros((n_leads, int(0.8 * fs)))
    seg[:, int(0.3 * fs):int(0.5 * fs)] = level_mv
    return seg


def _write(folder: Path, name: str, signal: np.ndarray, fs: float, leads) -> Path:
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=signal.T,
                fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads),
                write_dir=str(folder))
    return folder / f"{name}.hea"


@pytest.mark.parametrize("where", ["end", "start", "both"])
def test_pulse_on_a_real_record_is_dropped_and_noted(tmp_path, ptbxl_root, where):
    real = read_record(ptbxl_root / f"{RECORD}.hea")
    cal = _calibration(real.fs, len(real.leads))
    parts = ([cal] if where in ("start", "both") else []) + [real.signal] + ([cal] if where in ("end", "both") else [])
    rec = read_record(_write(tmp_path, "cal", np.concatenate(parts, axis=1), real.fs, real.leads))
    np.testing.assert_allclose(rec.signal, real.signal, atol=1e-6)  # exactly the ECG, not a sample more or less
    sides = [n.split(" at the ")[1].split(" ")[0] for n in rec.notes]
    assert sides == (["start", "end"] if where == "both" else [where])
    assert all(n.startswith("calibration: dropped 0.800 s") for n in rec.notes)
    # The note travels with the record's QC flags.
    out = preprocess(rec, PreprocessConfig())
    assert any(f.startswith("calibration:") for f in out.flags)


def test_real_records_are_never_trimmed(ptbxl_root, ludb_root):
    paths = sorted(ptbxl_root.glob("records100/*/*.hea"))[::8] + sorted(ptbxl_root.glob("records500/*/*.hea"))[::8]
    paths += sorted((ludb_root / "data").glob("*.hea"))[::4]
    assert len(paths) > 200
    for path in paths:
        rec = read_record(path)
        assert rec.notes == (), (path, rec.notes)
        assert rec.n_samples == int(path.read_text().split()[3])


def test_a_step_that_keeps_the_limb_leads_consistent_is_ecg(tmp_path, ptbxl_root):
    """A common 1 mV box on I and II only (III = II - I unchanged) is not a calibration pulse: kept."""
    real = read_record(ptbxl_root / f"{RECORD}.hea")
    box = np.zeros((len(real.leads), int(0.8 * real.fs)))
    rows = [real.leads.index(n) for n in ("I", "II", "aVL", "aVF")]
    box[rows, int(0.3 * real.fs):int(0.5 * real.fs)] = [[1.0], [1.0], [0.5], [0.5]]
    box[real.leads.index("aVR"), int(0.3 * real.fs):int(0.5 * real.fs)] = -1.0
    rec = read_record(_write(tmp_path, "box", np.concatenate([real.signal, box], axis=1), real.fs, real.leads))
    assert rec.notes == () and rec.n_samples == real.n_samples + box.shape[1]


def test_aecg_export_with_its_calibration_second(tmp_path, ecg_mv):
    """An aECG exported with the cart's last second (a 1 mV, 200 ms box on all 12 leads) loses exactly it."""
    fs = 500.0
    cal = _calibration(fs, 1)[0]
    digits = {k: quantise(np.concatenate([ecg_mv[k], cal, np.zeros(100)]), 5.0) for k in LEADS_12}
    rec = read_record(write_aecg(tmp_path / "philips_aecg.xml", digits, fs=fs))
    # The ECG's own last samples are near 0 mV and quiet, like the segment's lead-in: at most those go with it.
    assert len(ecg_mv["I"]) - 100 <= rec.n_samples <= len(ecg_mv["I"])
    assert rec.notes and "at the end" in rec.notes[0]
    np.testing.assert_allclose(rec.lead("V2")[:4900], quantise(ecg_mv["V2"], 5.0)[:4900] * 0.005, atol=1e-6)


def test_derived_leads_are_left_out_of_the_test(ecg_mv):
    """MUSE stores I, II, V1-V6 and the reader computes the rest: a pulse there shows in the stored leads only."""
    from lsemvae.data.record import ECGRecord
    from lsemvae.leads import derive_limb_leads

    stored = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    signal = {k: np.concatenate([ecg_mv[k], _calibration(500.0, 1)[0]]) for k in stored}
    signal.update(derive_limb_leads(signal["I"], signal["II"]))
    rec = ECGRecord(signal=np.stack([signal[k] for k in LEADS_12]), fs=500.0, leads=LEADS_12, record_id="m",
                    patient_id="p", source="m", meta={"derived_leads": ["III", "aVR", "aVL", "aVF"]})
    out = drop_calibration(rec)
    assert len(ecg_mv["I"]) - 20 <= out.n_samples <= len(ecg_mv["I"]) and out.notes  # quiet last samples may go too
