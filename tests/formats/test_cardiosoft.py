"""CardioSoft-style XML (UK Biobank field 20205 layout). UK Biobank files are access-controlled, so
files are written from the ``CardiologyXML``/``StripData`` layout by ``spec_writers.write_cardiosoft``."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.data.formats import cardiosoft
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12

from .spec_writers import quantise, write_cardiosoft


def test_round_trip_reads_strip_not_median(tmp_path, ecg_mv, reversed_leads):
    path = write_cardiosoft(tmp_path / "1234567_20205_2_0.xml", {k: quantise(ecg_mv[k], 5.0) for k in reversed_leads})
    assert cardiosoft.sniff(path)
    rec = cardiosoft.read(path)
    assert rec.leads == reversed_leads and rec.fs == 500.0 and rec.n_samples == 5000 and rec.patient_id == "1234567"
    for name in LEADS_12:
        np.testing.assert_allclose(rec.lead(name), ecg_mv[name], atol=0.0026)


@pytest.mark.parametrize("kwargs, reason, words", [
    ({"resolution_units": None}, "units", "Resolution units"),
    ({"resolution_units": "mmPerLsb"}, "units", "mmPerLsb"),
    ({"declared_count": 4999}, "sample-count", "4999"),
])
def test_bad_cardiosoft_raises_record_error(tmp_path, ecg_mv, kwargs, reason, words):
    path = write_cardiosoft(tmp_path / "bad.xml", {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II")}, **kwargs)
    with pytest.raises(RecordError) as info:
        cardiosoft.read(path)
    assert info.value.reason == reason and str(path) in str(info.value) and words in str(info.value)


def test_waveform_without_lead_attribute(tmp_path, ecg_mv):
    path = write_cardiosoft(tmp_path / "nolead.xml", {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II")})
    path.write_text(path.read_text().replace('<WaveformData lead="II">', "<WaveformData>")
                    .replace("<StripData>", "<StripData>", 1))
    with pytest.raises(RecordError) as info:
        cardiosoft.read(path)
    assert info.value.reason == "missing-lead-label"


def test_full_disclosure_only_is_reported_unsupported(tmp_path):
    path = tmp_path / "fd.xml"
    path.write_text("<CardiologyXML><FullDisclosure><LeadOrder>I,II</LeadOrder></FullDisclosure></CardiologyXML>")
    with pytest.raises(RecordError) as info:
        cardiosoft.read(path)
    assert info.value.reason == "unsupported-variant" and "StripData" in str(info.value)
