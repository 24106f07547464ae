"""What every benchmark shares: the machine line, the results file, processes, site configs, statistics.

Benchmarks are modules of the ``benchmarks`` package, run from the repository root::

    python -m benchmarks.federation --help

* **Results** (:func:`write_results`): one JSON file per benchmark under ``benchmarks/results``. Its
  top level always holds the fields of :class:`ResultMeta` (benchmark, command, machine, date, git
  commit, seconds) and a flat ``summary`` ``{label: value}`` (units in the label); the rest is the
  benchmark's own. ``benchmarks/summarise.py`` builds ``benchmarks/README.md`` from these files.
* **Machine** (:func:`machine`): one line (CPU, cores, load, Python, torch, threads).
* **Processes**: a free port, a health wait, stopping a process group and whatever it spawned.
* **Sites** (:func:`site_config`, :func:`synthetic_sites`, :func:`real_sites`): site TOMLs written with
  :func:`lsemvae.fileio.dump_toml`, each with its own state dir and privacy-ledger anchors outside it.
* **Statistics** (:func:`seed_mean_bootstrap`, :func:`paired_difference`): seed-mean AUROC with a
  bootstrap CI over the evaluated records, and a paired difference of two arms.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0"}


# ----------------------------------------------------------------------------- results

class ResultMeta(BaseModel):
    """The fields every results file starts with (its other keys are the benchmark's own)."""

    model_config = ConfigDict(extra="forbid")

    benchmark: str          # module name, e.g. "federation"
    command: str            # the command line that reproduces the file
    machine: str            # machine(): one line
    date: str               # UTC, ISO 8601, when the file was written
    commit: str             # git commit of the code that ran ("-dirty" with uncommitted changes)
    seconds: float          # wall time of the run that wrote the file


def machine() -> str:
    """One line: architecture, cores, load, Python, torch and its threads."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        import torch

        torch_text = f"torch {torch.__version__} ({torch.get_num_threads()} thread(s))"
    except ImportError:
        torch_text = "no torch"
    return (f"{platform.machine()}, {os.cpu_count()} cores (shared; load {load}), Python {platform.python_version()}, "
            f"{torch_text}")


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def command_line(benchmark: str, argv: list[str] | None) -> str:
    """``python -m benchmarks.<benchmark> <args>`` as it was run (``argv`` None: this process' arguments)."""
    import shlex

    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", f"benchmarks.{benchmark}", *map(shlex.quote, map(str, args))])


def joined_commands(commands: Iterable[str | None]) -> str | None:
    """The ``command`` of a results file that holds the parts of several runs: each command once, in order."""
    return " ; then ".join(dict.fromkeys(c for c in commands if c)) or None


def meta(benchmark: str, argv: list[str] | None, started: float, *, command: str | None = None) -> ResultMeta:
    """This run's :class:`ResultMeta` (``started``: its ``time.monotonic()`` at the start; ``command``: when the
    file holds the runs of several commands, all of them)."""
    return ResultMeta(benchmark=benchmark, command=command or command_line(benchmark, argv), machine=machine(),
                      date=datetime.now(timezone.utc).isoformat(timespec="seconds"), commit=git_commit(),
                      seconds=round(time.monotonic() - started, 1))


def write_results(path: Path, head: ResultMeta, body: dict[str, Any]) -> dict:
    """``head`` then ``body`` (which must not redefine a head field) as JSON at ``path``; returns what was written."""
    clash = sorted(set(body) & set(ResultMeta.model_fields))
    if clash:
        raise ValueError(f"results body redefines {clash}: those fields belong to ResultMeta")
    out = {**head.model_dump(), **body}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=_json_default) + "\n")
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_results(name: str) -> dict:
    """A results file's contents ({} when absent): benchmarks that rerun one part keep the others."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else {}


# ----------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so :func:`stop` can end its whole group), output to ``log``."""
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **QUIET_ENV, **(env or {})}, cwd=cwd, start_new_session=True)


