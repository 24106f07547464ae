"""Wire format of the model arrays exchanged between ServerApp and ClientApp.

The run config key ``update-dtype`` ("float32" default, or "float16") says in which dtype the
floating arrays travel, in both directions: the sender casts with :func:`encode`, the receiver
checks and casts back to float32 with :func:`decode` before any use. Training, aggregation
(float64 accumulation, server/aggregation.py) and the server state stay in float32/float64; only
the bytes on the wire shrink. float16 keeps ~3 significant digits (relative rounding error
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

from lsemvae.errors import LSEMVAEError

UpdateDtype = Literal["float32", "float16"]
UPDATE_DTYPES: tuple[str, ...] = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)


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


def decode(arrays: Mapping[str, np.ndarray], dtype: str, *, sender: str) -> dict[str, np.ndarray]:
    """Arrays received in the agreed wire dtype, as float32; any other floating dtype is refused.

    ``sender`` names who sent them ("the server", "site x") for the error message.
    """
    wire = np.dtype(check_update_dtype(dtype))
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    wrong = [f"{k} ({v.dtype})" for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating) and v.dtype != wire]
    if wrong:
        raise CodecError(f"{sender} sent arrays that are not {wire} as the run's update-dtype says: "
                         f"{', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in arrays.items()}


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of named arrays as they travel (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()
