"""simulation/run.py with 3 synthetic sites (one 6-lead), 2 DP rounds, through Flower's simulation engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.federation.helpers import REPO, read_jsonl, write_checkpoint

pytestmark = pytest.mark.e2e


def test_simulation_three_sites(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    out = tmp_path / "sim"
    proc = subprocess.run([sys.executable, str(REPO / "simulation" / "run.py"), "--sites", "3", "--records", "16",
                           "--rounds", "2", "--epsilon", "4", "--batch-size", "8", "--checkpoint", str(ckpt),
                           "--out", str(out), "--strategy", "fedadam"],
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_jsonl(out / "server" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["sites_trained"] == 3 and not r["failures"] for r in rows)
    sites = set(rows[-1]["epsilon"])
    assert len(sites) == 3 and 0 < rows[-1]["epsilon_max"] <= 4.0 + 1e-6
    # the 6-lead site never contributed to a precordial encoder; a head is averaged over its task's sites only
    six = [s for s in sites if json.loads((out / "sites" / f"{s}.toml").read_text().split("leads = ")[1].split("\n")[0]) == "6L"]
    assert len(six) == 1
    assert six[0] not in rows[0]["groups"]["encoders.V1"] and six[0] in rows[0]["groups"]["encoders.I"]
    assert (out / "server" / "report" / "report.md").is_file() and (out / "server" / "server-state.pt").is_file()
    # the private simulation SuperLink is gone
    assert "simulation SuperLink on 127.0.0.1:" in proc.stdout
    port = proc.stdout.split("simulation SuperLink on 127.0.0.1:")[1].split(" ")[0]
    ss = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    assert f"127.0.0.1:{port} " not in ss