def wait_healthy(port: int, proc: subprocess.Popen, *, scheme: str = "http", cafile: str | None = None,
                 timeout: float = 60.0) -> None:
    """Wait until a Flower SuperLink answers ``/health`` on ``port`` (``https``: verified against ``cafile``); fail
    if ``proc`` exits first."""
    import ssl

    ctx = ssl.create_default_context(cafile=cafile) if scheme == "https" else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health", timeout=1, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing healthy on port {port} after {timeout:g} s")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), whatever session or group it moved to."""
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


def start_time(pid: int) -> int | None:
    """The process' start time (clock ticks since boot; None if it is gone): with its pid, one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def stop(*procs: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM the process groups we started, SIGKILL what is left, then every process they spawned.

    Flower's SuperExec starts ServerApps and ClientApps in sessions of their own, which outlive a group
    kill: they are remembered (pid and start time, so a reused pid is never hit) before the groups stop."""
    live = [p for p in procs if p is not None and p.poll() is None]
    spawned = {pid: start_time(pid) for p in live for pid in descendants(p.pid)}
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
    for pid, started in spawned.items():
        if started is not None and start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


#: processes of a Flower simulation (simulation/run.py) by role: a needle of their command lines
SIMULATION_ROLES = {"server": "flwr-simulation", "site": "ClientAppActor", "superlink": "flower-superlink"}


def rss_by_role(root: int, roles: dict[str, str] = SIMULATION_ROLES) -> dict[str, dict[int, float]]:
    """RSS (MB) of every process under ``root`` whose command line contains a role's needle."""
    out: dict[str, dict[int, float]] = {role: {} for role in roles}
    for pid in descendants(root):
        cmd = cmdline(pid)
        for role, needle in roles.items():
            if needle in cmd:
                mb = rss_mb(pid)
                if mb is not None:
                    out[role][pid] = mb
    return out


# ----------------------------------------------------------------------------- checkpoints

def narrow_checkpoint(path: Path) -> Path:
    """An untrained compact LS-EMVAE, ~20x fewer FLOPs (same modules and parameter groups), in the real format:
    for benchmarks of mechanics (memory, speed of a round), where the weights do not matter."""
    import torch

    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = get_profile("compact", encoder_channels=(8, 8), encoder_kernels=(5, 5), encoder_strides=(4, 4),
                      latent_dim=8, gate_hidden=8, decoder_hidden=16)
    return save_checkpoint(path, model=build_model(cfg), epoch=0,
                           provenance={"preprocess_config": cfg.preprocess_config().model_dump(mode="json")})


def synthetic_checkpoint() -> Path:
    """The simulation's quick synthetic pretraining (``simulation/run.py``'s default checkpoint), cached."""
    from simulation.run import parse_args, pretrained_checkpoint

    return pretrained_checkpoint(parse_args([]))


# ----------------------------------------------------------------------------- sites

def site_config(name: str, work: Path, *, leads: str, data: dict, tasks: list[dict], epsilon: float = 8.0,
                delta: float = 1e-5, evaluation: dict | None = None, node_port: int = 9094, **extra) -> dict:
    """A site config (the dict of a site TOML) whose state lives under ``work/site-state/<name>`` and whose
    privacy-ledger anchors live in ``work/ledger-anchors`` (outside every state dir). Non-DP runs are allowed
    (benchmarks compare with them); ``run_epsilon`` is the whole budget (a benchmark run is one job)."""
    cfg = {"name": name, "leads": leads, "state_dir": str(work / "site-state" / name),
           "anchor_dir": str(work / "ledger-anchors"), "data": data, "tasks": tasks,
           "privacy": {"epsilon": epsilon, "run_epsilon": epsilon, "delta": delta, "allow_non_dp": True},
           "connection": {"superlink": "127.0.0.1:8000", "node_port": node_port}, **extra}
    if evaluation:
        cfg["evaluation"] = evaluation
    return cfg


def write_site(path: Path, cfg: dict) -> Path:
    from lsemvae.fileio import dump_toml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(cfg))
    return path


def load_sites(paths: list[Path]) -> list:
    """Validated :class:`~lsemvae.site.SiteConfig` per TOML, in the given order."""
    from lsemvae.site import load_site_config

    return [load_site_config(p) for p in paths]


