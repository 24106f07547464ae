"""SCP-ECG (EN 1064, ISO/IEEE 11073-91064), the binary resting-ECG format of Schiller, Cardioline,
Mortara and others. Written from the standard; covers what a 12-lead rhythm read needs:

- the record: CRC-CCITT (polynomial 0x1021, start 0xFFFF) over bytes 3.., little-endian size;
- section 0, the pointers (id, length, 1-based byte index) to sections 0-11 and beyond; every present
  section's 16-byte header (CRC, id, length, version) is checked against its pointer and its CRC;
- section 1 (patient data, tag-length-value): patient id (tag 2), age (tag 4), sex (tag 8);
- section 2 (Huffman tables): absent (data are plain 16-bit integers) or the default table
  (``19999``); custom tables are refused;
- section 3 (leads): count, flags (bit 0: reference beat subtracted), per lead the first and last
  sample number and the lead code (1-8 I, II, V1-V6; 61-64 III, aVR, aVL, aVF; the same numbers as
  MDC_ECG_LEAD_*);
- section 6 (rhythm data): amplitude multiplier (nV per unit), sample interval (us), difference
  coding (none, first or second differences), bimodal flag, byte count per lead, then the data;
- with reference beat subtraction: section 4 (length and fiducial of reference beat 0, then per QRS
  its type, subtraction window and fiducial) and section 5 (the reference beats, coded like section
  6): reference beat 0 is added back over each type-0 QRS's subtraction window.

Refused with a reason naming the section: a bad CRC (``checksum``), a truncated or inconsistent
section (``corrupt``), custom Huffman tables, bimodal compression or decimated rhythm data, a
reference beat subtraction without sections 4 and 5 (``unsupported-variant``), an unknown lead code.
Lengths are checked against :mod:`.limits` before any decoding.
"""

from __future__ import annotations

import binascii
import struct
from pathlib import Path

import numpy as np

from lsemvae.data.formats import limits
from lsemvae.data.formats.common import file_head, lead_from_code, select_leads
from lsemvae.data.record import ECGRecord
from lsemvae.errors import RecordError

NAME = "scp-ecg"
DEFAULT_HUFFMAN = 19999
_HEADER = 16
_SEX = {1: "M", 2: "F"}


def sniff(path: str | Path) -> bool:
    """Section 0 starts at byte 7 and its header ends with the ASCII ``SCPECG``."""
    head = file_head(path, 22)
    return head[16:22] == b"SCPECG" and head[8:10] == b"\x00\x00"


