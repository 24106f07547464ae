"""Building a cohort cache: records preprocessed in chunks, in parallel, resumably, with flat memory.

The key (:func:`cohort_key`) hashes record ids, file sizes and mtimes, each record's metadata (labels), the
preprocessing config, :data:`~lsemvae.data.preprocess.PIPELINE_VERSION` and the task definitions: change any
and a new cache is built.

A build works in ``<cache_dir>/.tmp-<name>-<key16>/``. Records are preprocessed in chunks (a process pool with
``workers > 1``); a worker writes its chunk's arrays to ``chunks/``, then the chunk's summary (ids, metadata,
skipped records): a chunk is done when its summary exists, so an interrupted build (Ctrl-C, a killed job) picks up
at the chunks not done. When all are done their rows are copied, chunk by chunk, into the cache's arrays,
``index.json`` is written and the folder is renamed into place: a cache directory is complete or absent. A lock
in the work folder makes concurrent builders of one cache (torchrun's ranks, two commands) wait for the first
one and open its result. The disk holds the chunks and the cache at once for a moment (twice the cache).

Memory: the builder holds the refs it was given, a few chunks in flight and per-chunk counts; arrays are written
with plain file writes, not memory maps (whose dirty pages count against the process), so memory is flat in the
number of records (benchmarks/accelerator.py measures it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from lsemvae.data.cache.store import ARRAYS, CACHE_FORMAT, INDEX_FILE, Cohort, json_safe, load_cohort, task_spec
from lsemvae.data.preprocess import PIPELINE_VERSION, Preprocessed, PreprocessConfig, preprocess
from lsemvae.data.readers import record_files
from lsemvae.data.sources import RecordRef
from lsemvae.data.tasks import Task, resolve_tasks
from lsemvae.errors import ConfigError, LSEMVAEError, RecordError
from lsemvae.fileio import atomic_open, fsync_dir
from lsemvae.leads import LEADS_12

STALE_BUILD_SECONDS = 6 * 3600
LOCK_FILE = ".lock"
#: The lists of ``index.json`` that grow with the records, written item by item from the chunk summaries.
_INDEX_LISTS = ("record_ids", "patient_ids", "paths", "meta", "skipped")


def cohort_key(refs: Sequence[RecordRef], tasks: dict[str, Task], cfg: PreprocessConfig) -> str:
    """sha256 over inputs that change the arrays: record ids and files (size, mtime), metadata,
    preprocessing config and version, task definitions."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "pipeline": PIPELINE_VERSION, "config": cfg.model_dump(mode="json"),
                         "tasks": [task_spec(t) for t in tasks.values()]}, sort_keys=True).encode())
    for ref in refs:
        files = []
        for f in record_files(ref.path):
            try:
                st = f.stat()
                files.append((f.name, st.st_size, st.st_mtime_ns))
            except OSError:
                files.append((f.name, None, None))
        h.update(json.dumps([ref.record_id, ref.patient_id, files, json_safe(ref.meta), ref.gain_correction],
                            sort_keys=True, default=str).encode())
    return h.hexdigest()


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
    """Preprocess ``refs`` into a cache (or reuse one with the same key, or finish an interrupted build) and open it.

    Bad records are skipped with their reason (``cohort.skipped``), never fatal; an empty result
    is an error. ``workers > 1`` preprocesses in a process pool (results kept in input order).
    """
    cfg = cfg or PreprocessConfig()
    task_map = resolve_tasks(tasks)
    _check_inputs(refs, name)
    key = cohort_key(refs, task_map, cfg)
    final = Path(cache_dir) / f"{name}-{key[:16]}"
    if not (final / INDEX_FILE).is_file():
        _Build(refs, task_map, cfg, final, key=key, name=name, workers=workers, progress=progress).run()
    return load_cohort(final, tasks=task_map.values())


def _check_inputs(refs: Sequence[RecordRef], name: str) -> None:
    if not refs:
        raise ConfigError(f"cohort {name!r}: no records to cache")
    counts = Counter(r.record_id for r in refs)
    if len(counts) != len(refs):
        dupes = sorted(i for i, n in counts.items() if n > 1)[:5]
        raise ConfigError(f"cohort {name!r}: duplicate record ids {dupes}")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"cohort name {name!r} must be a plain folder name")


