"""torchrun with 2 processes (gloo, CPU) trains as one process with twice the batch: real processes, real data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsemvae.train.distributed import EpochBatches, Processes, epoch_order
from lsemvae.train.pretrain import epoch_generator

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def records(ptbxl_root, tmp_path_factory) -> Path:
    """49 full 100 Hz PTB-XL records (copied: the reader refuses a signal file outside the header's folder): 39 train
    records, so an epoch is a batch of 32 and a short one of 7, which two processes split 4 + 3."""
    folder = tmp_path_factory.mktemp("records")
    for hea in sorted((ptbxl_root / "records100" / "00000").glob("*.hea"))[:49]:
        for f in (hea, hea.with_suffix(".dat")):
            shutil.copy(f, folder / f.name)
    return folder


def _pretrain(cmd: list[str], records: Path, cache: Path, out: Path, batch: int, epochs: int = 2,
              resume: bool = False) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["pretrain", "--folder", str(records), "--cache-dir", str(cache), "--epochs", str(epochs),
            "--batch-size", str(batch), "--val-fraction", "0.2", "--threads", "1", "--device", "cpu", "--out", str(out),
            *(["--resume"] if resume else [])]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


TWO = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "lsemvae"]


@pytest.fixture(scope="module")
def runs(records, tmp_path_factory) -> Path:
    """2 processes x batch 16, then 1 process x batch 32, on one cache (built by the two ranks at once: one builds,
    the other waits on the lock)."""
    root = tmp_path_factory.mktemp("runs")
    said = _pretrain(TWO, records, root / "cache", root / "two", 16)
    assert said.count("pretraining compact:") == 1 and "on 2 processes x 16 records per batch" in said  # rank 0
    _pretrain([sys.executable, "-m", "lsemvae"], records, root / "cache", root / "one", 32)
    return root


@pytest.mark.e2e
def test_two_processes_of_batch_16_follow_one_process_of_batch_32(runs):
    """The loss trajectory to 1e-5 relative. The processes sum a batch in two halves and gloo averages their
    gradients, so gradients differ in float32's last bits; AdamW's first step is the gradient's sign, so an element
    whose gradient is at rounding level may step the other way: the weights differ by up to a few learning rates in
    such elements and the losses by ~1e-6 (measured 1.2e-6 at most). Losing the short batch's 4/3 weighting moves
    them by 2e-5 to 4e-4, drawing the sampling noise per process by 1e-4 to 3e-3. KL and alignment, small terms of
    the sum that these elements move most (4e-5 measured), are held to 2e-4."""
    assert [p.name for p in (runs / "cache").iterdir()] == [next((runs / "cache").iterdir()).name]  # one, complete
    one, two = _metrics(runs / "one"), _metrics(runs / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for key in ("train_loss", "train_recon", "val_loss", "val_recon"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["epoch"], key)
        for key in ("train_kl", "train_align", "val_kl", "val_align", "val_r2_mean"):
            assert b[key] == pytest.approx(a[key], rel=2e-4), (a["epoch"], key)
        assert a["val_active_dims"] == b["val_active_dims"]
    assert sorted(p.name for p in (runs / "two").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]


@pytest.mark.e2e
def test_two_processes_resume_as_if_never_stopped(runs, records, tmp_path):
    """One epoch, then --resume to two: every metric and weight bitwise those of the uninterrupted run."""
    part = tmp_path / "part"
    _pretrain(TWO, records, runs / "cache", part, 16, epochs=1)
    assert len(_metrics(part)) == 1
    _pretrain(TWO, records, runs / "cache", part, 16, resume=True)
    assert (part / "metrics.jsonl").read_bytes() == (runs / "two" / "metrics.jsonl").read_bytes()
    w1 = torch.load(runs / "two" / "last.pt", weights_only=True)["model_state"]
    w2 = torch.load(part / "last.pt", weights_only=True)["model_state"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_one_process_draws_the_batches_a_shuffling_dataloader_gives_through_tqdm():
    """The sampler with one process is the order pretraining always had (tqdm.auto iterates twice)."""
    from tqdm.auto import tqdm

    data = list(range(37))
    old = [b.tolist() for b in tqdm(torch.utils.data.DataLoader(data, batch_size=8, shuffle=True,
                                                                generator=epoch_generator(3, 2)), disable=True)]
    assert list(EpochBatches(epoch_order(37, 8, epoch_generator(3, 2)), Processes())) == old


def test_two_processes_split_every_batch_and_weight_a_short_last_one():
    batches = epoch_order(37, 8, epoch_generator(0, 1))
    r0, r1 = (EpochBatches(batches, Processes(rank=r, world=2)) for r in (0, 1))
    for whole, a, b in zip(batches, r0, r1):
        assert sorted(a + b) == sorted(whole) and a == whole[0::2] and b == whole[1::2]
    last0, last1 = list(r0.shares())[-1], list(r1.shares())[-1]  # 37 = 4 x 8 + 5: ranks hold 3 and 2 of 5
    assert (last0.count, last1.count) == (3, 2)
    assert last0.weight + last1.weight == pytest.approx(2.0)
    one = EpochBatches([[4]], Processes(rank=1, world=2))
    assert list(one) == [[4]] and next(one.shares()).weight == 0  # a stand-in record that counts for nothing
