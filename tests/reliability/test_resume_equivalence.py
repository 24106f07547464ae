"""Resume reproduces the uninterrupted run: a non-DP FedAdam simulation run as 1 round + resume to 2
rounds ends with exactly the same global model (bitwise) as 2 rounds in one go.

Why bitwise holds without DP: the server state restores the weights, the strategy state (FedAdam's
moments and step count: dropping them changes round 2's server step) and the RNG, so each round sends
the same seed and every site samples its batches from it. DP runs are not reproducible at all: a
site's noise and sampling come from its own OS randomness (lsemvae.privacy.randomness).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.federation.helpers import REPO, read_jsonl, write_checkpoint

pytestmark = pytest.mark.e2e


def _sims(tmp: Path, *runs: list[str]) -> None:
    """Run simulation/run.py once per argument list, side by side (independent SuperLinks, ports, folders)."""
    logs = [tmp / f"sim-{len(list(tmp.glob('sim-*.log'))) + i}.log" for i in range(len(runs))]
    procs = [subprocess.Popen([sys.executable, str(REPO / "simulation" / "run.py"), *args], stdout=open(log, "w"),
                              stderr=subprocess.STDOUT) for args, log in zip(runs, logs)]
    try:
        for proc, log in zip(procs, logs):
            assert proc.wait(timeout=400) == 0, log.read_text()[-6000:]
    finally:
        for proc in procs:      # a failed or hung run must not outlive the test (SIGTERM: it stops its SuperLink)
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)


def test_non_dp_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    base = ["--sites", "2", "--records", "16", "--batch-size", "8", "--checkpoint", str(ckpt), "--no-dp", "--seed", "3",
            "--strategy", "fedadam", "--eval-min-cell", "1"]
    _sims(tmp_path, base + ["--rounds", "2", "--out", str(tmp_path / "straight")],
          base + ["--rounds", "1", "--out", str(tmp_path / "resumed")])
    _sims(tmp_path, base + ["--rounds", "2", "--resume", "--out", str(tmp_path / "resumed")])

    assert [r["round"] for r in read_jsonl(tmp_path / "resumed" / "server" / "metrics.jsonl")] == [1, 2]
    a = torch.load(tmp_path / "straight" / "server" / "final-model.pt", weights_only=False)["model_state"]
    b = torch.load(tmp_path / "resumed" / "server" / "final-model.pt", weights_only=False)["model_state"]
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]
    start = torch.load(ckpt, weights_only=False)["model_state"]
    assert any(not torch.equal(a[k], start[k]) for k in start if k in a)   # the federation did change the model
