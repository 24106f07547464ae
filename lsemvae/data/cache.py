"""Preprocessed cohorts on disk as memory-mapped ``.npy`` arrays, built once and reused.

A cache directory ``<cache_dir>/<name>-<key16>/`` holds ``signals.npy [N,12,T]``,
``lead_mask.npy``, ``sample_mask.npy``, ``beats.npy [N,12,Tb]``, ``labels.<task>.npy`` and
``index.json`` (ids, metadata, skipped records with reasons, config, pipeline version, key).
The key hashes record ids, file sizes and mtimes, each record's metadata (labels), the
preprocessing config, :data:`PIPELINE_VERSION` and the task definitions: change any and a new
cache is built. Builds go to a temporary directory renamed into place, so a crash never leaves a
half cache; reloads open every array read-only with ``mmap_mode="r"`` (nothing is copied into
RAM until a sample is indexed).

One cache serves every lead set: a record with a lead that fails QC is kept with that lead masked
(``meta["lead_faults"]``); each consumer leaves out the records it cannot use with its own leads
(:func:`usable_rows`, and the splits' ``leads``), so a 6-lead model keeps what a 12-lead one skips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lsemvae.data.preprocess import PIPELINE_VERSION, Preprocessed, PreprocessConfig, describe_faults, preprocess
from lsemvae.data.readers import record_files
from lsemvae.data.sources import RecordRef
from lsemvae.data.tasks import TASKS, Task, column_task, get_task, resolve_tasks, task_name
from lsemvae.errors import ConfigError, LSEMVAEError, RecordError
from lsemvae.leads import LEADS_12, lead_index, resolve_lead_set

INDEX_FILE = "index.json"
CACHE_FORMAT = 2  # 2: records with failed leads are kept with those leads masked (meta "lead_faults")


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


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Metadata as strict JSON: NaN -> None, numpy scalars -> Python, tuples/sets -> lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = sorted(value) if isinstance(value, set) else value
        return [_json_safe(v) for v in items]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _task_spec(task: Task) -> dict:
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


def cohort_key(refs: Sequence[RecordRef], tasks: dict[str, Task], cfg: PreprocessConfig) -> str:
    """sha256 over inputs that change the arrays: record ids and files (size, mtime), metadata,
    preprocessing config and version, task definitions."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "pipeline": PIPELINE_VERSION, "config": cfg.model_dump(mode="json"),
                         "tasks": [_task_spec(t) for t in tasks.values()]}, sort_keys=True).encode())
    for ref in refs:
        files = []
        for f in record_files(ref.path):
            try:
                st = f.stat()
                files.append((f.name, st.st_size, st.st_mtime_ns))
            except OSError:
                files.append((f.name, None, None))
        h.update(json.dumps([ref.record_id, ref.patient_id, files, _json_safe(ref.meta), ref.gain_correction],
                            sort_keys=True, default=str).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


def _process(args: tuple[RecordRef, PreprocessConfig]) -> Preprocessed | dict:
    ref, cfg = args
    try:  # no lead required: a lead that fails QC is left out and noted, each consumer then applies its own leads
        return preprocess(ref.load(), cfg, leads=())
    except RecordError as err:
        return {"record": ref.record_id, "path": str(ref.path), "reason": err.reason, "message": err.detail}


def _results(refs: Sequence[RecordRef], cfg: PreprocessConfig, workers: int) -> Iterable[Preprocessed | dict]:
    jobs = ((r, cfg) for r in refs)
    if workers <= 1:
        yield from map(_process, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_process, jobs, chunksize=16)


def _open(path: Path, dtype, shape) -> np.memmap:
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _shrink(tmp: Path, name: str, arr: np.memmap, n: int, chunk: int = 1024) -> None:
    """Copy the first ``n`` rows of a capacity-sized array into its final file, chunk by chunk."""
    out = _open(tmp / f"{name}.npy", arr.dtype, (n,) + arr.shape[1:])
    for i in range(0, n, chunk):
        out[i:i + chunk] = arr[i:min(n, i + chunk)]
    out.flush()
    del out


STALE_BUILD_SECONDS = 6 * 3600


def _remove_stale_builds(cache_dir: Path, name: str) -> None:
    """Delete temporary build folders left by killed builds (builds take minutes: 6 hours means dead)."""
    now = time.time()
    for tmp in cache_dir.glob(f".tmp-{name}-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def build_cohort(
    refs: Sequence[RecordRef],
    tasks: Mapping[str, Task] | Iterable[Task | str],
    cfg: PreprocessConfig | None,
    cache_dir: str | Path,
    *,
    name: str,
    progress: bool = True,
    workers: int = 1,
) -> Cohort:
    """Preprocess ``refs`` into a cache (or reuse one with the same key) and open it.

    Bad records are skipped with their reason (``cohort.skipped``), never fatal; an empty result
    is an error. ``workers > 1`` preprocesses in a process pool (results kept in input order).
    """
    from tqdm import tqdm

    cfg = cfg or PreprocessConfig()
    task_map = resolve_tasks(tasks)
    if not refs:
        raise ConfigError(f"cohort {name!r}: no records to cache")
    ids = [r.record_id for r in refs]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ConfigError(f"cohort {name!r}: duplicate record ids {dupes}")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"cohort name {name!r} must be a plain folder name")
    key = cohort_key(refs, task_map, cfg)
    cache_dir = Path(cache_dir)
    final = cache_dir / f"{name}-{key[:16]}"
    if (final / INDEX_FILE).is_file():
        return load_cohort(final, tasks=task_map.values())

    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(cache_dir, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir))
    try:
        n_cap, T, Tb = len(refs), cfg.n_samples, cfg.beat_samples
        arrays = {
            "signals": _open(tmp / "signals.cap.npy", np.float32, (n_cap, 12, T)),
            "lead_mask": _open(tmp / "lead_mask.cap.npy", np.bool_, (n_cap, 12)),
            "sample_mask": _open(tmp / "sample_mask.cap.npy", np.bool_, (n_cap, T)),
            "beats": _open(tmp / "beats.cap.npy", np.float32, (n_cap, 12, Tb)),
        }
        labels = {t: np.full((n_cap, task.n_outputs), np.nan, dtype=np.float32) for t, task in task_map.items()}
        kept: list[RecordRef] = []
        skipped: list[dict] = []
        flags: Counter = Counter()
        extra_meta: list[dict] = []
        start = time.perf_counter()
        bar = tqdm(_results(refs, cfg, workers), total=n_cap, desc=f"caching {name}", unit="rec", disable=not progress)
        for ref, res in zip(refs, bar):
            if isinstance(res, dict):
                skipped.append(res)
                bar.set_postfix(skipped=len(skipped), refresh=False)
                continue
            i = len(kept)
            for t, task in task_map.items():
                try:
                    labels[t][i] = task(ref.meta)
                except LSEMVAEError as err:  # a bad label cell: skip this record, name it
                    skipped.append({"record": ref.record_id, "path": str(ref.path), "reason": "label",
                                    "message": str(err)})
                    break
            else:
                arrays["signals"][i] = res.signal
                arrays["lead_mask"][i] = res.lead_mask
                arrays["sample_mask"][i] = res.sample_mask
                arrays["beats"][i] = res.beat
                kept.append(ref)
                extra_meta.append({"n_beats": res.n_beats, "heart_rate_bpm": res.heart_rate_bpm,
                                   "qc_flags": list(res.flags), "lead_faults": dict(res.lead_faults)})
                flags.update(f.split(":", 1)[0] for f in res.flags)
        bar.close()
        elapsed = time.perf_counter() - start
        n = len(kept)
        if n == 0:
            reasons = Counter(s["reason"] for s in skipped)
            raise RecordError(name, f"every record was rejected ({dict(reasons)}); first: {skipped[0]['message']}",
                              reason="empty-cohort")
        for arr in arrays.values():
            arr.flush()
        if n < n_cap:
            for arr_name, arr in arrays.items():
                _shrink(tmp, arr_name, arr, n)
        arrays.clear()  # close the capacity-sized maps before renaming or deleting their files
        for arr_name in ("signals", "lead_mask", "sample_mask", "beats"):
            cap = tmp / f"{arr_name}.cap.npy"
            if n == n_cap:
                os.replace(cap, tmp / f"{arr_name}.npy")
            else:
                cap.unlink()
        for t, y in labels.items():
            np.save(tmp / f"labels.{t}.npy", y[:n])
        index = {
            "format": CACHE_FORMAT, "key": key, "name": name, "pipeline_version": PIPELINE_VERSION,
            "config": cfg.model_dump(mode="json"), "tasks": [_task_spec(t) for t in task_map.values()],
            "leads": list(LEADS_12),
            "record_ids": [r.record_id for r in kept], "patient_ids": [r.patient_id for r in kept],
            "paths": [str(r.path) for r in kept],
            "meta": [_json_safe({**r.meta, **({"gain_correction": r.gain_correction} if r.gain_correction != 1 else {}),
                                 **m}) for r, m in zip(kept, extra_meta)],
            "skipped": skipped,
            "stats": {"records_in": n_cap, "records_kept": n, "records_skipped": len(skipped),
                      "build_seconds": round(elapsed, 3), "records_per_second": round(n_cap / max(elapsed, 1e-9), 1),
                      "workers": workers, "qc_flags": dict(flags), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime())},
        }
        with open(tmp / INDEX_FILE, "w", encoding="utf-8") as fh:
            json.dump(index, fh, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / INDEX_FILE).is_file():  # not a concurrent build that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_cohort(final, tasks=task_map.values())