class _File:
    """The record's bytes and its sections, checked on construction."""

    def __init__(self, data: bytes, where: str):
        self.where = where
        if len(data) < 6 + _HEADER:
            raise RecordError(where, f"{len(data)} bytes: too short for an SCP-ECG record", reason="corrupt")
        crc, size = struct.unpack_from("<HI", data, 0)
        if size < 6 + _HEADER:
            raise RecordError(where, f"record declares {size} bytes: too short for an SCP-ECG record", reason="corrupt")
        if size > len(data):
            raise RecordError(where, f"record declares {size} bytes but the file holds {len(data)}: truncated",
                              reason="corrupt")
        self.data = data[:size]
        if binascii.crc_hqx(self.data[2:], 0xFFFF) != crc:
            raise RecordError(where, "record CRC does not match its bytes: the file is damaged", reason="checksum")
        self.sections: dict[int, tuple[int, int]] = {}  # id -> (offset of the section header, length)
        _id, length, _ver = self._header(6, 0, None)
        for k in range((length - _HEADER) // 10):
            sid, slen, index = struct.unpack_from("<HII", self.data, 6 + _HEADER + 10 * k)
            if slen:
                self._header(index - 1, sid, slen)
                self.sections[sid] = (index - 1, slen)

    def _header(self, offset: int, sid: int, length: int | None) -> tuple[int, int, int]:
        if offset < 6 or offset + _HEADER > len(self.data):
            raise RecordError(self.where, f"section {sid}: pointer to byte {offset + 1} lies outside the record",
                              reason="corrupt")
        crc, got_id, got_len, version = struct.unpack_from("<HHIB", self.data, offset)
        if got_id != sid or (length is not None and got_len != length):
            raise RecordError(self.where, f"section {sid}: header at byte {offset + 1} says section {got_id}, "
                              f"{got_len} bytes (pointer: {length})", reason="corrupt")
        if got_len < _HEADER or offset + got_len > len(self.data):
            raise RecordError(self.where, f"section {sid}: {got_len} bytes from byte {offset + 1} run past the "
                              f"record's {len(self.data)} bytes: truncated", reason="corrupt")
        if binascii.crc_hqx(self.data[offset + 2:offset + got_len], 0xFFFF) != crc:
            raise RecordError(self.where, f"section {sid}: CRC does not match its bytes: the section is damaged",
                              reason="checksum")
        return got_id, got_len, version

    def body(self, sid: int) -> bytes | None:
        """The bytes of section ``sid`` after its header, or None when absent."""
        if sid not in self.sections:
            return None
        offset, length = self.sections[sid]
        return self.data[offset + _HEADER:offset + length]

    def unpack(self, sid: int, fmt: str, body: bytes, offset: int = 0) -> tuple:
        if offset + struct.calcsize(fmt) > len(body):
            raise RecordError(self.where, f"section {sid}: ends at byte {len(body)} of its data, a field needs "
                              f"{offset + struct.calcsize(fmt)}", reason="corrupt")
        return struct.unpack_from(fmt, body, offset)


def read(path: str | Path) -> ECGRecord:
    where = str(path)
    scp = _File(Path(path).read_bytes(), where)
    huffman = _huffman(scp)
    leads = _leads(scp)
    codes = [code for code, _, _ in leads]
    firsts, lasts = {s for _, s, _ in leads}, {e for _, _, e in leads}
    if len(firsts) != 1 or len(lasts) != 1:
        raise RecordError(where, "section 3: leads cover different sample ranges (not recorded simultaneously): "
                          "not supported", reason="unsupported-variant")
    n_samples = lasts.pop() - firsts.pop() + 1
    if n_samples <= 0:
        raise RecordError(where, "section 3: last sample before the first", reason="sample-count")
    limits.check_samples(n_samples, record=where, what="section 3")

    subtracted = bool(scp.unpack(3, "<BB", scp.body(3))[1] & 1)
    rhythm, fs, avm = _coded_block(scp, 6, [n_samples] * len(leads), huffman)
    signal_nv = rhythm.astype(np.float64) * avm
    if subtracted:
        signal_nv += _reference_beats(scp, len(leads), n_samples, fs, huffman)

    labels = [lead_from_code(code) or (f"lead code {code}" if code else None) for code in codes]
    keep, names, dropped = select_leads(labels, record=where,
                                        channels=[f"section 3 lead {i + 1} (code {c})" for i, c in enumerate(codes)])
    record_id = Path(path).stem
    meta = {"format": NAME, "dropped_channels": dropped, "reference_beat_subtraction": subtracted,
            **_patient(scp)}
    patient_id = meta.pop("patient_id", None) or record_id
    return ECGRecord(signal=(signal_nv[keep] * 1e-6).astype(np.float32), fs=fs, leads=tuple(names),
                     record_id=record_id, patient_id=patient_id, source=where, meta=meta)


def _huffman(scp: _File) -> bool:
    """True for the default table, False when section 2 is absent (plain 16-bit data)."""
    body = scp.body(2)
    if body is None:
        return False
    (n_tables,) = scp.unpack(2, "<H", body)
    if n_tables != DEFAULT_HUFFMAN:
        raise RecordError(scp.where, f"section 2 defines {n_tables} custom Huffman table(s): only the default table "
                          f"({DEFAULT_HUFFMAN}) is supported", reason="unsupported-variant")
    return True


def _leads(scp: _File) -> list[tuple[int, int, int]]:
    """(lead code, first sample, last sample) per lead of section 3."""
    body = scp.body(3)
    if body is None:
        raise RecordError(scp.where, "no section 3: the leads are not identified", reason="not-ecg")
    n, _flags = scp.unpack(3, "<BB", body)
    if n == 0:
        raise RecordError(scp.where, "section 3 lists no lead", reason="not-ecg")
    return [(code, first, last) for first, last, code in
            (scp.unpack(3, "<IIB", body, 2 + 9 * k) for k in range(n))]


def _coded_block(scp: _File, sid: int, counts: list[int], huffman: bool) -> tuple[np.ndarray, float, int]:
    """Sections 5 and 6 share a layout: decoded values ``[leads, n]``, sampling rate, nV per unit."""
    body = scp.body(sid)
    if body is None:
        raise RecordError(scp.where, f"no section {sid}: {'rhythm' if sid == 6 else 'reference beat'} data absent",
                          reason="not-ecg")
    avm, interval_us, differences, bimodal = scp.unpack(sid, "<HHBB", body)
    if sid == 6 and bimodal:
        raise RecordError(scp.where, "section 6 uses bimodal compression (decimated outside the QRS): not supported",
                          reason="unsupported-variant")
    if differences not in (0, 1, 2):
        raise RecordError(scp.where, f"section {sid}: difference coding {differences} is not 0, 1 or 2",
                          reason="corrupt")
    if avm == 0 or interval_us == 0:
        raise RecordError(scp.where, f"section {sid}: amplitude multiplier {avm} nV or sample interval {interval_us} us "
                          "is zero", reason="units" if avm == 0 else "fs")
    sizes = scp.unpack(sid, f"<{len(counts)}H", body, 6)
    offset = 6 + 2 * len(counts)
    if offset + sum(sizes) > len(body):
        raise RecordError(scp.where, f"section {sid}: lead data of {sum(sizes)} bytes run past the section's "
                          f"{len(body) - offset}: truncated", reason="corrupt")
    out = np.empty((len(counts), max(counts)), dtype=np.int64)
    for k, (size, n) in enumerate(zip(sizes, counts)):
        chunk = body[offset:offset + size]
        offset += size
        values = _default_huffman(chunk, n) if huffman else _plain(chunk, n)
        if values is None:
            raise RecordError(scp.where, f"section {sid}, lead {k + 1}: {size} bytes hold fewer than the {n} samples "
                              "section 3 declares", reason="corrupt")
        out[k, :n] = _undifference(values, differences)
    return out, 1e6 / interval_us, avm


def _plain(chunk: bytes, n: int) -> np.ndarray | None:
    return np.frombuffer(chunk[: 2 * n], dtype="<i2").astype(np.int64) if len(chunk) >= 2 * n else None


def _build_lut() -> list[tuple[int, int, int]]:
    """(bits consumed, value, kind) for every 10-bit window of the default table: kind 0 a value, 1 an
    8-bit and 2 a 16-bit original value after the 10-bit prefix. Codes: 0 -> 0; n ones, a zero, then a
    sign bit (0 +, 1 -) -> +-n for n = 1..8; nine ones and a zero -> 8-bit value; ten ones -> 16-bit."""
    lut = []
    for w in range(1024):
        bits = f"{w:010b}"
        ones = len(bits) - len(bits.lstrip("1"))
        if ones == 0:
            lut.append((1, 0, 0))
        elif ones <= 8:
            lut.append((ones + 2, -ones if bits[ones + 1] == "1" else ones, 0))
        else:
            lut.append((10 + (8 if ones == 9 else 16), 0, 1 if ones == 9 else 2))
    return lut


_LUT = _build_lut()


def _default_huffman(chunk: bytes, n: int) -> np.ndarray | None:
    """``n`` values decoded with the default Huffman table, or None if ``chunk`` runs out first."""
    bits = np.unpackbits(np.frombuffer(chunk, dtype=np.uint8))
    n_bits = bits.size
    padded = np.concatenate((bits, np.zeros(36, dtype=np.uint8)))
    window = np.lib.stride_tricks.sliding_window_view(padded, 10)[: n_bits + 26] @ (1 << np.arange(9, -1, -1))
    win = window.tolist()
    out = [0] * n
    pos = 0
    for i in range(n):
        if pos >= n_bits:
            return None
        step, value, kind = _LUT[win[pos]]
        if kind == 1:
            value = (win[pos + 10] >> 2) - (256 if win[pos + 10] >> 9 else 0)
        elif kind == 2:
            raw = (win[pos + 10] << 6) | (win[pos + 20] >> 4)
            value = raw - 65536 if raw >> 15 else raw
        out[i] = value
        pos += step
    return np.asarray(out, dtype=np.int64) if pos <= n_bits else None


def _undifference(d: np.ndarray, order: int) -> np.ndarray:
    """Undo first (x[n] = x[n-1] + d[n]) or second (x[n] = d[n] + 2x[n-1] - x[n-2]) differences."""
    if order == 0 or d.size < 2:
        return d
    if order == 1:
        return np.cumsum(d)
    steps = (d[1] - d[0]) + np.cumsum(d[2:])  # x[n] - x[n-1] for n >= 2
    return np.concatenate((d[:2], d[1] + np.cumsum(steps)))


def _reference_beats(scp: _File, n_leads: int, n_samples: int, fs: float, huffman: bool) -> np.ndarray:
    """Reference beat 0 (nV) placed over each type-0 QRS's subtraction window, ``[leads, n_samples]``."""
    s4 = scp.body(4)
    if s4 is None or 5 not in scp.sections:
        raise RecordError(scp.where, "section 3 says the reference beat was subtracted, but section "
                          f"{4 if s4 is None else 5} is absent: the rhythm cannot be restored", reason="unsupported-variant")
    length_ms, fiducial, n_qrs = scp.unpack(4, "<HHH", s4)
    beat_len = int(round(length_ms * fs / 1000.0))
    beats, beat_fs, avm5 = _coded_block(scp, 5, [beat_len] * n_leads, huffman)
    if abs(beat_fs - fs) > 1e-6:
        raise RecordError(scp.where, f"rhythm data at {fs:g} Hz but reference beats at {beat_fs:g} Hz (decimated, "
                          "high-compression record): not supported", reason="unsupported-variant")
    added = np.zeros((n_leads, n_samples))
    for q in range(n_qrs):
        kind, start, qrs, end = scp.unpack(4, "<HIII", s4, 6 + 14 * q)
        if kind != 0:
            continue
        lo, hi = max(start, 1), min(end, n_samples)
        ref_lo = lo - qrs + fiducial - 1  # 0-based index into the beat: fiducials aligned
        ref_hi = ref_lo + (hi - lo)
        if lo > hi or ref_lo < 0 or ref_hi >= beat_len:
            raise RecordError(scp.where, f"section 4, QRS {q + 1}: subtraction window {start}-{end} does not fit the "
                              f"{beat_len}-sample reference beat around fiducial {qrs}", reason="corrupt")
        added[:, lo - 1:hi] += beats[:, ref_lo:ref_hi + 1] * float(avm5)
    return added


def _patient(scp: _File) -> dict:
    """Section 1 fields: ``patient_id``, ``age``, ``sex`` where present."""
    body = scp.body(1)
    out: dict = {}
    offset = 0
    while body is not None and offset + 3 <= len(body):
        tag, length = struct.unpack_from("<BH", body, offset)
        value = body[offset + 3:offset + 3 + length]
        offset += 3 + length
        if tag == 255:
            break
        if tag == 2 and value.rstrip(b"\0"):
            out["patient_id"] = value.split(b"\0", 1)[0].decode("latin-1").strip()
        elif tag == 4 and len(value) >= 3 and value[2] == 1:  # unit 1: years
            out["age"] = str(struct.unpack_from("<H", value)[0])
        elif tag == 8 and value and value[0] in _SEX:
            out["sex"] = _SEX[value[0]]
    return {k: v for k, v in out.items() if v}
