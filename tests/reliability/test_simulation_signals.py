"""simulation/run.py stopped with SIGTERM (a CI timeout, `kill`, a scheduler) leaves nothing behind:
its private simulation SuperLink, started in a session of its own, is stopped too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.federation.helpers import REPO, alive, write_checkpoint
from tests.reliability.procs import listening, wait_for

pytestmark = pytest.mark.e2e


def test_sigterm_stops_the_simulation_superlink(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    log = tmp_path / "sim.log"
    sim = subprocess.Popen([sys.executable, str(REPO / "simulation" / "run.py"), "--sites", "2", "--records", "16",
                            "--rounds", "20", "--batch-size", "8", "--checkpoint", str(ckpt), "--out", str(tmp_path / "sim")],
                           stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    found: dict = {}

    def superlink_up() -> bool:
        m = re.search(r"simulation SuperLink on 127\.0\.0\.1:(\d+) \(pid (\d+)\)", log.read_text())
        if m:
            found.update(port=int(m.group(1)), pid=int(m.group(2)))
        return bool(m)

    try:
        wait_for(superlink_up, "simulation SuperLink started", 240, [sim])
        time.sleep(2)
        os.kill(sim.pid, signal.SIGTERM)                 # the launcher only, as `kill <pid>` would
        code = sim.wait(timeout=60)
        assert code != 0
        wait_for(lambda: not alive(found["pid"]) and not listening(found["port"]), "SuperLink stopped", 30)
    finally:
        if sim.poll() is None:
            os.killpg(sim.pid, signal.SIGKILL)
            sim.wait(timeout=10)
        if found.get("pid") and alive(found["pid"]):   # never leave it running, even when the test fails
            os.killpg(found["pid"], signal.SIGKILL)
