"""SCP-ECG reader: the real Mortara ELI 250 file in ../shared/data/formats/scp, and files written from EN 1064."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from lsemvae.data.formats import scp
from lsemvae.data.readers import read_record
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12, check_limb_identities

from .spec_writers import _scp_crc, quantise, write_scp


@pytest.fixture(scope="module")
def real_path(shared_data) -> Path:
    return shared_data / "formats" / "scp" / "Example.scp"


def test_real_file_reads_with_lead_names_from_section_3(real_path):
    assert scp.sniff(real_path)
    rec = read_record(real_path)
    # Section 3 lists I, II, V1-V6, then III, aVR, aVL, aVF (codes 1-8, 61-64): names follow the codes.
    assert rec.leads == ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6", "III", "aVR", "aVL", "aVF")
    assert rec.fs == 500.0 and rec.n_samples == 5000 and rec.patient_id == "SBJ-123"
    assert rec.meta["format"] == "scp-ecg" and rec.meta["sex"] == "M" and rec.notes == ()
    # The file stores III, aVR, aVL and aVF themselves: Einthoven/Goldberger are a real check here.
    check = check_limb_identities(rec.signal, rec.leads, tolerance_mv=0.01)
    assert check.ok, check.message
    # QRS amplitude (peak to peak over the record) in the range of a resting ECG, in mV.
    p2p = np.ptp(rec.signal, axis=1)
    assert np.all(p2p > 0.3) and np.all(p2p < 5.0), dict(zip(rec.leads, p2p.round(2)))
    # Polarity: the explicitly signed 8/16-bit codes and the +-n codes agree only with the right sign convention;
    # the wrong one drifts by volts. V1 is dominated by its S wave, V6 by its R wave, as in a normal precordium.
    v1, v6 = rec.lead("V1"), rec.lead("V6")
    assert -v1.min() > v1.max() and v6.max() > -v6.min()
    assert abs(np.median(rec.signal, axis=1)).max() < 0.2


@pytest.mark.parametrize("huffman, order", [(True, 2), (True, 1), (True, 0), (False, 1), (False, 0)])
def test_written_file_round_trips(tmp_path, ecg_mv, reversed_leads, huffman, order):
    digits = {k: quantise(ecg_mv[k], 5.0) for k in reversed_leads}
    path = write_scp(tmp_path / "r.scp", digits, avm_nv=5000, order=order, huffman=huffman)
    rec = scp.read(path)
    assert rec.leads == reversed_leads and rec.fs == 500.0 and rec.patient_id == "SCP-42"
    for name in LEADS_12:
        np.testing.assert_allclose(rec.lead(name), digits[name] * 0.005, atol=1e-6)


def test_large_steps_use_the_8_and_16_bit_escapes(tmp_path):
    values = np.array([0, 3, -7, 9, -100, 127, -128, 128, -129, 30000, -30000, 0] * 50)
    path = write_scp(tmp_path / "esc.scp", {"I": values, "II": -values}, order=0, avm_nv=1000)
    rec = scp.read(path)
    np.testing.assert_allclose(rec.lead("I"), values * 1e-3, atol=1e-9)


def test_reference_beat_is_added_back(tmp_path, ecg_mv):
    """A residual plus reference beat 0 over each type-0 QRS window gives the ECG back (section 4/5)."""
    fs, n = 500.0, 5000
    full = {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II", "V2")}
    beats_at = np.arange(300, n - 300, 416)  # QRS fiducials (0-based)
    fid, half = 150, 120  # reference beat: 300 samples, fiducial at its sample 151 (1-based)
    template = {k: np.round(np.median([full[k][b - fid:b - fid + 300] for b in beats_at], axis=0)).astype(np.int64)
                for k in full}
    residual = {k: v.copy() for k, v in full.items()}
    qrs = []
    for b in beats_at:
        start, end = b - half, b + half  # subtraction window, 0-based inclusive
        for k in full:
            residual[k][start:end + 1] -= template[k][start - b + fid:end - b + fid + 1]
        qrs.append((0, start + 1, b + 1, end + 1))
    qrs.append((1, 10, 20, 30))  # a beat of another type: nothing added there
    path = write_scp(tmp_path / "sub.scp", residual, reference={"beat": template, "fiducial": fid + 1, "qrs": qrs})
    rec = scp.read(path)
    assert rec.meta["reference_beat_subtraction"] is True
    for k in full:
        np.testing.assert_allclose(rec.lead(k), full[k] * 0.005, atol=1e-6)


def _rewrite(path: Path, change) -> Path:
    raw = bytearray(path.read_bytes())
    change(raw)
    raw[0:2] = struct.pack("<H", _scp_crc(bytes(raw[2:])))  # a consistent record CRC: the section check must catch it
    path.write_bytes(bytes(raw))
    return path


def _section_offset(raw: bytes, sid: int) -> int:
    for k in range(12):
        got, length, index = struct.unpack_from("<HII", raw, 22 + 10 * k)
        if got == sid and length:
            return index - 1
    raise AssertionError(f"section {sid} absent")


def _flip_in_section_6(raw):
    raw[_section_offset(raw, 6) + 40] ^= 0x10


@pytest.mark.parametrize("damage, reason, words", [
    (lambda p: p.write_bytes(p.read_bytes()[:-300]), "corrupt", "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:1] + b"\x00" + p.read_bytes()[2:]), "checksum", "record CRC"),
    (lambda p: _rewrite(p, _flip_in_section_6), "checksum", "section 6: CRC"),
])
def test_damaged_files_are_refused_naming_the_section(tmp_path, ecg_mv, damage, reason, words):
    path = write_scp(tmp_path / "d.scp", {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II")})
    damage(path)
    with pytest.raises(RecordError) as info:
        scp.read(path)
    assert info.value.reason == reason and words in str(info.value) and str(path) in str(info.value)


def test_section_running_past_its_length_is_truncated(tmp_path, ecg_mv):
    path = write_scp(tmp_path / "t.scp", {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II")})
    raw = bytearray(path.read_bytes())
    off = _section_offset(raw, 6)
    struct.pack_into("<H", raw, off + 16 + 6, 60000)
    body = bytes(raw[off + 2:off + struct.unpack_from("<I", raw, off + 4)[0]])
    struct.pack_into("<H", raw, off, _scp_crc(body))  # section CRC made consistent with the bad count
    raw[0:2] = struct.pack("<H", _scp_crc(bytes(raw[2:])))
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordError) as info:
        scp.read(path)
    assert info.value.reason == "corrupt" and "section 6" in str(info.value) and "truncated" in str(info.value)


@pytest.mark.parametrize("options, reason, words", [
    ({"codes": {"II": 200}}, "unknown-lead", "section 3 lead 2 (code 200)"),
    ({"codes": {"II": 0}}, "missing-lead-label", "section 3 lead 2 (code 0)"),
    ({"huffman_tables": 1}, "unsupported-variant", "section 2 defines 1 custom Huffman"),
    ({"bimodal": 1}, "unsupported-variant", "bimodal"),
])
def test_unsupported_or_unnamed_content_is_refused(tmp_path, ecg_mv, options, reason, words):
    path = write_scp(tmp_path / "u.scp", {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II")}, **options)
    with pytest.raises(RecordError) as info:
        scp.read(path)
    assert info.value.reason == reason and words in str(info.value)


def test_extra_leads_are_dropped_not_refused(tmp_path, ecg_mv):
    digits = {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II")}
    digits["V4R"] = digits["I"]
    rec = scp.read(write_scp(tmp_path / "x.scp", digits))
    assert rec.leads == ("I", "II") and rec.meta["dropped_channels"] == ["V4R"]


def test_declared_sample_count_over_the_limit_is_refused_before_decoding(tmp_path, ecg_mv, monkeypatch):
    path = write_scp(tmp_path / "big.scp", {k: quantise(ecg_mv[k], 5.0) for k in ("I", "II")})
    monkeypatch.setenv("LSEMVAE_MAX_SAMPLES_PER_LEAD", "4000")
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert info.value.reason == "too-large" and "LSEMVAE_MAX_SAMPLES_PER_LEAD" in str(info.value)


def test_sniff_claims_only_scp(tmp_path, real_path):
    assert scp.sniff(real_path)
    other = tmp_path / "x.bin"
    other.write_bytes(b"\0" * 64)
    assert not scp.sniff(other)
