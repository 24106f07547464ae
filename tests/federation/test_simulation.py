"""simulation/run.py with 3 synthetic sites (one 6-lead), DP, FedAdam, through Flower's simulation
engine; the run is stopped (SIGTERM) after round 1 and resumed from the server checkpoint for round 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.federation.helpers import REPO, read_jsonl, write_checkpoint
from tests.reliability.procs import kill_hard, wait_for

pytestmark = pytest.mark.e2e


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "simulation" / "run.py"), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _kill_during(args: list[str], out, server_round: int) -> str:
    """Run simulation/run.py and kill its whole process tree as soon as the server sends ``server_round``
    (the rounds before are checkpointed, that one never finishes); the launcher's output."""
    log = out.parent / f"{out.name}-killed.log"
    proc = subprocess.Popen([sys.executable, str(REPO / "simulation" / "run.py"), *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    server_log = out / "server" / "server.log"
    try:
        wait_for(lambda: server_log.exists() and f"round {server_round}/" in server_log.read_text(),
                 f"round {server_round} sent", 300, [proc], every=0.02)
    finally:
        kill_hard(proc)
    assert torch.load(out / "server" / "server-state.pt", weights_only=True)["round"] == server_round - 1
    return log.read_text()


def test_simulation_three_sites_and_resume(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "sim"
    base = ["--sites", "3", "--records", "16", "--epsilon", "4", "--batch-size", "8", "--checkpoint", str(ckpt),
            "--out", str(out), "--strategy", "fedadam", "--train-encoders", "true",   # encoders' routing is checked
            "--eval-min-cell", "1", "--rounds", "2"]
    _kill_during(base, out, 2)                                         # the coordinator dies in round 2
    resumed = _run(base + ["--resume"])

    rows = read_jsonl(out / "server" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]                       # round 1 kept, only round 2 run again
    assert "resuming from" in (out / "server" / "server.log").read_text()
    state = torch.load(out / "server" / "server-state.pt", weights_only=True)
    assert state["round"] == 2 and json.loads(state["meta"])["metrics"][0]["time"] == rows[0]["time"]
    assert all(r["sites_trained"] == 3 and not r["failures"] for r in rows)
    sites = set(rows[-1]["epsilon"])
    assert len(sites) == 3 and 0 < rows[-1]["epsilon_max"] <= 4.0 + 1e-6
    for s in sites:                                                    # the ledger carries over the interruption
        assert rows[0]["epsilon"][s] < rows[1]["epsilon"][s]
    # the 6-lead site never contributed to a precordial encoder; it did to the limb encoders and the heads
    six = [s for s in sites if '"6L"' in (out / "sites" / f"{s}.toml").read_text()]
    assert len(six) == 1
    for r in rows:
        assert six[0] not in r["groups"]["encoders.V1"] and six[0] in r["groups"]["encoders.I"]
        assert six[0] in r["groups"]["heads.right_heart"]
    assert (out / "server" / "report" / "report.md").is_file() and (out / "server" / "report" / "auroc.png").is_file()
    # the gate weights each site reported: the 6-lead site gives its missing precordial groups nothing
    assert rows[-1]["eval"][six[0]]["gates"]["septal"] == 0 and set(rows[-1]["gates"]) == {"limb", "augmented",
                                                                                            "septal", "lateral"}
    assert rows[-1]["gates"]["septal"] > 0                            # the 12-lead sites use their chest leads
    assert "## HiME gate weights (last model)" in (out / "server" / "report" / "report.md").read_text()
    assert (out / "server" / "report" / "gates.png").is_file()
    # the private simulation SuperLink of the resumed run is gone
    port = resumed.stdout.split("simulation SuperLink on 127.0.0.1:")[1].split(" ")[0]
    assert f"127.0.0.1:{port} " not in subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout


def test_under_the_dp_probe_the_encoders_go_down_once(tmp_path):
    """The default under DP: sites train gate + heads; the frozen encoders reach each site once, and
    again after a coordinator restart (the server does not checkpoint who holds them)."""
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "sim"
    base = ["--sites", "2", "--records", "16", "--epsilon", "4", "--batch-size", "8", "--checkpoint", str(ckpt),
            "--out", str(out), "--eval-min-cell", "1", "--rounds", "3"]
    _kill_during(base, out, 3)
    _run(base + ["--resume"])
    rows = read_jsonl(out / "server" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["sites_trained"] == 2 and not r["failures"] for r in rows)
    for r in rows:
        for site, b in r["bytes"].items():
            slim = b["up"]                                   # a site sends back what it trained: gate + heads
            assert b["down"] == slim if r["round"] == 2 else b["down"] > 10 * slim, (r["round"], site)
    # one evaluate message, for the last model (the others rode on the next round's training)
    assert [set(b) for b in rows[-1]["bytes"].values()] == [{"down", "up", "down_evaluate"}] * 2
    assert all(b["down_evaluate"] == b["up"] for b in rows[-1]["bytes"].values())
    assert all("down_evaluate" not in b for r in rows[:-1] for b in r["bytes"].values())
    sites = sorted(rows[0]["bytes"])
    stored = [p for s in sites for p in (out / "site-state" / s / "base").glob("*.npz")]
    assert len(stored) == 2                                  # one copy per site, the same encoders
