"""Process helpers for the fault tests (the federation tests' start/stop_all do the rest)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.federation.helpers import BIN, descendants, stop_all  # noqa: F401  (descendants: used by the fault tests)


def deployment_env(tmp: Path) -> dict:
    return {"PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "FLWR_HOME": str(tmp / "flwr-home"),
            "LSEMVAE_LEDGER_ANCHOR_DIR": str(tmp / "anchors")}


def wait_for(predicate, what: str, timeout: float, procs: list[subprocess.Popen] = (), *, every: float = 0.5) -> None:
    """Poll ``predicate`` every ``every`` s (bounded by ``timeout``); fail early if one of ``procs`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            assert p.poll() is None, f"{what}: a process exited with {p.returncode}"
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def kill_hard(proc: subprocess.Popen) -> list[int]:
    """SIGKILL a process started in its own session, its group and every descendant (even in other groups);
    returns the descendants killed."""
    spawned = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in spawned:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    return spawned


def listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (TCP)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{port}")}


def process_tree(proc: subprocess.Popen, name: str) -> list[int]:
    """PIDs of ``proc``'s descendants whose command line mentions ``name`` (e.g. the site's flwr-clientapp)."""
    out = []
    for pid in descendants(proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if name in cmdline:
            out.append(pid)
    return out


class Deployment:
    """A loopback federation of real processes, the way the README starts one: flower-superlink, one
    SuperNode per site through client/run.py, and ``flwr run --stream`` in the background.
    Use as a context manager: every process it started is stopped on exit, whatever happened."""

    def __init__(self, tmp: Path, *, superlink_host: str | None = "127.0.0.1"):
        from tests.federation.helpers import free_port

        self.tmp = tmp
        self.port = free_port()
        self.host = superlink_host
        self.env = deployment_env(tmp)
        self.procs: list[subprocess.Popen] = []
        self.sites: dict[str, subprocess.Popen] = {}
        self.link: subprocess.Popen | None = None
        (tmp / "flwr-home").mkdir(exist_ok=True)
        (tmp / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        stop_all(self.procs)

    def _start(self, cmd: list[str], log: str) -> subprocess.Popen:
        from tests.federation.helpers import start

        p = start(cmd, self.tmp / log, env=self.env, cwd=self.tmp)
        self.procs.append(p)
        return p

    def superlink(self, tag: str = "", *, database: bool = False) -> subprocess.Popen:
        """Without ``database`` the SuperLink keeps its state in memory (Flower's default): a test that never
        restarts it gains a lot, since the SQLite state costs ORM work per tensor of every message (seconds
        of CPU per round here) and fails with "database is locked" when the machine is overloaded."""
        from tests.federation.helpers import wait_healthy

        host = ["--host", self.host] if self.host else []
        db = ["--database", str(self.tmp / "state.db")] if database else []
        self.link = self._start([str(BIN / "flower-superlink"), "--insecure", *host, "--port", str(self.port), *db,
                                 "--disable-runtime-dependency-installation"], f"superlink{tag}.log")
        wait_healthy(self.port, self.link, timeout=120)
        return self.link

    def join(self, site: str, tag: str = "") -> subprocess.Popen:
        """Start a site exactly as an operator does: client/run.py (preflight, then exec flower-supernode)."""
        import sys

        from tests.federation.helpers import REPO, free_port

        p = self._start([sys.executable, str(REPO / "client" / "run.py"), "--site", site, "--sites-dir",
                         str(self.tmp / "sites"), "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port",
                         str(free_port()), "--max-retries", "100"], f"{site}{tag}.log")
        self.sites[site] = p
        return p

    def site_online(self, site: str, tag: str = "") -> bool:
        """The site's SuperNode registered and activated (it logs its node id right after ActivateNode)."""
        log = self.tmp / f"{site}{tag}.log"
        return log.exists() and "SuperNode ID:" in log.read_text(errors="replace")

    def run(self, run_config: dict, tag: str = "") -> subprocess.Popen:
        from tests.federation.helpers import REPO, run_config_arg

        return self._start([str(BIN / "flwr"), "run", str(REPO), "e2e", "--stream", "--run-config",
                            run_config_arg(run_config)], f"flwr-run{tag}.log")

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace") if path.exists() else ""


def listeners(pids: list[int]) -> dict[str, str]:
    """Local address -> command line, for every TCP socket one of ``pids`` listens on (`ss -ltnp`)."""
    import re

    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    found = {}
    for line in out.splitlines():
        owners = [int(p) for p in re.findall(r"pid=(\d+),", line) if int(p) in set(pids)]
        if owners:
            try:
                cmd = Path(f"/proc/{owners[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = "?"
            found[line.split()[3]] = cmd.strip()
    return found


def wait_server_done(dep: "Deployment", out: Path, timeout: float) -> None:
    """Wait for the ServerApp to finish: its report written and its process gone.

    ``flwr run --stream`` is not a reliable signal: its log stream ends (exit 0) whenever the
    SuperLink's stream request fails, e.g. on SQLite "database is locked" under heavy load."""
    report = out / "report" / "report.json"
    seen = {"app": False}

    def done() -> bool:
        running = bool(process_tree(dep.link, "flwr-serverapp"))
        seen["app"] |= running
        if report.exists() and not running:
            return True
        assert running or not seen["app"] or report.exists(), \
            f"the ServerApp exited without a report: see {dep.tmp / 'superlink.log'} and {out / 'server.log'}"
        return False

    wait_for(done, "ServerApp finished", timeout, [dep.link])