def five_site_spec(records: int, *, seed: int = 0, fs: int | None = None, leads: str | None = None):
    """The default synthetic cohort's four sites plus a 6-lead 100 Hz GP clinic on 60 Hz mains with few
    right-heart but more isolated left-sided cases; ``records`` per site. ``fs``/``leads`` override every site."""
    from lsemvae.data.synthetic import CohortSpec, SiteSpec, default_cohort

    sites = [s.model_dump() for s in default_cohort().sites]
    sites.append(SiteSpec(name="clinic_e", n_records=records, fs=100, leads="6L", prevalence=0.08, left_prevalence=0.2,
                          isolated_left=0.12, noise_mv=0.02, wander_mv=0.2, powerline_hz=60, powerline_mv=0.02,
                          gain_sd=0.04, lead_case="upper").model_dump())
    for s in sites:
        s["n_records"] = records
        s.update({k: v for k, v in (("fs", fs), ("leads", leads)) if v is not None})
    return CohortSpec(seed=seed, seconds=10.0, sites=sites)


SYNTH_TASKS = ("right_heart", "left_atrial")
REAL_TASKS = ("superclass", "left_atrial_lvh")
#: PTB-XL split by its ``site`` column (0, 1, every other) plus LUDB: the real federation of the benchmarks
REAL_SITES = {"ptbxl-site0": [0], "ptbxl-site1": [1], "ptbxl-site2plus": None, "ludb": None}


def synthetic_sites(spec, work: Path, *, tasks=SYNTH_TASKS, val_fraction: float = 0.2, **site_fields) -> list[Path]:
    """Generate the cohort into ``work/cohort`` (reused if there) and write one site TOML per site."""
    from lsemvae.data.synthetic import write_cohort

    cohort = work / "cohort"
    write_cohort(spec, cohort, progress=True)
    return [write_site(work / "sites" / f"{s.name}.toml", site_config(
        s.name, work, leads=s.leads, node_port=9200 + i, tasks=[{"name": t, "column": t} for t in tasks],
        data={"format": "manifest", "root": str(cohort / s.name / "records"),
              "labels": str(cohort / s.name / "labels.csv"), "val_fraction": val_fraction}, **site_fields))
        for i, s in enumerate(spec.sites)]


def real_sites(work: Path, *, tasks=REAL_TASKS, leads: str = "6L", data_root: Path = SHARED_DATA,
               **site_fields) -> list[Path]:
    """PTB-XL split by recording site (0, 1, every other) plus LUDB, as site TOMLs (LUDB has no superclass)."""
    from lsemvae.data.sources import ptbxl_index

    sites_of = {int(r.meta["site"]) for r in ptbxl_index(data_root / "ptb-xl", rate=100) if r.meta.get("site") is not None}
    paths = []
    for i, (name, keep) in enumerate(REAL_SITES.items()):
        if name == "ludb":
            data = {"format": "ludb", "root": str(data_root / "ludb")}
            site_tasks = [t for t in tasks if t != "superclass"]    # LUDB has no PTB-XL diagnostic classes
        else:
            data = {"format": "ptbxl", "root": str(data_root / "ptb-xl"), "ptbxl_rate": 100,
                    "ptbxl_sites": keep if keep is not None else sorted(sites_of - {0, 1})}
            site_tasks = list(tasks)
        paths.append(write_site(work / "sites" / f"{name}.toml", site_config(
            name, work, leads=leads, data=data, tasks=[{"name": t} for t in site_tasks], node_port=9300 + i,
            **site_fields)))
    return paths


# ----------------------------------------------------------------------------- statistics