def load_cohort(path: str | Path, *, tasks: Iterable[Task] | None = None) -> Cohort:
    """Open a cache directory read-only (memmaps). ``tasks`` supplies custom Task objects whose
    rules cannot be recovered by name; built-in and column tasks are resolved automatically."""
    path = Path(path)
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
    given = {t.name: t for t in (tasks or ())}
    task_map: dict[str, Task] = {}
    for spec in index["tasks"]:
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
        how = [f"`--tasks {n}` (labels from columns {', '.join(TASKS[n].classes)}, one 0/1 column per class, or "
               f"bound to yours: `--tasks {n}={'+'.join(c.lower() for c in TASKS[n].classes)}`)"
               if n in TASKS and TASKS[n].kind != "binary" else f"`--tasks {n}` (column {n!r})" if n in TASKS
               else f"`--tasks column:{n}`" for n in absent]
        raise ConfigError(f"cohort {cohort.path} has no labels for {absent or 'any task'} (it has "
                          f"{list(cohort.tasks)}): prepare it again with `lsemvae data prepare ...` and "
                          + (", ".join(how) if how else "`--tasks column:<label column>` (comma-separated)"))
    return {n: cohort.tasks[n] for n in wanted}


# ---------------------------------------------------------------------------------------------
# Torch dataset
# ---------------------------------------------------------------------------------------------


