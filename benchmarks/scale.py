"""Scale: how cost grows with records and with sites, and the framework overhead of a round.

(a) Records (1k, 10k, 50k synthetic 12-lead ECGs at 100 Hz, one site): synthesis time
    (:func:`lsemvae.data.synthetic.write_cohort`, WFDB + labels.csv), cache build time and size on disk
    (:func:`lsemvae.data.cache.build_cohort`, one process), and one pretraining epoch
    (:func:`lsemvae.train.pretrain.train_epoch`, compact, batch 32) on the cache. The epoch is capped
    at ``--max-batches`` batches drawn at random from the whole cohort (so reads hit the whole
    memory map) and extrapolated to the full cohort linearly: epoch seconds = seconds per batch x
    ceil(N / 32). Each phase runs in its own process, so its peak RSS (``ru_maxrss``) is its own.

(b) Sites (2, 5, 10, 20 simulated sites, ``simulation/run.py``: the real ServerApp and ClientApp on
    Flower's simulation engine, tiny synthetic cohorts per site, untrained compact model, no DP, plus
    one DP point): per round the server's wall time, every site's handler time (the ``site-seconds``
    metric: data, model, DP accounting and the work itself), the server's stage times, and the
    server process' RSS after each round.

    Framework overhead (simulation): the engine runs P = (cores Ray sees) / (CPUs per site) = 2
    ClientApp actors at once. A round is one exchange: each site's train handler also evaluates the
    previous round's model and sends the result with its update. The client compute is the makespan of
    the sites' handler times on P workers (longest first, no dispatch cost): the best any scheduler
    could do with that work. overhead = round wall - client compute; it contains message passing, Ray
    dispatch, serialisation, the server's aggregation and idle polling. Rounds after the first are
    summarised (round 1 also builds each site's data cache, starts the actors and has no model to
    evaluate yet). The last model's evaluation, one evaluate message after the last round, is reported
    apart (``final_evaluate_s``).

(c) Deployment: flower-superlink and 2 flower-supernode processes (``client/run.py``) on
    127.0.0.1, same model and per-site data, ``flwr run``: the same overhead with P = 2 nodes, and per
    message the latency before the site's handler starts (SuperNode/SuperExec polling, a new
    ``flwr-clientapp`` process and its imports, the download) and after its reply (upload, the
    ServerApp's polling), from the sites' outgoing-message logs. A second run raises Flower's
    concurrent object transfers (``--object-concurrency``) to test whether per-object latency is the cost.
    The SuperLink keeps its state in memory by default (``--superlink-db file`` for SQLite).

    python -m benchmarks.scale --workers 2         # ~40 min on 2 shared cores (the 50k cache build dominates)
    python -m benchmarks.scale --quick             # < 3 min: 1k records, 2 sites, 2 rounds, no deployment
    python -m benchmarks.scale --records 1000 10000 --sites 2 5 --no-deployment

Writes benchmarks/results/scale.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import harness as H

REPO = H.REPO
RESULTS = REPO / "benchmarks" / "results"
BATCH = 32
OVERHEAD_DEFINITION = (
    "overhead = round wall time (server, run_round start to end) - client compute, where client compute = "
    "makespan_P(train site-seconds), makespan_P = longest-first greedy schedule of the sites' handler wall times "
    "on P parallel workers with zero dispatch cost; P = 2 ClientApp actors in simulation (2 cores / 1 CPU per "
    "site), P = 2 SuperNodes in deployment (one site each). site-seconds = wall time of the ClientApp handler from "
    "its first statement after its own imports to the reply (read message, load data, build model, DP accounting, "
    "evaluate the previous round's model, train; lazy imports inside the data layer included). Summaries use "
    "rounds 2..R (round 1 also builds site caches, starts workers and evaluates nothing); the last model's "
    "evaluation (one evaluate message after the last round) is outside every round's wall time.")


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1)


# ----------------------------------------------------------------------------- (a) records: one phase per process

def phase_synth(n: int, work: Path) -> dict:
    from lsemvae.data.synthetic import CohortSpec, SiteSpec, write_cohort

    spec = CohortSpec(seed=0, sites=[SiteSpec(name="scale", n_records=n, fs=100)])
    t0 = time.perf_counter()
    write_cohort(spec, work / "cohort", progress=False)
    wall = time.perf_counter() - t0
    return {"seconds": round(wall, 2), "records_per_s": round(n / wall, 1), "disk_mb": dir_mb(work / "cohort")}


def phase_cache(n: int, work: Path, workers: int) -> dict:
    from lsemvae.data.cache import build_cohort
    from lsemvae.data.sources import manifest_index
    from lsemvae.model.config import get_profile

    site = work / "cohort" / "scale"
    t0 = time.perf_counter()
    refs = manifest_index(site / "records", site / "labels.csv")
    index_s = time.perf_counter() - t0
    shutil.rmtree(work / "cache", ignore_errors=True)
    cohort = build_cohort(refs, [], get_profile("compact").preprocess_config(), work / "cache", name="scale",
                          progress=False, workers=workers)
    wall = time.perf_counter() - t0
    return {"seconds": round(wall, 2), "index_seconds": round(index_s, 2), "records_per_s": round(n / wall, 1),
            "records_kept": len(cohort), "skipped": len(cohort.skipped), "workers": workers,
            "disk_mb": dir_mb(work / "cache")}


def phase_epoch(n: int, work: Path, max_batches: int) -> dict:
    import numpy as np
    import torch

    from lsemvae.data.cache import CohortDataset, load_cohort
    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.pretrain import PretrainConfig, train_epoch

    torch.set_num_threads(1)
    cohort = load_cohort(next((work / "cache").glob("scale-*")))
    rng = np.random.default_rng(0)
    take = min(len(cohort), max_batches * BATCH)
    idx = np.sort(rng.choice(len(cohort), size=take, replace=False))
    torch.manual_seed(0)
    model = build_model(get_profile("compact"))
    cfg = PretrainConfig(batch_size=BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # untimed warm-up: a fresh process' first batches pay kernel selection and allocator growth
    train_epoch(model, CohortDataset(cohort, idx[: 2 * BATCH]), cfg, opt, epoch=1, progress=False)
    t0 = time.perf_counter()
    train_epoch(model, CohortDataset(cohort, idx), cfg, opt, epoch=1, progress=False)
    wall = time.perf_counter() - t0
    batches = math.ceil(take / BATCH)
    full = math.ceil(len(cohort) / BATCH)
    return {"timed_batches": batches, "timed_records": take, "timed_seconds": round(wall, 2),
            "seconds_per_batch": round(wall / batches, 3), "ecgs_per_s": round(take / wall, 1),
            "epoch_seconds": round(wall / batches * full, 1), "extrapolated": batches < full}


PHASES = {"synth": phase_synth, "cache": phase_cache, "epoch": phase_epoch}


def run_phase(phase: str, n: int, work: Path, extra: list[str]) -> dict:
    """Run one phase in a fresh process; its JSON line is the result (with that process' peak RSS)."""
    cmd = [sys.executable, "-m", "benchmarks.scale", "--phase", phase, str(n), str(work), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"phase {phase} {n} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def records_point(n: int, work: Path, args) -> dict:
    point = work / f"records-{n}"
    point.mkdir(parents=True, exist_ok=True)
    row: dict = {"records": n, "load_before": load()}
    try:
        for phase, extra in (("synth", []), ("cache", ["--workers", str(args.workers)]),
                             ("epoch", ["--max-batches", str(args.max_batches)])):
            print(f"  records {n}: {phase}...", flush=True)
            row[phase] = run_phase(phase, n, point, extra)
            row[phase]["load"] = load()
    finally:
        if not args.keep:
            shutil.rmtree(point, ignore_errors=True)
    return row


# ----------------------------------------------------------------------------- (b, c) sites

def makespan(times: list[float], workers: int) -> float:
    """Longest-first greedy schedule of ``times`` on ``workers`` parallel workers."""
    loads = [0.0] * max(1, workers)
    for t in sorted(times, reverse=True):
        loads[loads.index(min(loads))] += t
    return max(loads) if times else 0.0


def round_overhead(row: dict, workers: int) -> dict:
    """A round's wall time against its sites' handler times (train, with the previous model's evaluation)."""
    train = [t["site_seconds"] for t in row["train"].values()]
    if any(v is None for v in train):
        raise RuntimeError("a site reported no site-seconds: the ClientApp predates the timing metric")
    wall = row["seconds"]
    compute = makespan(train, workers)
    st = row.get("stage_seconds", {})
    out = {
        "round": row["round"], "wall_s": round(wall, 3),
        "client_compute_parallel_s": round(compute, 3),
        "client_compute_sum_s": round(sum(train), 3),
        "train_round_sum_s": round(sum(t["train_seconds"] for t in row["train"].values()), 3),
        "overhead_s": round(wall - compute, 3), "overhead_share": round((wall - compute) / wall, 4),
        "stage_s": {k: round(v, 3) for k, v in st.items()},
        "train_stage_overhead_s": round(st.get("train", math.nan) - compute, 3),
        "site_train_s": [round(v, 3) for v in train],
    }
    if "evaluate" in st:   # the last row: its model's evaluation came after the round
        out["final_evaluate_s"] = round(st["evaluate"], 3)
    return out


def message_latencies(rows: list[dict], audit_logs: list[Path]) -> list[dict]:
    """Per round and site: seconds from the server sending a message to the site's handler starting (pre), and
    from the handler's reply being logged at the site to the server's stage ending (post). From the server's
    stage times and each site's outgoing-message log (same machine, same clock). The final evaluate message (the
    last row's ``evaluate`` stage) is sent when the round's row is stamped, so its pre also holds the server's
    checkpoint of that round."""
    replies: dict[tuple[str, int, str], dict] = {}
    for path in audit_logs:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            seconds = (r.get("body") or {}).get("site_seconds")   # the reply's body, as the site logged it
            if seconds is not None:
                replies[(path.parent.name, int(r["group_id"]), r["message_type"])] = {"end": r["time"],
                                                                                    "seconds": seconds}
    out = []
    for row in rows:
        st = row["stage_seconds"]
        sends = {"train": row["time"] - row["seconds"] + st["wait_nodes"]}
        ends = {"train": sends["train"] + st["train"]}
        if "evaluate" in st:
            sends["evaluate"] = row["time"]
            ends["evaluate"] = row["time"] + st["evaluate"]
        for site in row["train"]:
            entry = {"round": row["round"], "site": site}
            for kind in sends:
                rep = replies.get((site, row["round"], kind))
                if rep:
                    entry[f"{kind}_pre_s"] = round(rep["end"] - rep["seconds"] - sends[kind], 2)
                    entry[f"{kind}_post_s"] = round(ends[kind] - rep["end"], 2)
            out.append(entry)
    return out


def summarise_rounds(per_round: list[dict]) -> dict:
    steady = [r for r in per_round if r["round"] > 1] or per_round
    mean = lambda k: round(sum(r[k] for r in steady) / len(steady), 3)  # noqa: E731
    wall = sum(r["wall_s"] for r in steady)
    return {"rounds_summarised": [r["round"] for r in steady], "round_wall_s": mean("wall_s"),
            "client_compute_parallel_s": mean("client_compute_parallel_s"),
            "client_compute_sum_s": mean("client_compute_sum_s"), "overhead_s": mean("overhead_s"),
            "overhead_share": round(sum(r["overhead_s"] for r in steady) / wall, 4),
            "train_stage_overhead_s": mean("train_stage_overhead_s"),
            "server_aggregate_s": round(sum(r["stage_s"].get("aggregate", 0) for r in steady) / len(steady), 3),
            "final_evaluate_s": next((r["final_evaluate_s"] for r in per_round if "final_evaluate_s" in r), None)}


def compact_checkpoint(path: Path) -> Path:
    """The real compact LS-EMVAE (untrained: a round costs the same as with pretrained weights)."""
    import torch

    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.checkpoint import save_checkpoint

    cfg = get_profile("compact")
    torch.manual_seed(0)
    model = build_model(cfg)
    return save_checkpoint(path, model=model, epoch=0, provenance={"preprocess_config": cfg.preprocess_config().model_dump(mode="json")})


class RoundWatcher:
    """Samples RSS of the processes under ``root`` by role; records them whenever metrics.jsonl gains a row."""

    def __init__(self, root_pid: int, metrics: Path):
        self.root, self.metrics = root_pid, metrics
        self.per_round: list[dict] = []
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RoundWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        done = 0
        while not self._stop.is_set():
            snap = H.rss_by_role(self.root)
            for role, rows in snap.items():
                if rows:
                    self.peak[role] = max(self.peak.get(role, 0.0), sum(rows.values()))
            try:
                rounds = sum(1 for line in self.metrics.read_text().splitlines() if line.strip())
            except OSError:
                rounds = 0
            if rounds > done:
                done = rounds
                self.per_round.append({"round": rounds, "load": load(),
                                       **{f"{role}_rss_mb": round(sum(v.values()), 1) for role, v in snap.items()}})
            self._stop.wait(0.25)


def sites_point(n_sites: int, work: Path, args, *, dp: bool) -> dict:
    out = work / f"sites-{n_sites}{'-dp' if dp else ''}"
    cmd = [sys.executable, str(REPO / "simulation" / "run.py"), "--sites", str(n_sites), "--records",
           str(args.site_records), "--rounds", str(args.rounds), "--batch-size", str(BATCH), "--checkpoint",
           str(args.checkpoint), "--out", str(out), "--round-timeout", "600"]
    cmd += ["--epsilon", "50"] if dp else ["--no-dp"]
    print(f"  {n_sites} sites{' (DP)' if dp else ''}: {' '.join(cmd[1:])}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "benchmark.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with RoundWatcher(proc.pid, out / "server" / "metrics.jsonl") as watch:
            try:
                rc = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                H.stop(proc, grace=30)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "server" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if rc != 0 or len(rows) < args.rounds:
        tail = (out / "benchmark.log").read_text()[-3000:]
        raise RuntimeError(f"simulation with {n_sites} sites failed (exit {rc}, {len(rows)} rounds):\n{tail}")
    per_round = [round_overhead(r, workers=2) for r in rows]
    latencies = message_latencies(rows, sorted((out / "site-state").glob("*/outgoing-messages.jsonl")))
    server_rss = [r.get("server_rss_mb") for r in watch.per_round]
    result = {"sites": n_sites, "dp": dp, "records_per_site": args.site_records, "rounds": args.rounds,
              "process_seconds": round(wall, 1), "workers_P": 2, "per_round": per_round,
              **summarise_rounds(per_round), "message_latency": latencies, "rss_after_round": watch.per_round,
              "server_rss_mb": server_rss, "server_rss_growth_mb": round(server_rss[-1] - server_rss[0], 1)
              if len(server_rss) > 1 and None not in server_rss else None,
              "peak_rss_mb": {k: round(v, 1) for k, v in watch.peak.items()}}
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def deployment_point(work: Path, args, *, object_concurrency: int | None = None) -> dict:
    """flower-superlink + 2 SuperNodes (client/run.py) on loopback; same model and site size.

    ``object_concurrency`` sets Flower's (private, undocumented) limits on concurrent object pushes and pulls
    (default 2) in every process: a probe of whether per-object transfer latency is what the overhead is made of.
    """
    from lsemvae.data.synthetic import default_cohort, spec_with_overrides
    from simulation.run import run_config_arg

    tmp = work / ("deployment" if object_concurrency is None else f"deployment-objects{object_concurrency}")
    tmp.mkdir(parents=True, exist_ok=True)
    spec = spec_with_overrides(default_cohort(), sites=2, records=args.site_records, seed=7)
    paths = H.synthetic_sites(spec, tmp, val_fraction=0.3, epsilon=50.0, evaluation={"min_cell": 2, "min_records": 4})
    names = [p.stem for p in paths]
    port, node_ports = H.free_port(), [H.free_port(), H.free_port()]
    bindir = Path(sys.executable).parent
    env = {"PATH": os.pathsep.join([str(bindir), os.environ.get("PATH", "")]), "FLWR_HOME": str(tmp / "flwr-home")}
    if object_concurrency:
        env |= {"FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES": str(object_concurrency),
                "FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PULLS": str(object_concurrency)}
    (tmp / "flwr-home").mkdir(exist_ok=True)
    (tmp / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    out = tmp / "server-out"
    procs: list[subprocess.Popen] = []
    t0 = time.perf_counter()
    try:
        database = ["--database", str(tmp / "state.db")] if args.superlink_db == "file" else []
        link = H.start([str(bindir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                      *database, "--disable-runtime-dependency-installation"], tmp / "superlink.log", env=env, cwd=tmp)
        procs.append(link)
        H.wait_healthy(port, link)
        for name, node_port in zip(names, node_ports):
            procs.append(H.start([sys.executable, str(REPO / "client" / "run.py"), "--site", name, "--sites-dir",
                                  str(tmp / "sites"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--port",
                                str(node_port), "--max-retries", "20"], tmp / f"{name}.log", env=env, cwd=tmp))
        run_cfg = {"num-server-rounds": args.deployment_rounds, "min-sites": 2, "round-timeout": 600.0, "batch-size": BATCH,
                   "checkpoint": str(args.checkpoint), "out-dir": str(out), "dp": False}
        res = subprocess.run([str(bindir / "flwr"), "run", str(REPO), "bench", "--stream", "--run-config",
                              run_config_arg(run_cfg)], capture_output=True, text=True, timeout=args.timeout,
                             cwd=tmp, env={**os.environ, **H.QUIET_ENV, **env})
        (tmp / "flwr-run.log").write_text(res.stdout + res.stderr)
    finally:
        H.stop(*procs)   # also the flwr-serverapp / flwr-clientapp processes, which run in sessions of their own
    wall = time.perf_counter() - t0
    rows = ([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            if (out / "metrics.jsonl").is_file() else [])
    if res.returncode != 0 or len(rows) < args.deployment_rounds:
        raise RuntimeError(f"deployment run failed (exit {res.returncode}, {len(rows)} rounds; logs in {tmp}): "
                           f"{res.stdout[-1500:]}{res.stderr[-1500:]}")
    per_round = [round_overhead(r, workers=2) for r in rows]
    latencies = message_latencies(rows, sorted((tmp / "site-state").glob("*/outgoing-messages.jsonl")))
    result = {"sites": 2, "dp": False, "records_per_site": args.site_records, "rounds": args.deployment_rounds,
              "superlink_db": args.superlink_db, "flower_object_concurrency": object_concurrency or 2,
              "process_seconds": round(wall, 1), "workers_P": 2, "per_round": per_round, **summarise_rounds(per_round),
              "message_latency": latencies}
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- main

def summary(res: dict) -> dict:
    s: dict = {}
    for row in res.get("records", []):
        n = f"{row['records'] // 1000}k" if row["records"] >= 1000 else str(row["records"])
        s[f"{n} records: synthesis (s)"] = row["synth"]["seconds"]
        s[f"{n} records: cache build (s)"] = row["cache"]["seconds"]
        s[f"{n} records: cache on disk (MB)"] = row["cache"]["disk_mb"]
        s[f"{n} records: pretraining epoch (s{', extrapolated' if row['epoch']['extrapolated'] else ''})"] = \
            row["epoch"]["epoch_seconds"]
        s[f"{n} records: peak RSS, max over phases (MB)"] = max(row[p]["peak_rss_mb"] for p in PHASES)
    for row in res.get("sites", []):
        tag = f"{row['sites']} sites{' DP' if row['dp'] else ''}"
        s[f"{tag}: round wall (s)"] = row["round_wall_s"]
        s[f"{tag}: client compute, parallel (s)"] = row["client_compute_parallel_s"]
        s[f"{tag}: framework overhead (% of round)"] = round(100 * row["overhead_share"], 1)
        s[f"{tag}: server RSS growth over rounds (MB)"] = row["server_rss_growth_mb"]
    for key, tag in (("deployment", "deployment 2 sites"),
                     ("deployment_object_concurrency", "deployment 2 sites, Flower object concurrency raised")):
        dep = res.get(key)
        if dep:
            s[f"{tag}: round wall (s)"] = dep["round_wall_s"]
            s[f"{tag}: client compute, parallel (s)"] = dep["client_compute_parallel_s"]
            s[f"{tag}: framework overhead (% of round)"] = round(100 * dep["overhead_share"], 1)
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1k records, 2 sites, 2 rounds, no DP point or deployment")
    p.add_argument("--records", type=int, nargs="*", default=None, help="record counts (default 1000 10000 50000)")
    p.add_argument("--sites", type=int, nargs="*", default=None, help="site counts (default 2 5 10 20)")
    p.add_argument("--dp-sites", type=int, default=5, help="site count of the DP reference point (0: none)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per simulation (default 3, quick 2)")
    p.add_argument("--site-records", type=int, default=48, help="synthetic records per simulated site (default 48)")
    p.add_argument("--max-batches", type=int, default=20, help="timed pretraining batches per record count")
    p.add_argument("--workers", type=int, default=1, help="cache build processes (default 1, as `lsemvae data prepare`)")
    p.add_argument("--no-deployment", action="store_true", help="skip the superlink + 2 supernodes measurement")
    p.add_argument("--deployment-rounds", type=int, default=2, help="rounds of the deployment run (default 2)")
    p.add_argument("--object-concurrency", type=int, default=16,
                   help="also run the deployment with Flower's concurrent object transfers raised to this (0: skip)")
    p.add_argument("--superlink-db", choices=["memory", "file"], default="memory",
                   help="deployment SuperLink state: in memory (default) or an SQLite file (--database; under heavy "
                   "machine load its 5 s lock timeout can fail a run)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a federated run is abandoned")
    p.add_argument("--keep", action="store_true", help="keep the scratch folders (cohorts, caches, run outputs)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    p.add_argument("--phase", nargs=3, metavar=("PHASE", "N", "DIR"), help=argparse.SUPPRESS)  # internal: one phase
    args = p.parse_args(argv)

    if args.phase:
        phase, n, work = args.phase
        kwargs = {"cache": {"workers": args.workers}, "epoch": {"max_batches": args.max_batches}}.get(phase, {})
        out = PHASES[phase](int(n), Path(work), **kwargs)
        print(json.dumps({**out, "peak_rss_mb": peak_rss_mb()}))
        return 0

    records = args.records if args.records is not None else ([1000] if args.quick else [1000, 10_000, 50_000])
    sites = args.sites if args.sites is not None else ([2] if args.quick else [2, 5, 10, 20])
    args.rounds = args.rounds or (2 if args.quick else 3)
    dp_sites = 0 if args.quick else args.dp_sites
    deployment = not (args.quick or args.no_deployment)
    started = time.monotonic()
    res: dict = {"load_at_start": load()}

    def write(partial: bool) -> dict:
        """The results so far (after every section, so a later failure keeps the finished parts)."""
        res["summary"] = summary(res)
        result = {"quick": args.quick, "partial": partial, "overhead_definition": OVERHEAD_DEFINITION,
                  "epoch_note": f"pretraining epoch timed on at most {args.max_batches} random batches of {BATCH} and "
                                "extrapolated linearly to the whole cohort",
                  "load_at_end": load(), **res}
        return H.write_results(args.out, H.meta("scale", argv, started), result)
        return result

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scale-", dir=REPO / "runs")))
        work.mkdir(parents=True, exist_ok=True)
        work = work.resolve()  # processes below run in other working directories
        if records:
            print("records:", flush=True)
            res["records"] = [records_point(n, work, args) for n in records]
            write(partial=True)
        if sites or dp_sites or deployment:
            args.checkpoint = compact_checkpoint(work / "compact.pt")
        if sites or dp_sites:
            print("sites (simulation):", flush=True)
            res["sites"] = [sites_point(n, work, args, dp=False) for n in sites]
            if dp_sites:
                res["sites"].append(sites_point(dp_sites, work, args, dp=True))
            write(partial=True)
        if deployment:
            print("deployment (superlink + 2 supernodes):", flush=True)
            res["deployment"] = deployment_point(work, args)
            if args.object_concurrency:
                print(f"deployment, object concurrency {args.object_concurrency}:", flush=True)
                res["deployment_object_concurrency"] = deployment_point(work, args,
                                                                        object_concurrency=args.object_concurrency)
    result = write(partial=False)
    for k, v in result["summary"].items():
        print(f"{k:60s} {v}")
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
