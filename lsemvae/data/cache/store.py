"""What a cache directory holds, and opening it: memory maps for whole-array work, row streaming for training.

``<cache_dir>/<name>-<key16>/`` holds ``signals.npy [N,12,T]``, ``lead_mask.npy``, ``sample_mask.npy``,
``beats.npy [N,12,Tb]``, ``labels.<task>.npy`` and ``index.json`` (ids, metadata, skipped records with reasons,
config, pipeline version, key). :func:`load_cohort` opens every array read-only with ``mmap_mode="r"``;
:class:`RowReader` reads single rows with ``pread`` instead, so a process that streams a cohort of any size
through training keeps flat memory (the kernel's page cache holds what is hot, not the process).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lsemvae.data.preprocess import PIPELINE_VERSION, PreprocessConfig
from lsemvae.data.tasks import TASKS, Task, column_task, get_task, task_name
from lsemvae.errors import ConfigError, LSEMVAEError

INDEX_FILE = "index.json"
CACHE_FORMAT = 2  # 2: records with failed leads are kept with those leads masked (meta "lead_faults")
#: The per-record arrays of a cache, each ``<name>.npy`` with one row per record (labels come per task).
ARRAYS = ("signals", "lead_mask", "sample_mask", "beats")


class CacheError(LSEMVAEError):
    """A cache directory is missing, incomplete or inconsistent. Delete it to rebuild."""


@dataclass
class Cohort:
    """A preprocessed cohort; arrays are read-only memmaps (see module docstring)."""

    signals: np.ndarray  # float32 [N, 12, T]
    lead_mask: np.ndarray  # bool [N, 12]
    sample_mask: np.ndarray  # bool [N, T]
    beats: np.ndarray  # float32 [N, 12, Tb]
    labels: dict[str, np.ndarray]  # task -> float32 [N, n_out], NaN = missing
    record_ids: list[str]
    patient_ids: list[str]
    meta: list[dict]
    skipped: list[dict]  # {"record", "reason", "message"}
    key: str
    config: PreprocessConfig
    tasks: dict[str, Task]
    path: Path
    stats: dict = field(default_factory=dict)  # build time, records/s, flags
    paths: list[str] = field(default_factory=list)  # each record's source file, as indexed

    def __len__(self) -> int:
        return len(self.record_ids)

    def __reduce__(self):
        # Pickling (DataLoader workers under spawn, process pools, Ray actors) must not copy the
        # arrays: the cohort travels as its path and is reopened read-only on the other side.
        # Custom task rules (code) cannot travel this way; load_cohort then says so.
        return (load_cohort, (self.path,))

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped).most_common())


def json_safe(value: Any) -> Any:
    """Metadata as strict JSON: NaN -> None, numpy scalars -> Python, tuples/sets -> lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = sorted(value) if isinstance(value, set) else value
        return [json_safe(v) for v in items]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def task_spec(task: Task) -> dict:
    """How to get the task back when the cache is opened by path alone."""
    if TASKS.get(task.name) is task:
        spec = task.name
    elif task.columns is not None:
        spec = f"{task.name}={'+'.join(task.columns)}"
    elif task.column is not None:
        spec = f"column:{task.column}"
    else:
        spec = "custom"  # its rule is code: load_cohort(path, tasks=[...]) must supply it
    return {"name": task.name, "spec": spec, "kind": task.kind, "classes": list(task.classes),
            "description": task.description}


def _read_index(path: Path) -> dict:
    import json

    index_path = path / INDEX_FILE
    if not index_path.is_file():
        # a common slip: the --cache-dir folder instead of one cohort inside it
        inside = sorted(p.parent.name for p in path.glob(f"*/{INDEX_FILE}")) if path.is_dir() else []
        hint = (f"it holds the prepared cohort(s) {', '.join(inside[:5])}: pass one of them, e.g. {path / inside[0]}"
                if inside else "build it with `lsemvae data prepare`")
        raise CacheError(f"{path}: not a cohort cache (no {INDEX_FILE}); {hint}")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{index_path}: corrupt index ({err}); delete {path} to rebuild") from None
    if index.get("format") != CACHE_FORMAT or index.get("pipeline_version") != PIPELINE_VERSION:
        raise CacheError(f"{path}: built by cache format {index.get('format')} / pipeline "
                         f"{index.get('pipeline_version')}, this code uses {CACHE_FORMAT} / {PIPELINE_VERSION}; "
                         "rebuild it")
    return index


def _index_tasks(path: Path, specs: list[dict], given: dict[str, Task]) -> dict[str, Task]:
    """The tasks an index lists: supplied ones first, then built-in, column and bound tasks by their spec."""
    task_map: dict[str, Task] = {}
    for spec in specs:
        nm = spec["name"]
        if nm in given:
            task_map[nm] = given[nm]
        elif spec["spec"] == nm and nm in TASKS:
            task_map[nm] = TASKS[nm]
        elif spec["spec"].startswith("column:"):
            task_map[nm] = dataclasses.replace(column_task(spec["spec"][len("column:"):]), name=nm)
        elif "=" in spec["spec"]:
            task_map[nm] = get_task(spec["spec"])
        else:
            raise CacheError(f"{path}: task {nm!r} is a custom rule; pass it: load_cohort(path, tasks=[...])")
    return task_map