class CohortDataset:
    """``torch.utils.data.Dataset`` over cohort rows ``indices``.

    Item: ``x`` [12, T], ``lead_mask`` [12], ``sample_mask`` [T], ``beat`` [12, Tb], ``beat_mask``
    [12], ``y`` {task: [n_out]}. ``leads`` restricts the input (e.g. ``"6L"``): other leads are
    zeroed in ``x`` and False in ``lead_mask``. ``beat`` keeps every recorded lead and
    ``beat_mask`` says which (the record's own lead mask), so a model can be scored on
    reconstructing leads its input lacks. ``tasks`` selects label keys (default: all).
    """

    def __init__(self, cohort: Cohort, indices: Sequence[int] | np.ndarray | None = None, *,
                 leads: str | Sequence[str] = LEADS_12, tasks: Sequence[str] | None = None):
        self.cohort = cohort
        self.indices = np.arange(len(cohort)) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(cohort)):
            raise ConfigError(f"indices out of range for a cohort of {len(cohort)} records")
        self.leads = resolve_lead_set(leads)
        self.requested = np.zeros(12, dtype=bool)
        self.requested[[lead_index(l) for l in self.leads]] = True
        self.tasks = list(tasks) if tasks is not None else list(cohort.labels)
        unknown = [t for t in self.tasks if t not in cohort.labels]
        if unknown:
            raise ConfigError(f"tasks {unknown} not in cohort {cohort.path.name} (has {list(cohort.labels)})")

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, item: int) -> dict:
        import torch

        i = int(self.indices[item])
        recorded = np.array(self.cohort.lead_mask[i])
        mask = recorded & self.requested
        x = np.array(self.cohort.signals[i])  # copy one row out of the memmap
        x[~mask] = 0.0
        return {
            "x": torch.from_numpy(x),
            "lead_mask": torch.from_numpy(mask),
            "sample_mask": torch.from_numpy(np.array(self.cohort.sample_mask[i])),
            "beat": torch.from_numpy(np.array(self.cohort.beats[i])),
            "beat_mask": torch.from_numpy(recorded),
            "y": {t: torch.from_numpy(np.array(self.cohort.labels[t][i])) for t in self.tasks},
        }


