"""Fewer sites than min-sites: the run stops with a clear message, no hang, the model unchanged.

Loopback deployment: two sites started through client/run.py; the run asks for non-DP training,
which one site's config forbids, so only one site trains while min-sites is 2. Round 1 is logged
with the refusal and the reason, the run stops (status "stopped: ..."), the final model is the
initial one, and `flwr run` returns well within the bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from lsemvae.federation import keys as K
from tests.federation.helpers import (
    BIN, QUIET_ENV, REPO, free_port, read_jsonl, run_config_arg, start, stop_all, wait_healthy, write_checkpoint,
    write_sites,
)
from tests.reliability.procs import deployment_env

pytestmark = pytest.mark.e2e


def test_too_few_sites_stop_the_run_with_a_clear_message(tmp_path):
    names = write_sites(tmp_path, n_sites=2, records=16, epsilon=8.0)
    strict = tmp_path / "sites" / f"{names[1]}.toml"
    strict.write_text(strict.read_text().replace("allow_non_dp = true", "allow_non_dp = false"))
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    port = free_port()
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    out = tmp_path / "server-out"
    env = deployment_env(tmp_path)
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        link = start([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port), "--database",
                      str(tmp_path / "state.db"), "--disable-runtime-dependency-installation"],
                     tmp_path / "superlink.log", env=env, cwd=tmp_path)
        procs.append(link)
        wait_healthy(port, link)
        for name in names:
            procs.append(start([sys.executable, str(REPO / "client" / "run.py"), "--site", name, "--sites-dir",
                                str(tmp_path / "sites"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--port",
                                str(free_port()), "--max-retries", "20"], tmp_path / f"{name}.log", env=env, cwd=tmp_path))
        cfg = {"num-server-rounds": 3, "min-sites": 2, "round-timeout": 120.0, "batch-size": 8,
               "checkpoint": str(ckpt), "out-dir": str(out), "dp": False}
        run = subprocess.run([str(BIN / "flwr"), "run", str(REPO), "e2e", "--stream", "--run-config", run_config_arg(cfg)],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path,
                             env={**os.environ, **QUIET_ENV, **env})
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    finally:
        stop_all(procs)
    seconds = time.monotonic() - started

    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["round"] == 1                      # stopped in round 1, no round 2
    row = rows[0]
    assert row["sites_trained"] == 1 and "min-sites is 2" in row["stopped"]
    refusal = [f for f in row["failures"] if f["code"] == K.ERR_NON_DP_REFUSED]
    assert len(refusal) == 1 and "allow_non_dp" in refusal[0]["reason"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["status"].startswith("stopped: ") and "min-sites is 2" in report["status"]
    assert "stopping the run" in (out / "server.log").read_text()
    start_state = torch.load(ckpt, weights_only=False)["model_state"]
    final = torch.load(out / "final-model.pt", weights_only=False)["model_state"]
    assert all(torch.equal(final[k], start_state[k]) for k in start_state if k in final)   # the model was left as it was
    print(f"min-sites stop: {seconds:.0f} s wall")