# ---------------------------------------------------------------------------------------------
# One chunk of records (runs in a worker process)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Records ``refs`` (chunk ``number``) with their labels, computed by the parent (a task's rule may be code
    that cannot travel to a worker): per record ``{task: values}``, or the message of its bad label cell."""

    number: int
    refs: list[RecordRef]
    labels: list[dict[str, np.ndarray] | str]
    cfg: PreprocessConfig
    folder: Path


def _process(ref: RecordRef, cfg: PreprocessConfig) -> Preprocessed | dict:
    try:  # no lead required: a lead that fails QC is left out and noted, each consumer then applies its own leads
        return preprocess(ref.load(), cfg, leads=())
    except RecordError as err:
        return {"record": ref.record_id, "path": str(ref.path), "reason": err.reason, "message": err.detail}


def _run_chunk(chunk: _Chunk) -> dict:
    """Preprocess one chunk and write it (arrays, then summary); returns its counts."""
    rows: dict[str, list] = {a: [] for a in ARRAYS}
    labels: dict[str, list] = {}
    records, skipped, flags = [], [], Counter()
    for ref, y in zip(chunk.refs, chunk.labels):
        res = _process(ref, chunk.cfg)
        if isinstance(res, dict) or isinstance(y, str):  # a record that fails reading and a label: the reading
            skipped.append(res if isinstance(res, dict) else
                           {"record": ref.record_id, "path": str(ref.path), "reason": "label", "message": y})
            continue
        for arr, value in zip(ARRAYS, (res.signal, res.lead_mask, res.sample_mask, res.beat)):
            rows[arr].append(value)
        for t, value in y.items():
            labels.setdefault(t, []).append(value)
        extra = {"n_beats": res.n_beats, "heart_rate_bpm": res.heart_rate_bpm, "qc_flags": list(res.flags),
                 "lead_faults": dict(res.lead_faults)}
        gain = {"gain_correction": ref.gain_correction} if ref.gain_correction != 1 else {}
        records.append({"record_id": ref.record_id, "patient_id": ref.patient_id, "path": str(ref.path),
                        "meta": json_safe({**ref.meta, **gain, **extra})})
        flags.update(f.split(":", 1)[0] for f in res.flags)
    shapes = _row_shapes(chunk.cfg)
    arrays = {a: np.asarray(rows[a], dtype=dtype).reshape((-1, *shape)) for a, (dtype, shape) in shapes.items()}
    arrays |= {f"labels.{t}": np.asarray(v, dtype=np.float32) for t, v in labels.items()}
    with atomic_open(chunk.folder / f"{chunk.number:06d}.npz", "wb", private=False) as fh:
        np.savez(fh, **arrays)
    summary = {"records": records, "skipped": skipped, "flags": dict(flags)}
    with atomic_open(chunk.folder / f"{chunk.number:06d}.json", "w", private=False) as fh:
        json.dump(summary, fh, allow_nan=False)
    return _counts(summary)


def _row_shapes(cfg: PreprocessConfig) -> dict[str, tuple[type, tuple[int, ...]]]:
    return {"signals": (np.float32, (12, cfg.n_samples)), "lead_mask": (np.bool_, (12,)),
            "sample_mask": (np.bool_, (cfg.n_samples,)), "beats": (np.float32, (12, cfg.beat_samples))}


def _counts(summary: dict) -> dict:
    skipped = summary["skipped"]
    return {"kept": len(summary["records"]), "skipped": len(skipped), "flags": summary["flags"],
            "reasons": dict(Counter(s["reason"] for s in skipped)), "first_skip": skipped[0] if skipped else None}


# ---------------------------------------------------------------------------------------------
# The build: chunks, then one cache
# ---------------------------------------------------------------------------------------------


@dataclass
class _Build:
    refs: Sequence[RecordRef]
    tasks: dict[str, Task]
    cfg: PreprocessConfig
    final: Path
    key: str
    name: str
    workers: int
    progress: bool
    kept: list[int] = field(default_factory=list)  # records kept per chunk, in chunk order

    @property
    def work(self) -> Path:
        return self.final.parent / f".tmp-{self.name}-{self.key[:16]}"

    @property
    def chunks(self) -> Path:
        return self.work / "chunks"

    @property
    def chunk_size(self) -> int:
        """A function of the number of records alone, so a resumed build cuts the same chunks."""
        return min(256, max(16, math.ceil(len(self.refs) / 32)))

    def run(self) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(self.final.parent, self.name, keep=self.work.name)
        with _build_lock(self.work, self.final) as ours:
            if not ours:
                return  # another builder finished it while this one waited
            self.chunks.mkdir(exist_ok=True)
            started = time.perf_counter()
            totals, resumed = self._preprocess()
            self._require_records(totals)
            self._assemble()
            self._write_index(totals, resumed=resumed, elapsed=time.perf_counter() - started)
            self._publish()

    def _preprocess(self) -> tuple[dict, int]:
        """Every chunk done (those of an interrupted build read back); the totals over all chunks."""
        from tqdm import tqdm

        n_chunks = math.ceil(len(self.refs) / self.chunk_size)
        done = {c: _counts(json.loads((self.chunks / f"{c:06d}.json").read_text())) for c in range(n_chunks)
                if (self.chunks / f"{c:06d}.json").is_file() and (self.chunks / f"{c:06d}.npz").is_file()}
        resumed = sum(len(self._refs_of(c)) for c in done)
        bar = tqdm(total=len(self.refs), initial=resumed, desc=f"caching {self.name}", unit="rec",
                   disable=not self.progress)
        by_chunk = dict(done)
        skipped = sum(c["skipped"] for c in done.values())
        for number, counts in _chunk_results(self._jobs(n for n in range(n_chunks) if n not in done), self.workers):
            by_chunk[number] = counts
            skipped += counts["skipped"]
            bar.update(len(self._refs_of(number)))
            bar.set_postfix(skipped=skipped, refresh=False)
        bar.close()
        self.kept = [by_chunk[c]["kept"] for c in range(n_chunks)]
        totals = {"kept": sum(self.kept), "skipped": skipped, "flags": Counter(), "reasons": Counter(),
                  "first_skip": next((by_chunk[c]["first_skip"] for c in range(n_chunks) if by_chunk[c]["first_skip"]),
                                     None)}
        for counts in by_chunk.values():
            totals["flags"].update(counts["flags"])
            totals["reasons"].update(counts["reasons"])
        return totals, resumed

    def _refs_of(self, number: int) -> Sequence[RecordRef]:
        return self.refs[number * self.chunk_size:(number + 1) * self.chunk_size]

    def _jobs(self, numbers: Iterable[int]) -> Iterator[_Chunk]:
        for number in numbers:
            refs = list(self._refs_of(number))
            yield _Chunk(number, refs, [_labels(ref, self.tasks) for ref in refs], self.cfg, self.chunks)

    def _require_records(self, totals: dict) -> None:
        if totals["kept"] == 0:
            first = totals["first_skip"]
            shutil.rmtree(self.work, ignore_errors=True)  # nothing to resume: every record was read and refused
            raise RecordError(self.name, f"every record was rejected ({dict(totals['reasons'])}); first: "
                              f"{first['message']}", reason="empty-cohort")

    def _assemble(self) -> None:
        """The chunks' rows, in order, into one ``.npy`` per array (plain writes: memory stays flat)."""
        n = sum(self.kept)
        shapes = {a: (np.dtype(dtype), shape) for a, (dtype, shape) in _row_shapes(self.cfg).items()}
        shapes |= {f"labels.{t}": (np.dtype(np.float32), (task.n_outputs,)) for t, task in self.tasks.items()}
        with contextlib.ExitStack() as stack:
            files = {a: stack.enter_context(atomic_open(self.work / f"{a}.npy", "wb", private=False)) for a in shapes}
            for a, (dtype, shape) in shapes.items():
                np.lib.format.write_array_header_1_0(files[a], {"descr": np.lib.format.dtype_to_descr(dtype),
                                                                "fortran_order": False, "shape": (n, *shape)})
            for number in range(len(self.kept)):
                with np.load(self.chunks / f"{number:06d}.npz") as chunk:
                    for a, (dtype, shape) in shapes.items():
                        rows = chunk[a] if a in chunk.files else np.empty((0, *shape), dtype)
                        files[a].write(np.ascontiguousarray(rows, dtype=dtype).tobytes())

    def _write_index(self, totals: dict, *, resumed: int, elapsed: float) -> None:
        """``index.json``, its per-record lists streamed from the chunk summaries (one chunk in memory at a time)."""
        n_cap, n = len(self.refs), totals["kept"]
        head = {"format": CACHE_FORMAT, "key": self.key, "name": self.name, "pipeline_version": PIPELINE_VERSION,
                "config": self.cfg.model_dump(mode="json"), "tasks": [task_spec(t) for t in self.tasks.values()],
                "leads": list(LEADS_12)}
        stats = {"records_in": n_cap, "records_kept": n, "records_skipped": totals["skipped"],
                 "build_seconds": round(elapsed, 3), "records_per_second": round(n_cap / max(elapsed, 1e-9), 1),
                 "workers": self.workers, "qc_flags": dict(totals["flags"]), "records_resumed": resumed,
                 "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with contextlib.ExitStack() as stack:
            parts = {k: stack.enter_context(open(self.work / f"index.{k}.part", "w+", encoding="utf-8"))
                     for k in _INDEX_LISTS}
            for number in range(len(self.kept)):
                summary = json.loads((self.chunks / f"{number:06d}.json").read_text(encoding="utf-8"))
                items = {"record_ids": [r["record_id"] for r in summary["records"]],
                         "patient_ids": [r["patient_id"] for r in summary["records"]],
                         "paths": [r["path"] for r in summary["records"]],
                         "meta": [r["meta"] for r in summary["records"]], "skipped": summary["skipped"]}
                for k, values in items.items():
                    for value in values:
                        parts[k].write((", " if parts[k].tell() else "") + json.dumps(value, allow_nan=False))
            with atomic_open(self.work / INDEX_FILE, "w", private=False) as fh:
                fh.write(json.dumps(head)[:-1])
                for k in _INDEX_LISTS:
                    parts[k].seek(0)
                    fh.write(f', "{k}": [')
                    shutil.copyfileobj(parts[k], fh)
                    fh.write("]")
                fh.write(f', "stats": {json.dumps(stats)}}}')
        for k in _INDEX_LISTS:
            (self.work / f"index.{k}.part").unlink()

    def _publish(self) -> None:
        shutil.rmtree(self.chunks)
        try:
            os.rename(self.work, self.final)
        except OSError:
            if not (self.final / INDEX_FILE).is_file():  # not a builder elsewhere that won the race
                raise
            shutil.rmtree(self.work, ignore_errors=True)
            return
        (self.final / LOCK_FILE).unlink(missing_ok=True)
        fsync_dir(self.final.parent)


def _labels(ref: RecordRef, tasks: dict[str, Task]) -> dict[str, np.ndarray] | str:
    try:
        return {t: np.asarray(task(ref.meta), dtype=np.float32) for t, task in tasks.items()}
    except LSEMVAEError as err:  # a bad label cell: this record is skipped, named
        return str(err)


def _chunk_results(jobs: Iterator[_Chunk], workers: int) -> Iterator[tuple[int, dict]]:
    """``(chunk number, counts)`` as chunks finish; at most two chunks per worker in flight."""
    if workers <= 1:
        yield from ((job.number, _run_chunk(job)) for job in jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: dict = {}
        for job in jobs:
            pending[pool.submit(_run_chunk, job)] = job.number
            if len(pending) >= 2 * workers:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                yield from ((pending.pop(f), f.result()) for f in finished)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            yield from ((pending.pop(f), f.result()) for f in finished)


@contextlib.contextmanager
def _build_lock(work: Path, final: Path) -> Iterator[bool]:
    """Hold the build's lock (``work/.lock``); yields False when the cache appeared meanwhile (nothing to build)."""
    for _attempt in range(3):
        if (final / INDEX_FILE).is_file():
            yield False
            return
        work.mkdir(exist_ok=True)
        try:
            fd = os.open(work / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the folder was published between the two lines above
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if (final / INDEX_FILE).is_file():  # built by the holder this one waited for
                if work.is_dir():
                    shutil.rmtree(work, ignore_errors=True)
                yield False
            else:
                yield True
            return
        finally:
            os.close(fd)
    raise ConfigError(f"{work}: cannot take the cache build lock (the folder keeps disappearing)")


def _remove_stale_builds(cache_dir: Path, name: str, *, keep: str) -> None:
    """Delete work folders of other builds that stopped long ago (6 hours, not locked by a running build)."""
    now = time.time()
    for tmp in cache_dir.glob(f".tmp-{name}-*"):
        if tmp.name == keep or _locked(tmp):
            continue
        try:
            newest = max(p.stat().st_mtime for p in (tmp, tmp / "chunks") if p.exists())
            if now - newest > STALE_BUILD_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def _locked(work: Path) -> bool:
    try:
        fd = os.open(work / LOCK_FILE, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