def bootstrap_auroc(y: np.ndarray, scores: list[np.ndarray], *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_seeds, n_boot]`` macro AUROC of each run's ``scores`` on stratified bootstrap resamples of the records
    (the same resamples for every run, so two arms scored on the same records can be paired)."""
    from lsemvae.train import metrics

    w = np.concatenate(list(metrics.bootstrap_weights(y, n_boot=n_boot, seed=seed)))
    return np.stack([np.nanmean(metrics._boot_class_metrics(y, s, w)[0], axis=1) for s in scores])


def macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    from lsemvae.train import metrics

    return float(np.nanmean(metrics.auroc(y, p)))


def seed_mean_bootstrap(y: np.ndarray, scores: list[np.ndarray], reference: list[np.ndarray] | None = None,
                        *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Seed-mean macro AUROC with a bootstrap CI over test records (identical resamples for every
    seed and method); with ``reference``, the paired difference of the seed means (``diff_vs_cnn``)."""
    dist = bootstrap_auroc(y, scores, n_boot=n_boot, seed=seed).mean(0)
    point = float(np.mean([macro_auroc(y, s) for s in scores]))
    out = {"mean": point, "ci": [float(np.nanpercentile(dist, 2.5)), float(np.nanpercentile(dist, 97.5))]}
    if reference is not None:
        ref_point = float(np.mean([macro_auroc(y, s) for s in reference]))
        d = dist - bootstrap_auroc(y, reference, n_boot=n_boot, seed=seed).mean(0)
        d = d[np.isfinite(d)]
        out["diff_vs_cnn"] = {"diff": point - ref_point, "ci": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
                              "p_value": float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))}
    return out


def contrast(y: np.ndarray, plus: list[list[np.ndarray]], minus: list[list[np.ndarray]], *, n_boot: int = 1000,
             seed: int = 0) -> dict:
    """The arms in ``plus`` minus the arms in ``minus`` (summed), in macro AUROC on the same records, runs
    paired by seed (run ``i`` of every arm has the same seed): a paired difference of two arms, or a
    difference of two differences.

    The CI resamples both sources of noise: the records (stratified, the same resample for every arm) and
    the seeds (with replacement, per resample). Also each seed's own value.
    """
    arms = plus + minus
    if len({len(a) for a in arms}) != 1:
        raise ValueError(f"paired arms need as many runs each ({[len(a) for a in arms]})")
    sign = [1.0] * len(plus) + [-1.0] * len(minus)
    per_seed = [sum(w * macro_auroc(y, arm[i]) for w, arm in zip(sign, arms)) for i in range(len(arms[0]))]
    d = sum(w * bootstrap_auroc(y, arm, n_boot=n_boot, seed=seed) for w, arm in zip(sign, arms))
    pick = np.random.default_rng(seed + 1).integers(0, d.shape[0], size=(d.shape[1], d.shape[0]))
    dist = d[pick, np.arange(d.shape[1])[:, None]].mean(1)
    dist = dist[np.isfinite(dist)]
    return {"diff": float(np.mean(per_seed)), "ci95": [float(np.percentile(dist, 2.5)), float(np.percentile(dist, 97.5))],
            "per_seed": [round(x, 4) for x in per_seed], "runs": len(arms[0]), "n_boot": n_boot}


def paired_difference(y: np.ndarray, a: list[np.ndarray], b: list[np.ndarray], *, n_boot: int = 1000,
                      seed: int = 0) -> dict:
    """Arm ``a`` minus arm ``b`` (:func:`contrast`), with each arm's seed-mean macro AUROC."""
    return {**contrast(y, [a], [b], n_boot=n_boot, seed=seed),
            "a": float(np.mean([macro_auroc(y, p) for p in a])), "b": float(np.mean([macro_auroc(y, q) for q in b]))}


# ----------------------------------------------------------------------------- federated runs and scoring

def quiet_sites() -> None:
    """Benchmarks print their own progress: the sites' per-round lines (and the non-DP banner, which every
    comparison run would repeat) go to WARNING-only logging; the server's round lines stay."""
    import logging

    logging.getLogger("lsemvae.site").setLevel(logging.ERROR)


def fresh_sites(sites: list, run_dir: Path, *, privacy: dict | None = None) -> list:
    """Each site with a new state dir under ``run_dir`` (a new privacy ledger, plans and base: one run, one
    job) and its anchors beside it; the preprocessed cache is shared by every run of the same site
    (``<its configured state dir>/cache``, linked in). ``privacy``: fields of every site's
    :class:`~lsemvae.site.PrivacyBudget` to override (e.g. ``{"epsilon": 1, "run_epsilon": 1}``)."""
    out = []
    for site in sites:
        state = run_dir / "site-state" / site.name
        state.mkdir(parents=True, exist_ok=True)
        shared = site.state_dir / "cache"
        shared.mkdir(parents=True, exist_ok=True)
        if not (state / "cache").exists():
            (state / "cache").symlink_to(shared, target_is_directory=True)
        update: dict[str, Any] = {"state_dir": state, "anchor_dir": run_dir / "ledger-anchors"}
        if privacy:
            update["privacy"] = site.privacy.model_copy(update=privacy)
        out.append(site.model_copy(update=update))
    return out


