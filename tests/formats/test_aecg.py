"""HL7 aECG reader. No public aECG sample ships with an installed package, so the files are
written from the HL7 v3 aECG layout by ``spec_writers.write_aecg`` (independent of the reader)."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.data.formats import aecg
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12

from .spec_writers import quantise, write_aecg


def test_round_trip_names_leads_from_sequence_codes(tmp_path, ecg_mv, reversed_leads):
    digits = {k: quantise(ecg_mv[k], 5.0) for k in reversed_leads}
    path = write_aecg(tmp_path / "ecg.xml", digits, fs=500.0, scale_uv=5.0)
    assert aecg.sniff(path)
    rec = aecg.read(path)
    assert rec.leads == reversed_leads and rec.fs == pytest.approx(500.0) and rec.patient_id == "SUBJ-001"
    for name in LEADS_12:
        np.testing.assert_allclose(rec.lead(name), ecg_mv[name], atol=0.0026)


def test_origin_mv_units_and_ms_increment(tmp_path, ecg_mv):
    # physical = origin + scale * digit, here in mV with a 0.2 mV origin; increment 4 ms -> 250 Hz.
    digits = {k: np.round((ecg_mv[k] - 0.2) / 0.01).astype(int) for k in ("I", "II", "V1")}
    path = write_aecg(tmp_path / "mv.xml", digits, fs=250.0, scale_uv=0.01, origin_uv=0.2, scale_unit="mV",
                      increment_unit="ms", subject_id=None)
    rec = aecg.read(path)
    assert rec.fs == pytest.approx(250.0) and rec.patient_id == "mv"  # no subject id: the record id
    np.testing.assert_allclose(rec.lead("V1"), ecg_mv["V1"], atol=0.0051)


def test_non_standard_lead_is_dropped_and_reported(tmp_path, ecg_mv):
    digits = {"I": quantise(ecg_mv["I"], 5.0), "II": quantise(ecg_mv["II"], 5.0), "V4R": quantise(ecg_mv["V4"], 5.0)}
    rec = aecg.read(write_aecg(tmp_path / "v4r.xml", digits, fs=500.0))
    assert rec.leads == ("I", "II") and rec.meta["dropped_channels"] == ["MDC_ECG_LEAD_V4R"]


@pytest.mark.parametrize("kwargs, reason, words", [
    ({"codes": {"II": ""}}, "missing-lead-label", "channel 2"),
    ({"codes": {"II": "MDC_ECG_LEAD_QQ"}}, "unknown-lead", "MDC_ECG_LEAD_QQ"),
    ({"scale_unit": "mmHg"}, "units", "mmHg"),
    ({"increment_unit": "beats"}, "fs", "beats"),
])
def test_bad_aecg_raises_record_error(tmp_path, ecg_mv, kwargs, reason, words):
    digits = {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II", "V1")}
    path = write_aecg(tmp_path / "bad.xml", digits, fs=500.0, **kwargs)
    with pytest.raises(RecordError) as info:
        aecg.read(path)
    assert info.value.reason == reason and str(path) in str(info.value) and words in str(info.value)


def test_inconsistent_sample_counts(tmp_path, ecg_mv):
    digits = {"I": quantise(ecg_mv["I"], 5.0), "II": quantise(ecg_mv["II"][:4000], 5.0)}
    with pytest.raises(RecordError) as info:
        aecg.read(write_aecg(tmp_path / "n.xml", digits, fs=500.0))
    assert info.value.reason == "sample-count" and "II: 4000" in str(info.value)


def test_truncated_xml_is_corrupt(tmp_path, ecg_mv):
    path = write_aecg(tmp_path / "t.xml", {"I": quantise(ecg_mv["I"], 5.0)}, fs=500.0)
    path.write_bytes(path.read_bytes()[:-200])
    assert aecg.sniff(path)  # the root element is intact; the damage is further in
    with pytest.raises(RecordError) as info:
        aecg.read(path)
    assert info.value.reason == "corrupt"
