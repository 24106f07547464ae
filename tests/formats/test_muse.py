"""GE MUSE XML reader. No public MUSE export ships with an installed package: files are written from
the MUSE ``RestingECG`` layout by ``spec_writers.write_muse`` (independent of the reader)."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.data.formats import muse
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12, check_limb_identities

from .spec_writers import quantise, write_muse

STORED = ("V6", "V5", "V4", "V3", "V2", "V1", "II", "I")  # MUSE's 8 independent leads, here in reverse order


def _digits(ecg_mv, leads=STORED):
    return {k: quantise(ecg_mv[k], 4.88) for k in leads}


def test_round_trip_derives_limb_leads_by_einthoven_goldberger(tmp_path, ecg_mv):
    path = write_muse(tmp_path / "m.xml", _digits(ecg_mv))
    assert muse.sniff(path)
    rec = muse.read(path)
    assert rec.leads == LEADS_12 and rec.fs == 500.0 and rec.n_samples == 5000  # Rhythm, not the Median
    assert rec.patient_id == "MRN12345" and rec.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    for name in LEADS_12:
        np.testing.assert_allclose(rec.lead(name), ecg_mv[name], atol=0.0049)
    assert check_limb_identities(rec.signal, rec.leads, tolerance_mv=1e-4).ok


def test_stored_limb_leads_are_kept_not_rederived(tmp_path, ecg_mv):
    rec = muse.read(write_muse(tmp_path / "m12.xml", _digits(ecg_mv, LEADS_12)))
    assert rec.meta["derived_leads"] == []
    np.testing.assert_allclose(rec.lead("aVL"), ecg_mv["aVL"], atol=0.0025)


@pytest.mark.parametrize("kwargs, reason, words", [
    ({"sample_size": 4}, "unsupported-variant", "LeadSampleSize 4"),
    ({"units": "FURLONGS"}, "units", "FURLONGS"),
    ({"byte_count_delta": 2}, "sample-count", "LeadByteCountTotal"),
    ({"waveform_types": ("Median",)}, "not-ecg", "Rhythm"),
])
def test_bad_muse_raises_record_error(tmp_path, ecg_mv, kwargs, reason, words):
    path = write_muse(tmp_path / "bad.xml", _digits(ecg_mv), **kwargs)
    with pytest.raises(RecordError) as info:
        muse.read(path)
    assert info.value.reason == reason and str(path) in str(info.value) and words in str(info.value)


def test_missing_lead_id_and_unequal_lengths(tmp_path, ecg_mv):
    digits = _digits(ecg_mv, ("I", "II"))
    path = write_muse(tmp_path / "noid.xml", {"": digits["I"], "II": digits["II"]})
    with pytest.raises(RecordError) as info:
        muse.read(path)
    assert info.value.reason == "missing-lead-label"
    path = write_muse(tmp_path / "len.xml", {"I": digits["I"], "II": digits["II"][:4500]})
    with pytest.raises(RecordError) as info:
        muse.read(path)
    assert info.value.reason == "sample-count"


def test_bad_base64_is_corrupt(tmp_path, ecg_mv):
    path = write_muse(tmp_path / "b64.xml", _digits(ecg_mv, ("I", "II")))
    text = path.read_text(encoding="iso-8859-1").replace("<WaveFormData>", "<WaveFormData>@@@")
    path.write_text(text, encoding="iso-8859-1")
    with pytest.raises(RecordError) as info:
        muse.read(path)
    assert info.value.reason == "corrupt" and "base64" in str(info.value)


def test_utf16_export_is_sniffed_and_read(tmp_path, ecg_mv):
    path = write_muse(tmp_path / "u16.xml", _digits(ecg_mv, ("I", "II")))
    text = path.read_text(encoding="iso-8859-1").replace('encoding="ISO-8859-1"', 'encoding="UTF-16"')
    path.write_bytes(text.encode("utf-16"))  # with BOM, as some MUSE exports are written
    assert muse.sniff(path)
    assert muse.read(path).leads == ("I", "II", "III", "aVR", "aVL", "aVF")
