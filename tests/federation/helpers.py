"""Helpers for the federation tests: tiny synthetic sites, a checkpoint, real processes cleaned up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# the process helpers the benchmarks use too
from benchmarks.harness import descendants, free_port, start, start_time, stop, wait_healthy  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def write_sites(tmp: Path, n_sites: int = 2, records: int = 24, *, epsilon: float = 8.0) -> list[str]:
    """A tiny synthetic cohort (site 3 of the default spec is 6-lead) and one site config each under tmp/sites."""
    from lsemvae.data.synthetic import default_cohort, spec_with_overrides, write_cohort
    from lsemvae.fileio import dump_toml

    spec = spec_with_overrides(default_cohort(), sites=n_sites, records=records, seed=7)
    write_cohort(spec, tmp / "cohort", progress=False)
    (tmp / "sites").mkdir(exist_ok=True)
    names = []
    for i, site in enumerate(spec.sites):
        name = site.name.lower()
        cfg = {
            "name": name, "leads": site.leads, "state_dir": str(tmp / "state" / name),
            "anchor_dir": str(tmp / "anchors"),
            "data": {"format": "manifest", "root": str(tmp / "cohort" / site.name / "records"),
                     "labels": str(tmp / "cohort" / site.name / "labels.csv"), "val_fraction": 0.3},
            "tasks": [{"name": "right_heart", "column": "right_heart"}, {"name": "left_atrial", "column": "left_atrial"}],
            "privacy": {"epsilon": epsilon, "run_epsilon": epsilon, "delta": 1e-3, "allow_non_dp": True},
            # tiny test sites: report counts of >= 2 records, evaluate from 4 records on
            "evaluation": {"min_cell": 2, "min_records": 4},
            "connection": {"superlink": "127.0.0.1:8000", "node_port": 9094 + i},
        }
        (tmp / "sites" / f"{name}.toml").write_text(dump_toml(cfg))
        names.append(name)
    return names


def write_checkpoint(path: Path) -> Path:
    """A compact LS-EMVAE checkpoint in the real format (untrained: the tests check mechanics)."""
    import torch

    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    # A narrow LS-EMVAE (same modules and parameter groups, ~20x fewer FLOPs): DP-SGD on 2 shared cores stays quick.
    cfg = get_profile("compact", encoder_channels=(8, 8), encoder_kernels=(5, 5), encoder_strides=(4, 4),
                      latent_dim=8, gate_hidden=8, decoder_hidden=16)
    return save_checkpoint(path, model=build_model(cfg), epoch=0,
                           provenance={"preprocess_config": cfg.preprocess_config().model_dump(mode="json")})


def run_config_arg(cfg: dict) -> str:
    from simulation.run import run_config_arg as fmt

    return fmt(cfg)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_session(sid: int) -> None:
    """Stop every process of session ``sid`` (a shell started with ``start_new_session`` and the background jobs
    it left, orphaned or not) and everything they spawned: SIGTERM, then SIGKILL what is left."""
    def session_of(pid: int) -> int | None:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])   # state ppid pgrp session
        except (OSError, IndexError, ValueError):
            return None

    members = [int(p) for p in filter(str.isdigit, os.listdir("/proc")) if session_of(int(p)) == sid]
    targets = {pid: start_time(pid) for m in members for pid in (m, *descendants(m))}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, started in targets.items():
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(alive(p) for p in targets):
            time.sleep(0.2)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Stop processes we started (each in its own session) and everything they spawned.

    SIGTERM first (a SuperNode says goodbye, a SuperLink stops its SuperExec), then SIGKILL what is
    left, including descendants in other sessions: the SuperExec starts ServerApps and ClientApps in
    sessions of their own, which outlive a group kill and then retry forever."""
    stop(*procs, grace=10)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_outgoing(rows: list[dict], *, site, model_shapes: dict[str, tuple], forbidden: set[str],
                   trained_groups: set[str] | None = None) -> None:
    """Every message a site sent, as its outgoing-message log records it, is exactly what the contract allows.

    * Arrays: one packed buffer whose layout names exactly the parameters of the groups the site
      trained (``trained_groups``, default: its leads, fusion and tasks), with the model's shapes. No
      decoder, no other name, no other shape.
    * Body: a strict reply model (unknown fields are refused), so nothing rides along; histograms
      hold at most the site's bins and every count is at least its ``min_cell``; gates name lead groups.
    * Errors: the reason is a fixed category (plus a server-safe detail), never site detail.
    * Nowhere a record id, patient id or local path.
    """
    from lsemvae.federation import keys as K
    from lsemvae.federation.groups import group_of, groups_for
    from lsemvae.federation.messages import EvaluateReply, SiteInfo, TrainReply

    groups = trained_groups if trained_groups is not None else groups_for(site.lead_names, site.task_names)
    allowed = {k: tuple(v) for k, v in model_shapes.items() if group_of(k) in groups}
    assert rows, "the site sent nothing"
    for row in rows:
        text = json.dumps(row)
        leaked = [v for v in forbidden if v in text]
        assert not leaked, f"record/patient ids left the site: {leaked[:3]}"
        for path in (str(site.state_dir), str(site.data.root)):
            assert path not in text, f"a local path left the site: {path}"
        if "error" in row:
            reason = row["error"]["reason"]
            assert any(reason == c or reason.startswith(c + ": ") for c in K.CATEGORIES.values()), reason
            continue
        assert row["records"]["configs"] == [K.BODY] and row["records"]["metrics"] == [], row["records"]
        body = row["body"]
        if row["message_type"] == K.TRAIN:
            reply = TrainReply.model_validate(body)
            assert row["records"]["arrays"] == [K.ARRAYS]
            sent = {spec.name: tuple(spec.shape) for spec in reply.layout}
            assert sent == allowed, f"arrays sent {sorted(set(sent) ^ set(allowed))[:5]} differ from the trained groups"
            assert set(reply.group_weights) == groups
            evaluation = reply.evaluation
        elif row["message_type"] == K.EVALUATE:
            reply = EvaluateReply.model_validate(body)
            assert row["records"]["arrays"] == []
            evaluation = reply.evaluation
        else:
            SiteInfo.model_validate(body)
            assert row["records"]["arrays"] == []
            evaluation = None
        if evaluation is not None:
            _check_evaluation(evaluation, site.evaluation)


def _check_evaluation(evaluation, policy) -> None:
    """Every count holds at least the site's min_cell records, on at most its bins; gates name lead groups."""
    for hist in evaluation.histograms.values():
        for counts in [*hist.pos, *hist.neg]:
            if counts is not None:
                assert len(counts.counts) <= policy.bins
                assert min(counts.counts) >= policy.min_cell, counts.counts
    from lsemvae.leads import LEAD_GROUPS

    assert set(evaluation.gates) <= set(LEAD_GROUPS)
    assert evaluation.num_examples >= policy.min_records
