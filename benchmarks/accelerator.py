"""Pretraining throughput per device and precision, and torchrun scaling 1 vs 2 processes on the CPU.

Every number comes from the real command (``lsemvae pretrain``, under ``torchrun`` for several processes) on real
PTB-XL records (``--ptbxl``, default ../shared/data/ptb-xl). A run's time per epoch is the difference between a run of
``--epochs 4`` and one of ``--epochs 1``, over 3: process start, data loading and model building cancel out. Each is
the fastest of ``--repeats`` runs (the machine may be shared: the fastest is the least disturbed). ECGs/s counts
training records (validation runs every epoch too, ~10% of them). The 2-process rows also give the largest
relative difference of any loss term from the 1-process run of twice the batch (they should train alike). On the
CPU fp16 is left out (CPU autocast in fp16 is an order of magnitude slower than fp32: no one would choose it there).
Devices this machine lacks are listed as "not measured here"; the same command fills them on a GPU machine.

    python -m benchmarks.accelerator            # ~8 min on 2 shared CPU cores

Writes benchmarks/results/accelerator.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MIMIC_IV_ECG = 800_000  # ECGs in MIMIC-IV-ECG (the paper's pretraining set), for the hours-per-epoch estimate
BATCH = 64


def _run(argv: list[str], out: Path, epochs: int, env: dict) -> tuple[float, int, list[dict]]:
    """(seconds, training records, metrics rows) of one pretraining run."""
    start = time.perf_counter()
    proc = subprocess.run([*argv, "--epochs", str(epochs), "--out", str(out)], capture_output=True, text=True,
                          env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    found = re.search(r"pretraining \w+: (\d+) train", proc.stdout)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return seconds, int(found.group(1)), rows


def measure(name: str, argv: list[str], scratch: Path, env: dict, repeats: int) -> dict:
    short, long = [], []
    for r in range(repeats):  # interleaved, so a burst of other work hits both lengths alike
        short.append(_run(argv, scratch / f"{name}-1-{r}", 1, env)[0])
        seconds, n, rows = _run(argv, scratch / f"{name}-4-{r}", 4, env)
        long.append(seconds)
    per_epoch = (min(long) - min(short)) / 3
    return {"run": name, "command": " ".join(argv), "train_records": n, "seconds_per_epoch": round(per_epoch, 2),
            "ecgs_per_s": round(n / per_epoch, 1), "runs_seconds": {"1 epoch": short, "4 epochs": long},
            "load_average": os.getloadavg()[0], "_rows": rows}


def _largest_difference(a: list[dict], b: list[dict]) -> float:
    keys = [k for k in a[0] if k.startswith(("train_", "val_")) and isinstance(a[0][k], float)]
    return max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(a, b) for k in keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ptbxl", type=Path, default=REPO.parent / "shared" / "data" / "ptb-xl")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    p.add_argument("--repeats", type=int, default=2, help="runs of each length; the fastest counts")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "accelerator.json")
    args = p.parse_args(argv)
    began = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["pretrain", "--ptbxl", str(args.ptbxl.resolve()), "--cache-dir", str(args.cache_dir.resolve())]
    lsemvae = [sys.executable, "-m", "lsemvae"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "lsemvae"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if torch.backends.mps.is_available() else [])
    rows, not_measured = [], [f"{d} (not on this machine)" for d in ("cuda", "mps") if d not in devices]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for device in devices:
            for precision in ("fp32", "bf16", "fp16"):
                no_autocast = precision != "fp32" and not torch.amp.is_autocast_available(device)
                if no_autocast or (device, precision) == ("cpu", "fp16"):
                    not_measured.append(f"{device} {precision}")
                    continue
                threads = ["--threads", "1"] if device == "cpu" else []
                rows.append(measure(f"{device}-{precision}-1x{BATCH}", lsemvae + common + [
                    "--device", device, "--precision", precision, "--batch-size", str(BATCH), *threads],
                    scratch, env, args.repeats))
        two = measure(f"cpu-fp32-2x{BATCH // 2}", torchrun + common + [
            "--device", "cpu", "--threads", "1", "--batch-size", str(BATCH // 2)], scratch, env, args.repeats)
        one = rows[0]
        two["largest_relative_difference_from_1x64"] = _largest_difference(one["_rows"], two["_rows"])
        two["speedup_over_1x64"] = round(one["seconds_per_epoch"] / two["seconds_per_epoch"], 2)
        rows.append(two)
    for row in rows:
        row.pop("_rows")
        row["hours_per_mimic_iv_ecg_epoch"] = round(MIMIC_IV_ECG / row["ecgs_per_s"] / 3600, 1)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    result = {
        "benchmark": "accelerator",
        "command": "python -m benchmarks.accelerator " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU(s), torch {torch.__version__}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "seconds": round(time.perf_counter() - began, 1),
        "summary": {row["run"]: row["ecgs_per_s"] for row in rows} | {
            "speedup_2_processes": two["speedup_over_1x64"],
            "largest_relative_difference_2_processes": two["largest_relative_difference_from_1x64"]},
        "runs": rows,
        "not_measured_here": not_measured + ["faithful profile step time and memory (not run: the compact profile only)"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
