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