def load_cohort(path: str | Path, *, tasks: Iterable[Task] | None = None) -> Cohort:
    """Open a cache directory read-only (memmaps). ``tasks`` supplies custom Task objects whose
    rules cannot be recovered by name; built-in and column tasks are resolved automatically."""
    path = Path(path)
    index = _read_index(path)
    task_map = _index_tasks(path, index["tasks"], {t.name: t for t in (tasks or ())})

    def arr(file: str) -> np.ndarray:
        try:
            return np.load(path / file, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CacheError(f"{path / file}: cannot open ({err}); delete {path} to rebuild") from None

    n = len(index["record_ids"])
    cohort = Cohort(
        signals=arr("signals.npy"), lead_mask=arr("lead_mask.npy"), sample_mask=arr("sample_mask.npy"),
        beats=arr("beats.npy"), labels={t: arr(f"labels.{t}.npy") for t in task_map},
        record_ids=index["record_ids"], patient_ids=index["patient_ids"], meta=index["meta"],
        skipped=index["skipped"], key=index["key"], config=PreprocessConfig(**index["config"]),
        tasks=task_map, path=path, stats=index.get("stats", {}), paths=index["paths"],
    )
    for nm, a in [("signals", cohort.signals), ("beats", cohort.beats), ("lead_mask", cohort.lead_mask),
                  ("sample_mask", cohort.sample_mask), *cohort.labels.items()]:
        if a.shape[0] != n:
            raise CacheError(f"{path}: {nm} has {a.shape[0]} rows, index lists {n} records; delete to rebuild")
    return cohort


def matching_cohort(cohort: Cohort, pcfg: PreprocessConfig, fix: str | None = None) -> Cohort:
    """``cohort``, refused when preprocessed at another rate, length or amplitude than a model reads (``pcfg``).

    ``fix`` says what to do instead (default: the ``lsemvae data prepare`` options that match).
    """
    have = cohort.config
    if (have.fs, have.n_samples, have.amplitude) != (pcfg.fs, pcfg.n_samples, pcfg.amplitude):
        fix = fix or (f"prepare it again with `lsemvae data prepare ... --fs {pcfg.fs} --seconds {pcfg.seconds:g} "
                      f"--amplitude {pcfg.amplitude}`")
        raise ConfigError(f"{cohort.path}: cached at {have.fs} Hz x {have.n_samples} samples ({have.amplitude}), the "
                          f"model expects {pcfg.fs} Hz x {pcfg.n_samples} ({pcfg.amplitude}); {fix}")
    return cohort


def cohort_tasks(cohort: Cohort, names: Iterable[str] | None = None) -> dict[str, Task]:
    """The cohort's tasks called ``names`` (``mpap_gt20`` or ``column:mpap_gt20``; default: all it has labels for)."""
    wanted = list(dict.fromkeys(task_name(n) for n in names)) if names else list(cohort.tasks)
    absent = [n for n in wanted if n not in cohort.tasks]
    if absent or not wanted:
        raise ConfigError(f"cohort {cohort.path} has no labels for {absent or 'any task'} (it has "
                          f"{list(cohort.tasks)}): prepare it again with `lsemvae data prepare ...` and "
                          + (", ".join(_how_to_label(n) for n in absent) if absent
                             else "`--tasks column:<label column>` (comma-separated)"))
    return {n: cohort.tasks[n] for n in wanted}


def _how_to_label(name: str) -> str:
    if name not in TASKS:
        return f"`--tasks column:{name}`"
    task = TASKS[name]
    if task.kind == "binary":
        return f"`--tasks {name}` (column {name!r})"
    return (f"`--tasks {name}` (labels from columns {', '.join(task.classes)}, one 0/1 column per class, or bound "
            f"to yours: `--tasks {name}={'+'.join(c.lower() for c in task.classes)}`)")


class RowReader:
    """Rows of one ``.npy`` array read with ``pread`` into fresh writable arrays, no memory map: reading every row
    of a cohort of any size leaves the process' memory where it was. Safe across ``fork`` (``pread`` keeps no file
    position); a pickled reader reopens its file on the other side."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran or not shape:
            raise CacheError(f"{self.path}: not a C-ordered array of rows; delete its cache to rebuild")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"row {i} of {self.path} ({self.shape[0]} rows)")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty(self.shape[1:], dtype=self.dtype)
        got = os.preadv(self._fd, [memoryview(out).cast("B")], self.offset + i * self.row_bytes)
        if got != self.row_bytes:
            raise CacheError(f"{self.path}: row {i} is truncated ({got} of {self.row_bytes} bytes); delete its "
                             "cache to rebuild")
        return out
