"""Writing files safely: atomically, and private to the user when they hold site data.

One place for two concerns every writer shares:

* **Atomic replacement.** Temp file in the target's directory, flush, ``fsync``, ``os.replace``,
  ``fsync`` of the directory: a crash leaves the old file or the new one, never half of one.
* **Private by default.** What a site writes (privacy ledger, state, logs, converted records with
  patient ids in their headers, prediction CSVs) is created ``0600`` in directories made ``0700``,
  whatever the umask: patient-derived files are not for the machine's other users. ``private=False``
  keeps the umask for outputs meant to be shared (benchmark results, reports of public data).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) as ``0700``; an existing directory is tightened to ``0700``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_DIR)
    return path


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, private: bool = True) -> Iterator[Any]:
    """Open a temp file beside ``path`` for writing; on success it replaces ``path`` atomically.

    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``. On any exception the temp file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    if private:
        private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if not private:  # mkstemp creates 0600: give shared outputs the umask's mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: str | bytes, *, private: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", private=private) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, *, private: bool = True, indent: int | None = 1) -> Path:
    """``obj`` as JSON (sorted keys, no NaN), replacing ``path`` atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False) + "\n", private=private)


def append_private(path: str | Path, text: str) -> None:
    """Append ``text`` to a private (0600) file, created if missing (logs the site keeps)."""
    path = Path(path)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def toml_value(value: Any) -> str:
    """One TOML value (str, bool, int, float, list of those, or a Path as a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is JSON-escaped text


def dump_toml(doc: dict[str, Any]) -> str:
    """A flat-or-nested dict as TOML: scalars first, then ``[table]`` and ``[[array of tables]]`` entries."""
    lines: list[str] = []
    _dump_table(doc, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)   # TOML's bare keys are ASCII

    nested = {k: v for k, v in table.items() if isinstance(v, dict)
              or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))}
    for k, v in table.items():
        if k not in nested and v is not None:
            lines.append(f"{key(k)} = {toml_value(v)}")
    for k, v in nested.items():
        name = ".".join(key(p) for p in [*prefix, k])
        for sub in (v if isinstance(v, list) else [v]):
            lines.append("")
            lines.append(f"[[{name}]]" if isinstance(v, list) else f"[{name}]")
            _dump_table(sub, [*prefix, k], lines)
