"""Size limits checked before any decoding, so one hostile or mistaken file cannot exhaust a site.

A resting ECG is 10 s: a few hundred kB in any format. The defaults leave room for stress tests
and long rhythm strips (over 30 minutes at 500 Hz) and refuse what would take gigabytes:

- :data:`MAX_FILE_MB`: bytes of one record file on disk, and of what a compressed record (deflated
  DICOM) may inflate to; raise with the environment variable ``LSEMVAE_MAX_FILE_MB``.
- :data:`MAX_SAMPLES_PER_LEAD`: samples one lead may declare; raise with
  ``LSEMVAE_MAX_SAMPLES_PER_LEAD``.

Readers compare what a file *declares* (header sample counts, WFDB byte sizes, XLI/SCP lengths)
with these limits before allocating anything, and refuse with reason ``too-large``.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsemvae.errors import ConfigError, RecordError

MAX_FILE_MB = 64
MAX_SAMPLES_PER_LEAD = 1_000_000
_FILE_ENV = "LSEMVAE_MAX_FILE_MB"
_SAMPLES_ENV = "LSEMVAE_MAX_SAMPLES_PER_LEAD"


def _setting(env: str, default: int) -> int:
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"environment variable {env}={raw!r}: expected a positive whole number")
    return value


def max_file_bytes() -> int:
    return _setting(_FILE_ENV, MAX_FILE_MB) * 1024 * 1024


def max_samples_per_lead() -> int:
    return _setting(_SAMPLES_ENV, MAX_SAMPLES_PER_LEAD)


def check_bytes(n_bytes: int, *, record: str | Path, what: str) -> None:
    """Refuse ``n_bytes`` (of a file, or of data a header declares) above the per-record limit."""
    limit = max_file_bytes()
    if n_bytes > limit:
        raise RecordError(record, f"{what} is {n_bytes / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit for "
                          f"one ECG record (raise it with {_FILE_ENV}=<MB> if the file is genuine)",
                          reason="too-large")


def check_file(path: str | Path, *, record: str | Path | None = None) -> None:
    """Refuse a file over the size limit before it is opened for parsing."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return  # the reader reports a missing or unreadable file with its own reason
    check_bytes(size, record=record or path, what=f"file {Path(path).name}")


def check_samples(n_samples: int, *, record: str | Path, what: str = "each lead") -> None:
    """Refuse a declared per-lead sample count above the limit, before decoding."""
    limit = max_samples_per_lead()
    if n_samples > limit:
        raise RecordError(record, f"{what} declares {n_samples:,} samples, over the limit of {limit:,} per lead "
                          f"(raise it with {_SAMPLES_ENV}=<samples> if the recording is genuine)",
                          reason="too-large")
