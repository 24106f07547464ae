"""EDF/EDF+ reader: files written with edfio (an independent, spec-conforming EDF writer)."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.data.formats import edf
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12

from .spec_writers import write_edf


@pytest.mark.parametrize("unit, prefix", [("uV", "ECG "), ("mV", "EKG "), ("uV", "")])
def test_round_trip_labels_and_units(tmp_path, ecg_mv, reversed_leads, unit, prefix):
    path = write_edf(tmp_path / "e.edf", {k: ecg_mv[k] for k in reversed_leads}, unit=unit, label_prefix=prefix)
    assert edf.sniff(path)
    rec = edf.read(path)
    assert rec.leads == reversed_leads and rec.fs == 500.0 and rec.patient_id == "MCH-0234567"
    for name in LEADS_12:
        np.testing.assert_allclose(rec.lead(name), ecg_mv[name], atol=2e-4)


def test_non_ecg_signals_are_dropped(tmp_path, ecg_mv):
    extra = {"Resp chest": (np.zeros(2500), 250.0, "uV"), "SpO2": (np.full(10, 97.0), 1.0, "%")}
    rec = edf.read(write_edf(tmp_path / "psg.edf", {"II": ecg_mv["II"]}, extra=extra))
    assert rec.leads == ("II",) and rec.meta["dropped_channels"] == ["Resp chest", "SpO2"]


def test_mixed_rates_are_refused_not_resampled(tmp_path, ecg_mv):
    path = write_edf(tmp_path / "mixed.edf", {"I": ecg_mv["I"]}, extra={"ECG II": (ecg_mv["II"][::2], 250.0, "uV")})
    with pytest.raises(RecordError) as info:
        edf.read(path)
    assert info.value.reason == "mixed-fs" and "250" in str(info.value)


@pytest.mark.parametrize("extra, reason, words", [
    ({"ECG LA-RA": (np.zeros(5000), 500.0, "uV")}, "unknown-lead", "LA-RA"),
    ({"ECG V2": (np.zeros(5000), 500.0, "mmHg")}, "units", "mmHg"),
])
def test_bad_edf_signals(tmp_path, ecg_mv, extra, reason, words):
    path = write_edf(tmp_path / "bad.edf", {"I": ecg_mv["I"]}, extra=extra)
    with pytest.raises(RecordError) as info:
        edf.read(path)
    assert info.value.reason == reason and str(path) in str(info.value) and words in str(info.value)


def test_truncated_edf_is_corrupt(tmp_path, ecg_mv):
    path = write_edf(tmp_path / "t.edf", {"I": ecg_mv["I"]})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(RecordError) as info:
        edf.read(path)
    assert info.value.reason == "corrupt"


def _eeg_file(tmp_path, ecg_mv, ecg_label: str):
    """An EEG-style EDF (edfio-written): 25 EEG signals, PHOTIC-REF, then an ECG channel as signal 27."""
    eeg = {f"EEG {name}-REF": (np.zeros(2500), 250.0, "uV") for name in
           ("FP1 FP2 F3 F4 C3 C4 P3 P4 O1 O2 F7 F8 T3 T4 T5 T6 A1 A2 FZ CZ PZ T1 T2 SP1 SP2".split())}
    eeg["PHOTIC-REF"] = (np.zeros(2500), 250.0, "uV")
    eeg[ecg_label] = (ecg_mv["II"][::2] * 1000, 250.0, "uV")
    return _edf_only_extra(tmp_path / "eeg.edf", eeg)


def _edf_only_extra(path, signals):
    import edfio

    edf = edfio.Edf([edfio.EdfSignal(np.asarray(d), fs, label=label, physical_dimension=unit,
                                     physical_range=(-5000.0, 5000.0)) for label, (d, fs, unit) in signals.items()])
    edf.write(path)
    return path


def test_ecg_in_eeg_montage_is_recognised_and_named_by_file_index(tmp_path, ecg_mv):
    """'EEG EKG1-REF' is an ECG channel (not EEG) and it is the file's signal 27, whatever was dropped before it."""
    path = _eeg_file(tmp_path, ecg_mv, "EEG EKG1-REF")
    with pytest.raises(RecordError) as info:
        edf.read(path)
    assert info.value.reason == "unknown-lead"
    assert "signal 27 ('EEG EKG1-REF')" in str(info.value) and "PHOTIC" not in str(info.value)


@pytest.mark.parametrize("label, lead", [("EEG EKG II-REF", None), ("ECG II", "II"), ("EKG-II", "II"),
                                         ("ECG1 II", "II"), ("II", "II")])
def test_ecg_labels_whatever_the_prefix(tmp_path, ecg_mv, label, lead):
    path = _eeg_file(tmp_path, ecg_mv, label)
    if lead is None:  # "II-REF" is not a lead name: refused, naming the signal
        with pytest.raises(RecordError) as info:
            edf.read(path)
        assert "signal 27" in str(info.value)
        return
    rec = edf.read(path)
    assert rec.leads == (lead,) and "PHOTIC-REF" in rec.meta["dropped_channels"]
    assert "EEG C3-REF" in rec.meta["dropped_channels"]  # EEG electrodes are never precordial leads
    np.testing.assert_allclose(rec.lead(lead), ecg_mv["II"][::2], atol=2e-3)


def test_ecg_channel_without_lead_name_is_refused_naming_it(tmp_path, ecg_mv):
    path = _eeg_file(tmp_path, ecg_mv, "EKG")
    with pytest.raises(RecordError) as info:
        edf.read(path)
    assert info.value.reason == "missing-lead-label" and "signal 27 ('EKG')" in str(info.value)


def test_bare_eeg_electrode_names_are_not_precordial_leads(tmp_path, ecg_mv):
    path = _edf_only_extra(tmp_path / "c3.edf", {"C3": (np.zeros(2500), 250.0, "uV"),
                                                 "ECG V2": (ecg_mv["V2"][::2] * 1000, 250.0, "uV")})
    rec = edf.read(path)
    assert rec.leads == ("V2",) and rec.meta["dropped_channels"] == ["C3"]


def test_sample_count_over_the_limit_is_refused_before_loading(tmp_path, ecg_mv, monkeypatch):
    path = write_edf(tmp_path / "long.edf", {"I": ecg_mv["I"]})
    monkeypatch.setenv("LSEMVAE_MAX_SAMPLES_PER_LEAD", "4999")
    with pytest.raises(RecordError) as info:
        edf.read(path)
    assert info.value.reason == "too-large" and "signal 1 ('ECG I')" in str(info.value)
