"""Wire format of the model arrays exchanged between ServerApp and ClientApp.

**One buffer per message.** :func:`pack` lays every array end to end in one ``uint8`` buffer and
describes it by a layout (name, dtype, shape per array, in order); :func:`unpack` checks the buffer
against the layout (dtype agreed for the run, exact byte count, unique names) before anything is
read. Flower stores and transfers every array of a message as an object of its own, so one buffer
instead of hundreds of arrays saves as many object round trips.

The run config key ``update-dtype`` ("float32" default, or "float16") says in which dtype the
floating arrays travel, in both directions: the sender casts with :func:`encode` (inside :func:`pack`),
the receiver checks and casts back to float32 in :func:`unpack` before any use. Training, aggregation
(float64 accumulation) and the server state stay in float32/float64; only the bytes on the wire shrink. float16 keeps ~3 significant digits (relative rounding error
<= 2**-11) and values up to 65504, ample for network weights; an array float16 cannot hold is
refused rather than sent as inf.

A receiver accepts only the dtype the run agreed on: float16 arrays arriving while the config
says float32 (or the reverse) are a malformed message.

**The frozen base travels once.** When sites train only the fusion gate and heads (the federated
probe, the default under DP), the encoders never change during a run. The server then sends them to
a site once, with their :func:`digest`; the site keeps that copy on its own disk and later messages
carry only the trained groups plus the digest (about 18 kB instead of 2.1 MB for the compact model).
"""

from __future__ import annotations

import hashlib
from typing import Literal, Mapping

import numpy as np
from pydantic import Field

from lsemvae.config import StrictModel
from lsemvae.errors import LSEMVAEError

UpdateDtype = Literal["float32", "float16"]
UPDATE_DTYPES: tuple[str, ...] = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)
MAX_NDIM = 6


class ArraySpec(StrictModel):
    """One array of a packed buffer: its state_dict key, wire dtype and shape."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.]{1,200}$")
    dtype: UpdateDtype
    shape: tuple[int, ...] = Field(max_length=MAX_NDIM)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class CodecError(LSEMVAEError, ValueError):
    """Arrays that do not match the agreed wire dtype, or that float16 cannot represent."""


def check_update_dtype(dtype: str) -> UpdateDtype:
    if dtype not in UPDATE_DTYPES:
        raise CodecError(f"update-dtype must be one of {', '.join(UPDATE_DTYPES)} (got {dtype!r})")
    return dtype  # type: ignore[return-value]


def encode(arrays: Mapping[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Floating arrays cast to the wire dtype (contiguous); other dtypes pass unchanged."""
    wire = np.dtype(check_update_dtype(dtype))
    out = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and value.dtype != wire:
            if wire == np.float16 and value.size and np.nanmax(np.abs(value)) > FLOAT16_MAX:
                raise CodecError(f"parameter {key!r} holds values beyond float16's range (±{FLOAT16_MAX:g}); "
                                 "run with update-dtype = \"float32\"")
            value = value.astype(wire)
        out[key] = np.ascontiguousarray(value)
    return out


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of named arrays as they travel (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def pack(arrays: Mapping[str, np.ndarray], dtype: str) -> tuple[np.ndarray, list[ArraySpec]]:
    """All arrays (cast to the wire dtype, in name order) in one ``uint8`` buffer, and its layout."""
    wire = encode({k: arrays[k] for k in sorted(arrays)}, dtype)
    layout = [ArraySpec(name=k, dtype=str(v.dtype), shape=tuple(int(n) for n in v.shape)) for k, v in wire.items()]
    buffer = np.concatenate([v.reshape(-1).view(np.uint8) for v in wire.values()]) if wire else np.zeros(0, np.uint8)
    return buffer, layout


def unpack(buffer: np.ndarray, layout: list[ArraySpec], dtype: str, *, sender: str) -> dict[str, np.ndarray]:
    """The arrays of a packed buffer, as float32, after checking the buffer against its layout."""
    wire = np.dtype(check_update_dtype(dtype))
    buffer = np.asarray(buffer)
    if buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise CodecError(f"{sender} sent a packed buffer of dtype {buffer.dtype} and {buffer.ndim} dimension(s); "
                         "expected one uint8 vector")
    names = [spec.name for spec in layout]
    if len(set(names)) != len(names):
        raise CodecError(f"{sender} sent a layout that names an array twice")
    wrong = [f"{s.name} ({s.dtype})" for s in layout if np.dtype(s.dtype) != wire]
    if wrong:
        raise CodecError(f"{sender} sent arrays that are not {wire} as the run's update-dtype says: "
                         f"{', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    expected = sum(spec.nbytes for spec in layout)
    if expected != buffer.size:
        raise CodecError(f"{sender} sent {buffer.size} bytes but its layout describes {expected}")
    out, start = {}, 0
    for spec in layout:
        chunk = buffer[start:start + spec.nbytes]
        out[spec.name] = chunk.view(wire).reshape(spec.shape).astype(np.float32)
        start += spec.nbytes
    return out