# ---------------------------------------------------------------------------------------------
# Records a model can use: QC applies to the leads it reads
# ---------------------------------------------------------------------------------------------


def _faults_among(cohort: Cohort, i: int, wanted: set[str]) -> dict[str, tuple[str, str]]:
    return {lead: tuple(f) for lead, f in (cohort.meta[i].get("lead_faults") or {}).items() if lead in wanted}


def lead_fault_skips(cohort: Cohort, leads: str | Sequence[str] = LEADS_12,
                     rows: Sequence[int] | np.ndarray | None = None) -> list[dict]:
    """Records (among ``rows``, default all) with a lead that failed QC among ``leads``, as ``cohort.skipped``
    lists them (``record``, ``path``, ``reason``, ``message``). A failed lead outside ``leads`` is not a reason:
    the cache keeps the record with that lead masked, so a 6-lead model is not refused for a flat V1."""
    names = resolve_lead_set(leads)
    out = []
    for i in range(len(cohort)) if rows is None else map(int, rows):
        faults = _faults_among(cohort, i, set(names))
        if faults:
            reason, message = describe_faults(faults, cohort.config)
            out.append({"record": cohort.record_ids[i], "path": cohort.paths[i], "reason": reason,
                        "message": f"{message} (leads read: {' '.join(names)})"})
    return out