def budget(epsilon: float) -> dict:
    """Privacy overrides for a benchmark job that spends a whole budget of ``epsilon`` at every site."""
    return {"epsilon": float(epsilon), "run_epsilon": float(epsilon)}


def federate(sites: list, run_config: dict[str, Any], run_dir: Path, *, privacy: dict | None = None):
    """One federated job through the library's own round (:func:`lsemvae.federation.server_round.run_rounds`
    over :class:`~lsemvae.federation.inprocess.InProcessSites`), every site in a fresh state dir (see
    :func:`fresh_sites`). ``run_config``: run-config keys (hyphenated) over the defaults; ``min-sites`` is
    every site. Returns the final :class:`~lsemvae.federation.state.ServerState` (metrics rows included)."""
    import shutil

    from lsemvae.federation.inprocess import InProcessSites
    from lsemvae.federation.server_round import initial_state, run_rounds
    from lsemvae.site import federation_config

    shutil.rmtree(run_dir, ignore_errors=True)
    fed = federation_config({"min-sites": len(sites), **run_config}, source="benchmark run config")
    state = initial_state(fed)
    transport = InProcessSites(fresh_sites(sites, run_dir, privacy=privacy), update_dtype=fed.update_dtype)
    status = run_rounds(transport, fed, state)
    if status != "completed":
        failures = [f for row in state.metrics for f in row.get("failures", [])]
        raise RuntimeError(f"federated run {run_dir.name}: {status}; failures: {failures[:5]}")
    return state


def model_of(state):
    """The global model of a server state (decoders included), in eval mode."""
    import torch

    from lsemvae.federation.runtime import model_from_config

    model = model_from_config(state.model_config)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.model.items()})
    return model.eval()


def site_data(site, preprocess_config_json: str):
    """The site's preprocessed cohort and train/evaluation split, exactly as the site itself loads it."""
    from lsemvae.federation.runtime import load_site_data

    return load_site_data(site, preprocess_config_json)


def exact_scores(model, sites: list, preprocess_config_json: str, *,
                 limit: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{task: {"y": [N, C], "p": [N, C], "site": [N]}}``: the model's probabilities on every site's
    evaluation split (the records the sites hold out), pooled in site order; ``limit``: a fixed random subset
    of at most that many per site. What a benchmark computes exactly; a site itself releases only
    aggregates of it (:mod:`lsemvae.federation.private_eval`)."""
    from lsemvae.train.finetune import predict

    parts: dict[str, dict[str, list]] = {}
    for site in sites:
        data = site_data(site, preprocess_config_json)
        idx = data.eval_idx
        if limit is not None and len(idx) > limit:
            idx = np.sort(np.random.default_rng(0).choice(idx, limit, replace=False))
        preds = predict(model, data.dataset(idx, site.lead_names), data.tasks)
        for task, (y, p) in preds.items():
            part = parts.setdefault(task, {"y": [], "p": [], "site": []})
            part["y"].append(y)
            part["p"].append(p.astype(np.float64))
            part["site"].append(np.full(len(y), site.name))
    return {t: {k: np.concatenate(v) for k, v in part.items()} for t, part in parts.items()}


def label_counts(sites: list, preprocess_config_json: str) -> dict:
    """Per site and task: labelled and positive records in the training and evaluation splits."""
    out = {}
    for site in sites:
        data = site_data(site, preprocess_config_json)
        row = {}
        for t in data.tasks:
            y = np.asarray(data.cohort.labels[t])
            for split, idx in (("train", data.train_idx), ("eval", data.eval_idx)):
                ys = y[idx]
                row[f"{t}/{split}"] = {"labelled": int((~np.isnan(ys).all(1)).sum()),
                                       "positives": np.nansum(ys, 0).astype(int).tolist()}
        out[site.name] = row
    return out
