"""Philips SierraECG XML: the real PageWriter-family file in ../shared/data/formats/philips (version 1.03, XLI),
and variants made from it (1.04 with its own lead order, uncompressed, damaged, hostile)."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import numpy as np
import pytest

from lsemvae.data.formats import philips, xli
from lsemvae.data.readers import read_record
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12, check_limb_identities


@pytest.fixture(scope="module")
def real_path(shared_data) -> Path:
    return shared_data / "formats" / "philips" / "129DYPRG.XML"


@pytest.fixture(scope="module")
def real(real_path):
    return read_record(real_path)


_WAVES = re.compile(r"(<parsedwaveforms)([^>]*)>(.*?)(</parsedwaveforms>)", re.S)


def _payload(xml: str) -> bytes:
    return base64.b64decode(re.sub(r"\s+", "", _WAVES.search(xml).group(3)))


def _with_payload(xml: str, data: bytes, attrs: str | None = None) -> str:
    def put(m):
        return f"{m.group(1)}{attrs if attrs is not None else m.group(2)}>{base64.b64encode(data).decode()}{m.group(4)}"
    return _WAVES.sub(put, xml, count=1)


def _chunks(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset:offset + 4], "little")
        out.append(data[offset:offset + 8 + size])
        offset += 8 + size
    return out


def _write(tmp_path: Path, xml: str, name: str = "v.xml") -> Path:
    path = tmp_path / name
    path.write_text(xml, encoding="utf-8")
    return path


def test_real_file_reads_named_in_millivolts(real_path, real):
    assert philips.sniff(real_path)
    assert real.leads == LEADS_12 and real.fs == 500.0
    assert real.patient_id == "1112010721168bdc" and real.meta["document"] == "SierraECG 1.03"
    assert real.meta["reconstructed_leads"] == ["III", "aVR", "aVL", "aVF"]
    # The stored III, aVR, aVL, aVF are residuals: rebuilt by name, the identities hold to the LSB rounding.
    check = check_limb_identities(real.signal, real.leads, tolerance_mv=0.01)
    assert check.ok, check.message
    # The file's own measurements (leadmeasurement/ramp, R amplitude in uV, per named lead): where the R wave is
    # the lead's largest deflection (>= 0.6 mV) it equals the signal's peak above baseline, and no lead's R
    # wave exceeds that lead's peak. A lead read under another's name, or a wrong scale, breaks this.
    xml = real_path.read_text()
    ramp = {lead: int(uv) / 1000 for lead, uv in
            re.findall(r'<leadmeasurement leadname="(\w+)".*?<ramp>(-?\d+)</ramp>', xml, re.S)}
    assert set(ramp) == set(LEADS_12)
    for lead, r_mv in ramp.items():
        x = real.lead(lead)
        peak = float(np.percentile(x, 99.9) - np.median(x))
        assert r_mv <= peak * 1.1, (lead, r_mv, peak)
        if r_mv >= 0.6:
            assert abs(peak - r_mv) <= 0.1 * r_mv, (lead, r_mv, peak)


def test_calibration_segment_at_the_end_is_dropped_and_noted(real_path, real):
    raw = philips.read(real_path)
    assert raw.n_samples == 5500  # 11 s in the file
    assert real.n_samples < 5300 and any(n.startswith("calibration: dropped") for n in real.notes)
    np.testing.assert_array_equal(real.signal, raw.signal[:, :real.n_samples])  # nothing else changed
    tail = raw.signal[:, real.n_samples:]
    assert np.allclose(tail.max(axis=1), 1.0) and np.allclose(tail.min(axis=1), 0.0)  # the 1 mV box it removed


def test_version_1_04_with_its_own_lead_order(tmp_path, real_path, real):
    """1.04 files name their channels (leadlabels): chunks stored in another order read by name."""
    xml = real_path.read_text()
    chunks = _chunks(_payload(xml))
    order = [6, 0, 7, 1, 8, 2, 9, 3, 10, 4, 11, 5]  # V1 I V2 II ... by original index
    labels = " ".join(LEADS_12[i] for i in order)
    data = b"".join(chunks[i] for i in order)
    attrs = re.sub(r"\s*durationperchannel=", f' leadlabels="{labels}" numberofleads="12" durationperchannel=',
                   _WAVES.search(xml).group(2))
    xml = _with_payload(xml, data, attrs).replace("<documentversion>1.03<", "<documentversion>1.04<")
    rec = read_record(_write(tmp_path, xml))
    assert rec.meta["document"] == "SierraECG 1.04" and rec.leads == LEADS_12
    np.testing.assert_array_equal(rec.signal, real.signal)


@pytest.mark.parametrize("stored", ["residuals", "full leads"])
def test_uncompressed_data_residual_or_full_limb_leads(tmp_path, real_path, real, stored):
    """The reader tells residual from full limb leads by the data, not by assumption."""
    xml = real_path.read_text()
    digital = xli.decode(_payload(xml), 12, 5500)
    if stored == "full leads":
        full = philips.read(real_path).signal  # 5 uV per LSB
        digital = np.round(full / 0.005).astype(np.int16)
    attrs = ' compressflag="False" dataencoding="Base64" durationperchannel="11000" nbitspersample="16"'
    rec = read_record(_write(tmp_path, _with_payload(xml, digital.astype("<i2").tobytes(), attrs)))
    assert rec.meta["reconstructed_leads"] == ([] if stored == "full leads" else ["III", "aVR", "aVL", "aVF"])
    np.testing.assert_allclose(rec.signal, real.signal, atol=1e-6)


def _lzw_bomb(n_codes: int) -> bytes:
    """LZW codes that each add one byte more than the last (0, 256, 257, ...), then the longest entry over and
    over: 10 bits in, up to 767 bytes out."""
    codes = [0] + list(range(256, 1023)) + [1022] * n_codes
    bits = "".join(format(c, "010b") for c in codes)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


@pytest.mark.parametrize("n_codes, reason, words", [
    (10_000, "corrupt", "decompresses to more than 11000"),  # 12.5 kB a lead, would inflate to 7.7 MB
    (200_000, "sample-count", "far more than"),  # 250 kB a lead: refused before decoding
])
def test_xli_bomb_is_refused_without_inflating_it(tmp_path, real_path, n_codes, reason, words):
    bomb = _lzw_bomb(n_codes)
    small = _lzw_bomb(10_000)
    assert len(xli._lzw(small, 10**9)) > 500 * len(small)  # what an unbounded decoder makes of it
    chunk = len(bomb).to_bytes(4, "little") + b"\x01\x00\x00\x00" + bomb
    xml = _with_payload(real_path.read_text(), chunk * 12)
    start = time.perf_counter()
    with pytest.raises(RecordError) as info:
        read_record(_write(tmp_path, xml))
    assert time.perf_counter() - start < 5.0
    assert info.value.reason == reason and words in str(info.value)


@pytest.mark.parametrize("edit, reason, words", [
    (lambda x: x.replace("<documentversion>1.03<", "<documentversion>2.00<"), "unsupported-variant", "'2.00'"),
    (lambda x: x.replace("<acquisitiontype>STD-12<", "<acquisitiontype>15-LEAD<").replace(
        "<leadset>STD-12<", "<leadset>15-LEAD<"), "missing-lead-label", "15-LEAD"),
    (lambda x: x.replace('durationperchannel="11000"', 'durationperchannel="10000000"'), "too-large",
     "durationperchannel"),
    (lambda x: _with_payload(x, _payload(x)[:5000]), "corrupt", "XLI"),
    (lambda x: _with_payload(x, b"").replace("<parsedwaveforms", "<parsedwaveforms", 1).replace(
        "</parsedwaveforms>", "@@@</parsedwaveforms>"), "corrupt", "base64"),
    (lambda x: x.replace('compressmethod="XLI"', 'compressmethod="ZIP"'), "unsupported-variant", "ZIP"),
    (lambda x: x.replace("<signalresolution>5<", "<signalresolution>0<"), "units", "signalresolution"),
])
def test_bad_files_are_refused_with_a_reason(tmp_path, real_path, edit, reason, words):
    path = _write(tmp_path, edit(real_path.read_text()))
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert info.value.reason == reason and words in str(info.value) and str(path) in str(info.value)
