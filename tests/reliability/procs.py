"""Process helpers for the fault tests (the federation tests' start/stop_all do the rest)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.federation.helpers import BIN


def deployment_env(tmp: Path) -> dict:
    return {"PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "FLWR_HOME": str(tmp / "flwr-home"),
            "LSEMVAE_LEDGER_ANCHOR_DIR": str(tmp / "anchors")}


def wait_for(predicate, what: str, timeout: float, procs: list[subprocess.Popen] = ()) -> None:
    """Poll ``predicate`` (bounded by ``timeout``); fail early if one of ``procs`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            assert p.poll() is None, f"{what}: a process exited with {p.returncode}"
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session, its group and every descendant (even in other groups)."""
    spawned = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in spawned:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (TCP)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{port}")}
