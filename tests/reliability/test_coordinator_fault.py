"""The coordinator killed mid-run (SIGKILL, as a power cut would) and resumed gives the uninterrupted model.

Three runs of simulation/run.py with the same fixed seeds, 2 sites, 2 rounds, no DP:
  1. uninterrupted;
  2. (side by side with 1) killed in round 2: once the ServerApp has checkpointed round 1 and sent round 2, the launcher,
     its private SuperLink, the ServerApp, the simulation engine and the Ray site actors are all
     SIGKILLed (no handler runs, nothing is flushed);
  3. the same command with --resume on the killed run's folder.
Run 3 continues from the round-1 checkpoint (round 1 is not run again) and its final model is
bitwise the model of run 1. That holds without DP because the checkpoint restores the weights, the
server optimiser state and the server RNG, so round 2 sends the same seed and every site samples the
same batches. With DP it holds only up to the noise plan (test_resume_equivalence.py explains why).

While run 2 is up, every socket of Flower's APIs in the simulation (SuperLink: Fleet, Control and
the app runtime APIs; its SuperExec) must be bound to loopback. The simulation engine, Ray, binds
its own servers (GCS, raylet, workers, the driver inside flwr-simulation) to all interfaces and has
no authentication: that is Ray's design, not configurable through Flower; the README says to run
simulations only on a trusted network. The test prints those sockets.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import torch

from tests.federation.helpers import REPO, alive, read_jsonl, write_checkpoint
from tests.reliability.procs import descendants, kill_hard, listeners, wait_for

pytestmark = pytest.mark.e2e

# Processes that serve Flower's APIs (Fleet, Control, ServerAppIo/SimulationIo, runtime).
FLOWER_SERVICES = ("flower-superlink", "flower-superexec", "flwr-serverapp")


def _start_sim(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "simulation" / "run.py"), *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _sim(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "simulation" / "run.py"), *args], capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_coordinator_killed_mid_run_resumes_to_the_uninterrupted_model(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    base = ["--sites", "2", "--records", "16", "--batch-size", "8", "--checkpoint", str(ckpt), "--no-dp", "--seed", "5",
            "--rounds", "2", "--local-epochs", "10"]
    started = time.monotonic()
    # the uninterrupted run and the one to kill run side by side (independent SuperLinks, ports, folders)
    straight = _start_sim(base + ["--out", str(tmp_path / "straight")], tmp_path / "straight.log")
    crashed = tmp_path / "crashed"
    sim = _start_sim(base + ["--out", str(crashed)], tmp_path / "crashed.log")
    tree: list[int] = []
    marks = {}
    try:
        server_log = crashed / "server" / "server.log"
        # every service is up once round 1 is sent: check the sockets then, so that nothing slow (`ss`) stands
        # between seeing round 2 sent and the kill (under load round 2 once finished in that gap)
        wait_for(lambda: server_log.exists() and "round 1/2: sending" in server_log.read_text(), "round 1 sent", 300, [sim])
        bound = listeners(descendants(sim.pid))
        flower = {a: c for a, c in bound.items() if any(n in c for n in FLOWER_SERVICES)}
        assert flower and all(a.startswith("127.0.0.1:") for a in flower), flower
        ray = sorted(a for a in bound if a not in flower)   # Ray's own servers: all interfaces (see README)
        # polled tightly and killed at once: round 2 (10 local epochs) must not finish in between
        wait_for(lambda: "round 2/2: sending" in server_log.read_text(), "round 2 sent", 300, [sim], every=0.02)
        tree = kill_hard(sim)                            # launcher, SuperLink, ServerApp, engine, Ray: all at once
        marks["killed"] = time.monotonic() - started
        assert straight.wait(timeout=400) == 0, (tmp_path / "straight.log").read_text()[-3000:]
        marks["straight"] = time.monotonic() - started
    finally:
        for proc in (sim, straight):
            if proc.poll() is None:
                kill_hard(proc)
            shutil.rmtree(f"/tmp/ray-lsemvae-{proc.pid}", ignore_errors=True)   # a killed launcher leaves its Ray dir
    wait_for(lambda: not any(alive(p) for p in tree), "every killed process gone", 30)
    assert torch.load(crashed / "server" / "server-state.pt", weights_only=True)["round"] == 1
    assert [r["round"] for r in read_jsonl(crashed / "server" / "metrics.jsonl")] == [1]   # round 2 never finished

    _sim(base + ["--resume", "--out", str(crashed)])
    marks["resumed"] = time.monotonic() - started

    assert "resuming from" in (crashed / "server" / "server.log").read_text()
    assert [r["round"] for r in read_jsonl(crashed / "server" / "metrics.jsonl")] == [1, 2]   # round 1 not run again
    a = torch.load(tmp_path / "straight" / "server" / "final-model.pt", weights_only=False)["model_state"]
    b = torch.load(crashed / "server" / "final-model.pt", weights_only=False)["model_state"]
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]
    start = torch.load(ckpt, weights_only=False)["model_state"]
    assert any(not torch.equal(a[k], start[k]) for k in start if k in a)   # the federation did change the model
    print(f"coordinator fault: {time.monotonic() - started:.0f} s wall; marks {({k: round(v) for k, v in marks.items()})}; "
          f"Flower APIs on {sorted(flower)}; simulation engine (Ray) on {ray}")
