"""XLI, the waveform compression of Philips SierraECG / PageWriter XML, decoded with a hard output bound.

Layout (one chunk per lead, chunks back to back in the base64-decoded ``parsedwaveforms`` text):

- an 8-byte header: compressed size (int32 little-endian), a 16-bit code (unused here), and the
  first sample's predictor seed (int16 little-endian);
- the compressed bytes: LZW with fixed 10-bit codes packed most significant bit first, a table of
  the 256 single bytes plus entries 256..1022 (no clear code; the table stops growing when full);
- the decompressed bytes hold 16-bit values as two planes, all high bytes then all low bytes;
- the values are second-order prediction residuals: ``x[i] = 2 x[i-1] - x[i-2] - (v[i-1] - 64)``
  for ``i >= 2`` (the seed stands in for ``v[1] - 64`` at ``i = 2``), with ``x[0] = v[0]``,
  ``x[1] = v[1]``.

:func:`decode` stops a chunk as soon as it has produced the bytes the file declares for one lead, so
a hostile chunk cannot decompress to more than that (LZW can expand ~600x). The ``sierraecg``
package implements the same codec but decodes without an output bound; see the Philips reader.
"""

from __future__ import annotations

import numpy as np

_BITS = 10
_MAX_CODE = (1 << _BITS) - 2  # 1022: the last table entry; 1023 ends a chunk


class XliError(ValueError):
    """The XLI stream is malformed (the message says where)."""


def _codes(chunk: bytes) -> list[int]:
    bits = np.unpackbits(np.frombuffer(chunk, dtype=np.uint8))
    n = bits.size // _BITS
    weights = 1 << np.arange(_BITS - 1, -1, -1)
    return (bits[: n * _BITS].reshape(n, _BITS) @ weights).tolist()


def _lzw(chunk: bytes, limit: int) -> bytes:
    """LZW-decode ``chunk``; stop once ``limit`` bytes are out (the caller checks the count)."""
    table = [bytes([b]) for b in range(256)]
    out = bytearray()
    previous = b""
    for code in _codes(chunk):
        if code > _MAX_CODE:
            break
        if code < len(table):
            entry = table[code]
        elif code == len(table) and previous:  # the code being defined by this very step
            entry = previous + previous[:1]
        else:
            raise XliError(f"LZW code {code} refers to no table entry (table holds {len(table)})")
        if previous and len(table) <= _MAX_CODE:
            table.append(previous + entry[:1])
        out += entry
        if len(out) >= limit:
            break
        previous = entry
    return bytes(out)


def _residuals_to_samples(values: np.ndarray, seed: int) -> np.ndarray:
    """Undo the second-order prediction (vectorised: the prediction error is a second difference)."""
    v = values.astype(np.int64)
    if v.size < 3:
        return v
    # x[i] - x[i-1] = (x[i-1] - x[i-2]) - e[i], e[2] = seed, e[i] = v[i-1] - 64 for i >= 3
    e = np.concatenate(([seed], v[2:-1] - 64))
    steps = (v[1] - v[0]) - np.cumsum(e)
    return np.concatenate((v[:2], v[1] + np.cumsum(steps)))


def decode(data: bytes, n_leads: int, n_samples: int) -> np.ndarray:
    """``[n_leads, n_samples]`` int16 samples from XLI ``data``; :class:`XliError` if malformed.

    Only the first ``n_leads`` chunks are decoded (carts append chunks for unused channels). A chunk
    that does not decode to exactly ``n_samples`` values, missing chunks, or a sample outside 16 bits
    is an error: nothing is padded or cut silently.
    """
    need = 2 * n_samples
    out = np.empty((n_leads, n_samples), dtype=np.int16)
    offset = 0
    for lead in range(n_leads):
        if offset + 8 > len(data):
            raise XliError(f"chunk {lead + 1}: data ends after {offset} bytes, {n_leads} chunks expected")
        size = int.from_bytes(data[offset:offset + 4], "little", signed=True)
        seed = int.from_bytes(data[offset + 6:offset + 8], "little", signed=True)
        offset += 8
        if size <= 0 or offset + size > len(data):
            raise XliError(f"chunk {lead + 1}: declared size {size} bytes, {len(data) - offset} left")
        raw = _lzw(data[offset:offset + size], need + 1)
        offset += size
        if len(raw) != need:
            more = "more than" if len(raw) > need else f"{len(raw)} bytes,"
            raise XliError(f"chunk {lead + 1}: decompresses to {more} {need} expected ({n_samples} samples)")
        values = ((np.frombuffer(raw[:n_samples], np.uint8).astype(np.int32) << 8)
                  | np.frombuffer(raw[n_samples:], np.uint8)).astype(np.uint16).view(np.int16)
        samples = _residuals_to_samples(values, seed)
        if samples.min() < -32768 or samples.max() > 32767:
            raise XliError(f"chunk {lead + 1}: reconstructed samples leave the 16-bit range")
        out[lead] = samples
    return out
