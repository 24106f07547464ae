"""The README's deployment walkthrough, run as written, then what a hostile or mistaken world does to it.

The README's ``bash`` blocks under "Walkthrough: a federation on one machine" run in one shell, in a copy
of this checkout with ``../shared`` beside it, as an operator would paste them. The only changes: the
ports (8000, 9094, 9095 become free ones, in the blocks and the two site templates) and PATH (this
venv's ``bin`` first, as ``source .venv/bin/activate`` does). Then, against the same coordinator:

* what the jobs did: both completed with both sites, each site's ledger holds both jobs' rounds and its
  epsilon equals Opacus' recomputation, every message each site sent passes the outgoing-message
  inspection (query, train, train, evaluate per job), nothing went to disk readable by others;
* a site the coordinator never registered is refused by the SuperLink (exit 305);
* a job whose app differs from the approved one by one line is refused by both sites before any of its
  code runs there, and its status is failed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.federation.helpers import BIN, REPO, check_outgoing, free_port, read_jsonl, stop_session

pytestmark = pytest.mark.e2e

SITES = ("ptbxl-site0", "ptbxl-site1")


def readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Walkthrough: a federation on one machine", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def _checkout(dest):
    """A copy of this checkout's tracked (and new, unignored) files, with ../shared beside it."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    (dest.parent / "shared").symlink_to(REPO.parent / "shared")
    return dest


def _ports(repo, ports: dict[int, int]) -> None:
    for name in SITES:
        path = repo / "configs" / "sites" / f"{name}.toml"
        text = path.read_text()
        for old, new in ports.items():
            text = re.sub(rf"\b{old}\b", str(new), text)
        path.write_text(text)


def _ids() -> set[str]:
    with open(REPO.parent / "shared" / "data" / "ptb-xl" / "ptbxl_database.csv") as fh:
        rows = list(csv.DictReader(fh))
    return ({f"ptb-xl/{int(float(r['patient_id']))}" for r in rows}
            | {f"ptb-xl/{int(r['ecg_id']):05d}" for r in rows})


def test_the_readme_walkthrough_runs_as_written(tmp_path):
    repo = _checkout(tmp_path / "repo")
    ports = {8000: free_port(), 9094: free_port(), 9095: free_port()}
    _ports(repo, ports)
    script = "set -euo pipefail\n" + "\n".join(readme_blocks())
    for old, new in ports.items():
        script = re.sub(rf"\b{old}\b", str(new), script)
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]])}
    for var in ("FLWR_HOME", "FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"):
        env.pop(var, None)          # only what the README sets
    shell = subprocess.Popen(["bash", "-c", script], cwd=repo, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    flwr_home = repo / "runs" / "coordinator" / "flwr"
    flwr_env = {**env, "FLWR_HOME": str(flwr_home)}
    extra: list[subprocess.Popen] = []
    try:
        out, _ = shell.communicate(timeout=1500)
        assert shell.returncode == 0, out[-6000:]
        # a site the coordinator never registered: refused by the SuperLink
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                        str(repo / "runs" / "pki" / "keys" / "ptbxl-site2plus")], check=True)
        join = [sys.executable, "client/run.py", "--site", "ptbxl-site2plus", "--superlink", f"127.0.0.1:{ports[8000]}",
                "--port", str(free_port()), "--max-retries", "3", "--skip-network-check"]
        # preflight refuses it first: no approved app; approved, it passes preflight and the SuperLink refuses it
        first = subprocess.run(join, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 1 and "connection.approved_apps is empty" in first.stdout, first.stdout[-2000:]
        subprocess.run([sys.executable, "client/run.py", "--site", "ptbxl-site2plus", "--approve-app"], cwd=repo,
                       env=env, check=True, capture_output=True)
        log = repo / "runs" / "stranger.log"
        stranger = subprocess.Popen(join, cwd=repo, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
        extra.append(stranger)
        assert stranger.wait(timeout=300) != 0
        assert "Failed to activate SuperNode" in log.read_text(), log.read_text()[-2000:]
        # an app one line away from the approved one: refused by both sites before any of its code runs there
        with open(repo / "client" / "client_app.py", "a") as fh:
            fh.write("# one more line\n")
        altered = subprocess.run(["flwr", "run", ".", "consortium", "--stream", "--run-config",
                                  f"num-server-rounds=1 out-dir='{repo}/runs/coordinator/altered'"], cwd=repo,
                                 env=flwr_env, capture_output=True, text=True, timeout=600)
        status = subprocess.run(["flwr", "ls", "consortium", "--format", "json"], cwd=repo, env=flwr_env,
                                capture_output=True, text=True, timeout=120)
    finally:
        for proc in (shell, *extra):       # the shell's background jobs outlive it, in its session
            stop_session(proc.pid)
    jobs = {run["status"] for run in json.loads(status.stdout)["runs"]}
    assert "finished:completed" in jobs and "finished:failed" in jobs, status.stdout
    altered_rows = read_jsonl(repo / "runs" / "coordinator" / "altered" / "metrics.jsonl")
    assert "stopped" in altered_rows[0] and sorted(f["code"] for f in altered_rows[0]["failures"]) == [7, 7]  # INVALID_FAB

    # both jobs completed with both sites; the budget policy: each job spent at most its share
    for job in ("job-1", "job-2"):
        rows = read_jsonl(repo / "runs" / "coordinator" / job / "metrics.jsonl")
        assert [r["round"] for r in rows] == [1, 2] and all(r["sites_trained"] == 2 for r in rows), job
        assert json.loads((repo / "runs" / "coordinator" / job / "report" / "report.json").read_text())["status"] == "completed"
        assert set(rows[-1]["auroc"]) == {"superclass", "right_heart"} and rows[-1]["auroc"]["superclass"] > 0.5
    assert "Privacy statement of site 'ptbxl-site0'" in out and out.count(" round ") >= 4
    shapes = {k: tuple(v.shape) for k, v in torch.load(repo / "runs" / "coordinator" / "job-2" / "final-model.pt",
                                                        weights_only=True)["model_state"].items()}
    from lsemvae.site import load_site_config

    for name in SITES:
        cfg = load_site_config(repo / "configs" / "sites" / f"{name}.toml")
        body = json.loads(cfg.ledger_path.read_text())["body"]
        jobs_trained = [e["run_id"] for e in body["events"] if e["kind"] == "round"]
        assert len(jobs_trained) == 4 and len(set(jobs_trained)) == 2
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = [tuple(h) for h in body["history"]]
        epsilon = acc.get_epsilon(delta=body["delta"])
        job2 = read_jsonl(repo / "runs" / "coordinator" / "job-2" / "metrics.jsonl")
        assert abs(epsilon - job2[-1]["epsilon"][name]) < 1e-9
        assert epsilon <= 2 * cfg.privacy.job_epsilon + 1e-6          # two jobs, each within its share
        sent = read_jsonl(cfg.outgoing_log)
        assert [r["message_type"] for r in sent] == ["query", "train", "train", "evaluate"] * 2
        check_outgoing(sent, site=cfg, model_shapes=shapes, forbidden=_ids(),
                       trained_groups={"fusion", *(f"heads.{t}" for t in cfg.task_names)})   # the DP probe
        for private in (cfg.state_dir, cfg.ledger_path, cfg.outgoing_log, cfg.state_dir / "site.log"):
            assert private.stat().st_mode & 0o077 == 0, private
        assert "refusing app" in (repo / "runs" / f"{name}.log").read_text()
