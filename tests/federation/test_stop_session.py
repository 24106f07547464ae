"""The test helper that stops what a README shell left running: every process of its session, orphans too."""

from __future__ import annotations

import subprocess
import time

from tests.federation.helpers import alive, stop_session


def _session_members(sid: int) -> list[int]:
    rows = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout.split("\n")
    return [int(r.split()[0]) for r in rows if r.strip() and int(r.split()[1]) == sid]


def test_background_jobs_a_shell_left_are_stopped_even_when_they_ignore_sigterm():
    shell = subprocess.Popen(["bash", "-c", "sleep 300 >/dev/null & (trap '' TERM; sleep 301) >/dev/null & echo started"],
                             start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert shell.communicate(timeout=30)[0].strip() == "started"
    orphans = _session_members(shell.pid)
    assert len(orphans) >= 2, orphans             # the shell is gone, its jobs are not
    stop_session(shell.pid)
    time.sleep(0.2)
    assert not [p for p in orphans if alive(p)]