def usable_rows(cohort: Cohort, leads: str | Sequence[str] = LEADS_12,
                rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """``rows`` (default all) without the records that have a lead failing QC among ``leads``."""
    rows = np.arange(len(cohort)) if rows is None else np.asarray(rows, dtype=np.int64)
    wanted = set(resolve_lead_set(leads))
    return rows[[not _faults_among(cohort, int(i), wanted) for i in rows]] if rows.size else rows


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def ptbxl_folds(cohort: Cohort, *, leads: str | Sequence[str] = LEADS_12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official PTB-XL patient-disjoint split: ``strat_fold`` 1-8 train, 9 validation, 10 test.

    Only records usable with ``leads`` (:func:`usable_rows`; default: every lead, strict)."""
    folds = np.array([m.get("strat_fold") or 0 for m in cohort.meta])
    if (folds == 0).any():
        missing = [cohort.record_ids[i] for i in np.flatnonzero(folds == 0)[:5]]
        raise ConfigError(f"records without strat_fold (not PTB-XL?): {missing}; use patient_split")
    rows = usable_rows(cohort, leads)
    return rows[folds[rows] <= 8], rows[folds[rows] == 9], rows[folds[rows] == 10]


def patient_split(cohort: Cohort, val_fraction: float = 0.1, seed: int = 0, *, test_fraction: float = 0.0,
                  leads: str | Sequence[str] = LEADS_12,
                  rows: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random split by patient (no patient in two parts): ``(train, val, test)`` row indices.

    Fractions are of patients; ``test`` is empty when ``test_fraction`` is 0. Only ``rows``
    (default all) usable with ``leads`` (:func:`usable_rows`; default: every lead, strict).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction {val_fraction} + test_fraction {test_fraction} must be in [0, 1)")
    rows = usable_rows(cohort, leads, rows)
    patients = np.array(sorted({cohort.patient_ids[i] for i in rows}))
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_val = int(round(val_fraction * len(patients)))
    n_test = int(round(test_fraction * len(patients)))
    part = {p: 1 for p in patients[:n_val]} | {p: 2 for p in patients[n_val:n_val + n_test]}
    which = np.array([part.get(cohort.patient_ids[i], 0) for i in rows], dtype=int)
    return rows[which == 0], rows[which == 1], rows[which == 2]


PTBXL_FOLDS, PATIENT_SPLIT = "ptbxl-folds", "patient"


def has_ptbxl_folds(cohort: Cohort) -> bool:
    """Every record carries PTB-XL's ``strat_fold`` (a site's text column of that name does not count)."""
    return all(isinstance(m.get("strat_fold"), int) for m in cohort.meta)


def cohort_split(cohort: Cohort, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                 recorded: Mapping[str, Any] | None = None,
                 leads: str | Sequence[str] = LEADS_12) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(train, val, test, record)`` row indices of ``cohort`` and a description of the split.

    Cohorts where every record has a PTB-XL ``strat_fold`` keep the official folds (1-8 / 9 / 10);
    any other cohort gets :func:`patient_split` with these fractions and ``seed``. ``record``
    (method, fractions, seed, the cohort's cache key, validation and test record ids) goes into a
    checkpoint's provenance; given back as ``recorded``, it yields the same parts again: PTB-XL folds
    from any PTB-XL cache (the folds are the records' own), a patient split only from the cohort it
    was drawn from (same cache key), by its record ids. Every part holds only records usable with
    ``leads`` (:func:`usable_rows`: the leads a model reads; default every lead).
    """
    if recorded is None:
        method = PTBXL_FOLDS if has_ptbxl_folds(cohort) else PATIENT_SPLIT
    else:
        method = recorded["method"]
        # PTB-XL's folds are the records' own (any PTB-XL cache has them); a patient split exists only in its cohort
        if not (has_ptbxl_folds(cohort) if method == PTBXL_FOLDS else recorded["cache_key"] == cohort.key):
            origin = "PTB-XL folds" if method == PTBXL_FOLDS else f"cache key {recorded['cache_key'][:16]}"
            raise ConfigError(f"cohort {cohort.path} (cache key {cohort.key[:16]}) is not the cohort the split was "
                              f"recorded on ({origin}): its validation and test records are not defined here")
    if method == PTBXL_FOLDS:
        train, val, test = ptbxl_folds(cohort, leads=leads)
        params: dict[str, Any] = {"method": PTBXL_FOLDS, "val_fraction": None, "test_fraction": None, "seed": None}
    elif recorded is not None:
        row = {rid: i for i, rid in enumerate(cohort.record_ids)}
        val, test = (usable_rows(cohort, leads, [row[r] for r in recorded[k]]) for k in ("val_ids", "test_ids"))
        train = np.setdiff1d(usable_rows(cohort, leads), np.concatenate([val, test]))
        return train, val, test, dict(recorded)
    else:
        train, val, test = patient_split(cohort, val_fraction, seed, test_fraction=test_fraction, leads=leads)
        empty = [part for part, rows in (("training", train), ("validation", val), ("test", test)) if not len(rows)]
        if empty:
            raise ConfigError(f"cohort {cohort.path}: {len(set(cohort.patient_ids))} patients are too few for a "
                              f"validation share of {val_fraction:g} and a test share of {test_fraction:g} (the "
                              f"{' and '.join(empty)} part would be empty): add records or change --val-fraction / "
                              "--test-fraction")
        params = {"method": PATIENT_SPLIT, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    record = {**params, "cache_key": cohort.key, "val_ids": [cohort.record_ids[i] for i in val],
              "test_ids": [cohort.record_ids[i] for i in test]}
    return train, val, test, record


def label_fraction(cohort: Cohort, indices: Sequence[int] | np.ndarray, fraction: float, *,
                   task: str | None = None, seed: int = 0) -> np.ndarray:
    """A seeded, stratified subset keeping ``fraction`` of ``indices`` (e.g. 10% of training labels).

    Strata are the label patterns of ``task`` (default: the cohort's first task; NaN is its own
    value); each stratum keeps its share, rounded by largest remainder so the total is exact.
    Returns sorted indices.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
    task = task or next(iter(cohort.labels))
    y = np.asarray(cohort.labels[task])[indices]
    keys = [tuple(np.where(np.isnan(row), -1, row).tolist()) for row in y]
    strata: dict[tuple, list[int]] = {}
    for pos, k in enumerate(keys):
        strata.setdefault(k, []).append(pos)
    target = int(round(fraction * len(indices)))
    order = sorted(strata)
    exact = np.array([fraction * len(strata[k]) for k in order])
    take = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - take), kind="stable")[: target - int(take.sum())]:
        take[j] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k, n in zip(order, take):
        members = np.array(strata[k])
        chosen.extend(members[rng.permutation(len(members))[:n]].tolist())
    return np.sort(indices[chosen])


def group_indices(cohort: Cohort, key: str) -> dict[Any, np.ndarray]:
    """Row indices per value of ``meta[key]`` (e.g. ``"site"``, ``"device"``): natural federated partitions."""
    groups: dict[Any, list[int]] = {}
    for i, m in enumerate(cohort.meta):
        groups.setdefault(m.get(key), []).append(i)
    return {k: np.asarray(v) for k, v in groups.items()}
