"""The cache at scale, on real PTB-XL records: a killed build resumes, concurrent builders build once,
rows stream without a memory map."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lsemvae.data.cache import RowReader, build_cohort
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.sources import ptbxl_index

BUILD = """
import json, sys, time
from lsemvae.data.cache import build_cohort
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.sources import ptbxl_index
refs = ptbxl_index(sys.argv[1])[:int(sys.argv[3])]
t0 = time.process_time()
c = build_cohort(refs, ["right_heart"], PreprocessConfig(), sys.argv[2], name="p", progress=False)
print(json.dumps({"cpu": time.process_time() - t0, "path": str(c.path), "stats": c.stats}))
"""


def _start(ptbxl_root: Path, cache: Path, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILD, str(ptbxl_root), str(cache), str(n)],
                            stdout=subprocess.PIPE, text=True)


def test_a_killed_build_resumes_where_it_stopped_and_gives_the_same_cache(ptbxl_root, tmp_path):
    n = 160  # chunks of 16 records
    proc = _start(ptbxl_root, tmp_path / "cache", n)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache").glob(".tmp-p-*/chunks/*.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "the build ended before one chunk was seen"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no cleanup runs: as a killed job or a power cut
    proc.wait()
    done = len(list((tmp_path / "cache").glob(".tmp-p-*/chunks/*.json")))
    assert 1 <= done < 10 and not list((tmp_path / "cache").glob("p-*"))

    refs = ptbxl_index(ptbxl_root)[:n]
    resumed = build_cohort(refs, ["right_heart"], PreprocessConfig(), tmp_path / "cache", name="p", progress=False)
    assert resumed.stats["records_resumed"] == 16 * done and len(resumed) == n
    fresh = build_cohort(refs, ["right_heart"], PreprocessConfig(), tmp_path / "fresh", name="p", progress=False)
    assert fresh.stats["records_resumed"] == 0 and fresh.key == resumed.key
    for a in ("signals", "lead_mask", "sample_mask", "beats"):
        assert np.asarray(getattr(fresh, a)).tobytes() == np.asarray(getattr(resumed, a)).tobytes(), a
    assert fresh.labels["right_heart"].tobytes() == resumed.labels["right_heart"].tobytes()
    assert (fresh.record_ids, fresh.meta, fresh.skipped) == (resumed.record_ids, resumed.meta, resumed.skipped)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [resumed.path.name]  # no work folder, no lock left


def test_concurrent_builders_of_one_cache_build_it_once(ptbxl_root, tmp_path):
    """torchrun's ranks all ask for the cache: one builds, the others wait on the lock and open its result."""
    procs = [_start(ptbxl_root, tmp_path / "cache", 96) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=180)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert results[0]["path"] == results[1]["path"] and results[0]["stats"] == results[1]["stats"]
    cpu = sorted(r["cpu"] for r in results)
    assert cpu[0] < 0.3 * cpu[1], f"both processes preprocessed the records (CPU seconds {cpu})"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(results[0]["path"]).name]


def test_rows_stream_with_pread_equal_to_the_memory_map(ptbxl_root, tmp_path):
    refs = ptbxl_index(ptbxl_root)[:20]
    cohort = build_cohort(refs, [], PreprocessConfig(), tmp_path, name="r", progress=False)
    for name in ("signals", "lead_mask", "sample_mask", "beats"):
        rows = RowReader(cohort.path / f"{name}.npy")
        whole = np.asarray(getattr(cohort, name))
        assert len(rows) == len(cohort) and rows.shape == whole.shape and rows.dtype == whole.dtype
        assert all(np.array_equal(rows[i], whole[i]) for i in (0, 7, len(cohort) - 1))
        assert rows[3].flags.writeable and not isinstance(rows[3], np.memmap)
        again = pickle.loads(pickle.dumps(rows))  # a DataLoader worker under spawn reopens the file
        assert np.array_equal(again[5], whole[5])
    with pytest.raises(IndexError, match="row 20"):
        RowReader(cohort.path / "signals.npy")[20]
    with open(cohort.path / "beats.npy", "r+b") as fh:  # cut the file inside the last row
        fh.truncate(os.path.getsize(cohort.path / "beats.npy") - 10)
    with pytest.raises(Exception, match="truncated"):
        RowReader(cohort.path / "beats.npy")[19]
