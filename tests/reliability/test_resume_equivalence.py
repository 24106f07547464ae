"""Resume reproduces the uninterrupted run: a non-DP simulation run as 1 round + resume to 2 rounds
ends with exactly the same global model (bitwise) as 2 rounds in one go.

Why bitwise holds without DP: the server state restores the weights, the strategy state and the
RNG, so each round sends the same seed and every site samples batches and initialises its noise
from it. With DP it holds up to the noise-multiplier plan: an uninterrupted run keeps the
multiplier planned in round 1 (in the SuperNode's Context.state, lost on restart), a resumed one
re-plans it from the site's ledger for the rounds left, which lands on the same target epsilon
within the planner's relative tolerance (lsemvae.privacy.dp.PLAN_RELATIVE_TOLERANCE), so weights
then agree only to that tolerance, not bitwise.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.federation.helpers import REPO, read_jsonl, write_checkpoint

pytestmark = pytest.mark.e2e


def _sim(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "simulation" / "run.py"), *args], capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_non_dp_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    base = ["--sites", "2", "--records", "16", "--batch-size", "8", "--checkpoint", str(ckpt), "--no-dp", "--seed", "3"]
    _sim(base + ["--rounds", "2", "--out", str(tmp_path / "straight")])
    _sim(base + ["--rounds", "1", "--out", str(tmp_path / "resumed")])
    _sim(base + ["--rounds", "2", "--resume", "--out", str(tmp_path / "resumed")])

    assert [r["round"] for r in read_jsonl(tmp_path / "resumed" / "server" / "metrics.jsonl")] == [1, 2]
    a = torch.load(tmp_path / "straight" / "server" / "final-model.pt", weights_only=False)["model_state"]
    b = torch.load(tmp_path / "resumed" / "server" / "final-model.pt", weights_only=False)["model_state"]
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]
    start = torch.load(ckpt, weights_only=False)["model_state"]
    assert any(not torch.equal(a[k], start[k]) for k in start if k in a)   # the federation did change the model
