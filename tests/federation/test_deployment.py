"""End to end on loopback with real processes: flower-superlink, two SuperNodes started through
client/run.py, `flwr run` for 2 DP rounds. Then the checkpoint, metrics and report exist, each
site's ledger holds both rounds, and every message each site sent passes the inspection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lsemvae.site import load_site_config
from tests.federation.helpers import (
    BIN, QUIET_ENV, REPO, check_outgoing, free_port, read_jsonl, run_config_arg, start, stop_all, wait_healthy,
    write_checkpoint, write_sites,
)

pytestmark = pytest.mark.e2e


def _env(tmp: Path) -> dict:
    return {"PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "FLWR_HOME": str(tmp / "flwr-home"),
            "LSEMVAE_LEDGER_ANCHOR_DIR": str(tmp / "anchors")}


def _flwr_run(tmp: Path, connection: str, run_cfg: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), "run", str(REPO), connection, "--stream", "--run-config", run_config_arg(run_cfg)],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp, env={**os.environ, **QUIET_ENV, **_env(tmp)})


def _ids(tmp: Path) -> set[str]:
    import csv

    out = set()
    for labels in (tmp / "cohort").glob("*/labels.csv"):
        with open(labels) as fh:
            for row in csv.DictReader(fh):
                out |= {row["record_id"], row["patient_id"]}
    return out


def test_deployment_two_sites_two_dp_rounds(tmp_path):
    names = write_sites(tmp_path, n_sites=2, records=16, epsilon=6.0)
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    port, node_ports = free_port(), [free_port(), free_port()]
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    out = tmp_path / "server-out"
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        link = start([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                      "--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation"],
                     tmp_path / "superlink.log", env=_env(tmp_path), cwd=tmp_path)
        procs.append(link)
        wait_healthy(port, link)
        for name, node_port in zip(names, node_ports):
            procs.append(start([sys.executable, str(REPO / "client" / "run.py"), "--site", name,
                                "--sites-dir", str(tmp_path / "sites"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                "--port", str(node_port), "--max-retries", "20"],
                               tmp_path / f"{name}.log", env=_env(tmp_path), cwd=tmp_path))
        run_cfg = {"num-server-rounds": 2, "min-sites": 2, "round-timeout": 240.0, "batch-size": 8,
                   "checkpoint": str(ckpt), "out-dir": str(out), "dp": True}
        result = _flwr_run(tmp_path, "e2e", run_cfg, timeout=420)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        for p in procs[1:]:
            assert p.poll() is None, f"a SuperNode exited: see {tmp_path}"
    finally:
        stop_all(procs)
    seconds = time.monotonic() - started

    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2] and all(r["sites_trained"] == 2 for r in rows)
    assert (out / "server-state.pt").is_file() and (out / "final-model.pt").is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["status"] == "completed" and (out / "report" / "epsilon.png").is_file()
    shapes = {k: tuple(v.shape) for k, v in torch.load(out / "final-model.pt", weights_only=True)["model_state"].items()}
    eps = rows[-1]["epsilon"]
    assert set(eps) == set(names) and rows[-1]["epsilon_max"] == max(eps.values()) <= 6.0
    for name in names:
        cfg = load_site_config(tmp_path / "sites" / f"{name}.toml")
        ledger = json.loads(cfg.ledger_path.read_text())
        assert [e["round"] for e in ledger["body"]["events"] if e["kind"] == "round"] == [1, 2]
        assert rows[0]["epsilon"][name] < rows[1]["epsilon"][name]      # cumulative: grows every round
        # the epsilon the site reported equals an independent recomputation from its ledger's history
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = [tuple(h) for h in ledger["body"]["history"]]
        assert abs(acc.get_epsilon(delta=ledger["body"]["delta"]) - rows[1]["epsilon"][name]) < 1e-9
        sent = read_jsonl(cfg.outgoing_log)
        # the heads are checked first; round 2's training carries round 1's evaluation; the last model is evaluated alone
        assert [r["message_type"] for r in sent] == ["query", "train", "train", "evaluate"]
        check_outgoing(sent, site=cfg, model_shapes=shapes, forbidden=_ids(tmp_path),
                       trained_groups={"fusion", *(f"heads.{t}" for t in cfg.task_names)})   # the DP probe
    print(f"deployment: 2 rounds in {seconds:.0f} s wall; per round {[round(r['seconds'], 1) for r in rows]} s; "
          f"bytes {rows[-1]['bytes']}")
