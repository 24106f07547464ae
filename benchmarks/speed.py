"""Speed on this machine: throughput, latency, memory, cache build rate, data-loading share, profiles.

Everything runs the project's own code on real PTB-XL (``--ptbxl``, default ../shared/data/ptb-xl):
  * cache build rate: :func:`lsemvae.data.cache.build_cohort` of every 100 Hz record into a fresh
    temporary cache (records/s, single process, as ``lsemvae data prepare`` does by default);
  * pretraining: :func:`lsemvae.train.pretrain.train_epoch`, compact profile, 12 leads, batch 32
    (expert dropout, augmentation, decoders, AdamW, clipping), ECGs/s over one epoch;
  * fine-tuning, 6 limb leads, superclass task, batch 32: ``full`` = :func:`train_one_epoch` on the
    whole model (encoders train); ``probe`` = what :func:`finetune` does for a probe (one frozen-encoder
    pass caching the posteriors, then epochs over the cache), both parts timed;
  * a site's federated step: :func:`lsemvae.federation.training.train_round` on PTB-XL recording site 1
    (6 leads, ``configs/sites/ptbxl-site1.toml``), with Opacus DP-SGD and without, encoders trained;
    their throughput ratio is measured in the same run, beside ``dp_throughput.json`` (the encoder-only
    microbenchmark). Also the DP round as the federation runs it by default (``train-encoders = "auto"``:
    a probe under DP, the frozen encoders still run every step), against the non-DP round;
  * inference latency per ECG (compact, 6 leads, eval mode, no decoders): batch 1 and batch 64,
    median and 95th percentile over repeats;
  * data-loading share: time spent inside the DataLoader iterator's ``__next__`` (fetch + collate)
    over the wall time of the training loop, for pretraining and for the site's DP step;
  * peak memory: ``resource.getrusage`` maximum RSS of this process after each part (the headline is the
    peak before the profilers run: torch.profiler holds every event in memory);
  * profiles: torch.profiler over one pretraining epoch and one site round (train + evaluate), top
    operators by self CPU time; and py-spy (if installed) over one round of a 2-site simulation: CPU
    samples per process role (ServerApp, site actors, SuperLink, Ray...) and each role's top functions.

Timed parts are interleaved over ``--repeats`` and the median is kept; ratios pair runs made next to
each other. ``os.getloadavg()`` is recorded with every timing (the machine is shared).

    python -m benchmarks.speed              # ~10-20 min on 2 shared cores
    python -m benchmarks.speed --quick      # ~2 min: fewer records and repeats, no simulation profile

Writes benchmarks/results/speed.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data.dataloader import _BaseDataLoaderIter

from benchmarks import harness as H

REPO, RESULTS = H.REPO, H.RESULTS


# ----------------------------------------------------------------------------- measurement helpers

def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


class LoaderTimer:
    """Seconds spent inside any DataLoader iterator's ``__next__`` (fetch + collate + Opacus' Poisson
    batch sampling) while active. Patches the base iterator class, so loaders built inside the
    project's training functions are measured without changing them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.batches = 0

    def __enter__(self) -> "LoaderTimer":
        self._orig = _BaseDataLoaderIter.__next__
        timer = self

        def timed_next(it):
            t0 = time.perf_counter()
            try:
                return timer._orig(it)
            finally:
                timer.seconds += time.perf_counter() - t0
                timer.batches += 1

        _BaseDataLoaderIter.__next__ = timed_next
        return self

    def __exit__(self, *exc) -> None:
        _BaseDataLoaderIter.__next__ = self._orig


def timed(fn, *args, **kwargs) -> tuple[float, list[float], object]:
    """(seconds in DataLoader iterators, load average, result) of one call."""
    with LoaderTimer() as lt:
        out = fn(*args, **kwargs)
    return lt.seconds, load(), out


def med(values: list[float], nd: int = 3) -> float:
    return round(statistics.median(values), nd)


# ----------------------------------------------------------------------------- data

def ptbxl_refs(root: Path, limit: int | None) -> list:
    from lsemvae.data.sources import ptbxl_index

    refs = sorted(ptbxl_index(root, rate=100), key=lambda r: r.record_id)
    return refs[:limit] if limit else refs


def cache_build(refs: list, work: Path) -> tuple[dict, object]:
    """Build the superclass cohort into a fresh cache dir; the rate counts every record read."""
    from lsemvae.data.cache import build_cohort
    from lsemvae.model.config import get_profile

    cache_dir = work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0, la = time.perf_counter(), load()
    cohort = build_cohort(refs, ["superclass"], get_profile("compact").preprocess_config(), cache_dir, name="ptb-xl",
                          progress=False)
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
    return {"records_in": len(refs), "records_kept": len(cohort), "records_skipped": len(cohort.skipped),
            "seconds": round(wall, 2), "records_per_s": round(len(refs) / wall, 1),
            "cache_mb": round(size / 1e6, 1), "load_before": la, "load_after": load()}, cohort


# ----------------------------------------------------------------------------- model work

def compact_model(tasks: dict | None = None):
    from lsemvae.model.config import TaskHeadSpec, get_profile
    from lsemvae.model.lsemvae import build_model

    heads = {n: TaskHeadSpec(kind=t.kind, n_outputs=t.n_outputs).model_dump() for n, t in (tasks or {}).items()}
    return build_model(get_profile("compact", tasks=heads))


def pretrain_epoch(cohort, idx, batch: int, seed: int) -> float:
    """Seconds of one pretraining epoch of a fresh compact model."""
    from lsemvae.data.cache import CohortDataset
    from lsemvae.train.pretrain import PretrainConfig, train_epoch

    torch.manual_seed(seed)
    model = compact_model()
    cfg = PretrainConfig(batch_size=batch, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    train_epoch(model, CohortDataset(cohort, idx), cfg, opt, epoch=1, progress=False)
    return time.perf_counter() - t0


def finetune_full_epoch(cohort, idx, batch: int, seed: int) -> float:
    """Seconds of one full fine-tuning epoch (fresh compact model, 6 limb leads)."""
    from lsemvae.data.cache import CohortDataset
    from lsemvae.data.tasks import get_task
    from lsemvae.train.finetune import FINETUNE_PROFILES, make_optimizer, set_trainable, train_one_epoch

    tasks = {"superclass": get_task("superclass")}
    cfg = FINETUNE_PROFILES["compact"].model_copy(update={"batch_size": batch, "mode": "full"})
    torch.manual_seed(seed)
    model = compact_model(tasks)
    set_trainable(model, "full")
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(CohortDataset(cohort, idx, leads="6L", tasks=["superclass"]),
                                         batch_size=batch, shuffle=True, generator=gen)
    opt = make_optimizer(model, cfg)
    t0 = time.perf_counter()
    train_one_epoch(model, loader, opt, tasks, max_grad_norm=cfg.grad_clip, augmentation=cfg.augment, generator=gen)
    return time.perf_counter() - t0


def finetune_probe(cohort, idx, batch: int, seed: int, epochs: int) -> dict:
    """The probe path of :func:`finetune`: one encoder pass to cache posteriors, then head epochs."""
    from lsemvae.data.cache import CohortDataset
    from lsemvae.data.tasks import get_task
    from lsemvae.train.finetune import (
        FINETUNE_PROFILES, _CachedPosteriors, _ProbeOnCache, make_optimizer, set_trainable, train_one_epoch,
    )

    tasks = {"superclass": get_task("superclass")}
    cfg = FINETUNE_PROFILES["compact"].model_copy(update={"batch_size": batch, "mode": "probe"})
    torch.manual_seed(seed)
    model = compact_model(tasks)
    set_trainable(model, "probe")
    t0 = time.perf_counter()
    cached = _CachedPosteriors(model, CohortDataset(cohort, idx, leads="6L", tasks=["superclass"]))
    encode = time.perf_counter() - t0
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        loader = torch.utils.data.DataLoader(cached, batch_size=batch, shuffle=True, generator=gen)
        train_one_epoch(_ProbeOnCache(model), loader, opt, tasks, max_grad_norm=cfg.grad_clip)
    return {"encode_s": encode, "epochs_s": time.perf_counter() - t0}


def site_setup(work: Path, quick: bool):
    """PTB-XL recording site 1 (6 leads) as the ClientApp loads it, with state under ``work``."""
    from lsemvae.federation.runtime import load_site_data
    from lsemvae.model.config import get_profile
    from lsemvae.site import load_site_config

    site = load_site_config(REPO / "configs" / "sites" / "ptbxl-site1.toml")
    data_cfg = site.data.model_copy(update={"max_records": 96 if quick else None})
    site = site.model_copy(update={"state_dir": work / "site-state", "data": data_cfg})
    data = load_site_data(site, get_profile("compact").preprocess_config().model_dump_json())
    return site, data


def site_round(site, data, *, dp: bool, batch: int, seed: int, profile: bool = False, train_encoders: bool = True):
    """One local round as the ClientApp runs it (fresh model = the global weights), then evaluate."""
    from lsemvae.federation.training import evaluate, train_round

    torch.manual_seed(seed)
    model = compact_model(data.tasks)
    result = train_round(model, data, site, lr=1e-3, batch_size=batch, local_epochs=1, proximal_mu=0.0, dp=dp,
                         noise_multiplier=1.0 if dp else None, history=[] if dp else None, seed=seed,
                         train_encoders=train_encoders)
    if profile:
        evaluate(model if not dp else compact_model(data.tasks), data, site)
    return result


def latency(batch: int, repeats: int, seed: int = 0) -> dict:
    """Per-ECG inference latency (ms): compact, 6 limb leads, eval mode, logits only (no decoders)."""
    from lsemvae.data.tasks import get_task
    from lsemvae.leads import LIMB_LEADS, lead_index

    torch.manual_seed(seed)
    model = compact_model({"superclass": get_task("superclass")}).eval()
    x = torch.randn(batch, 12, 1000)
    mask = torch.zeros(batch, 12, dtype=torch.bool)
    mask[:, [lead_index(l) for l in LIMB_LEADS]] = True
    x[~mask] = 0.0
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            model.forward_logits(x, mask)
            if i >= 3:  # warm-up calls left out
                times.append((time.perf_counter() - t0) / batch * 1000)
    return {"batch": batch, "calls": repeats, "median_ms_per_ecg": med(times), "p95_ms_per_ecg":
            round(float(np.percentile(times, 95)), 3), "mean_ms_per_ecg": round(float(np.mean(times)), 3),
            "load": load()}


# ----------------------------------------------------------------------------- profiles

def torch_profile(fn, top: int) -> dict:
    """Top operators by self CPU time over one call of ``fn`` (torch.profiler, CPU activity)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    loader = [e for e in events if e.key.startswith("enumerate(DataLoader)")]
    return {
        "wall_s_under_profiler": round(wall, 2),
        "self_cpu_s_total": round(total_self / 1e6, 2),
        "dataloader_next_s": round(sum(e.cpu_time_total for e in loader) / 1e6, 3),
        "top_self_cpu": [{"op": e.key, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
                          "share": round(e.self_cpu_time_total / total_self, 3), "calls": e.count} for e in rows],
    }


ROLES = (("server (ServerApp, flwr-simulation)", "flwr-simulation"), ("sites (ClientApp Ray actors)", "default_worker.py"),
         ("superlink", "flower-superlink"), ("superexec", "flower-superexec"), ("flwr run", "flwr run"),
         ("ray services", "/ray/"))
# py-spy names a frame "function (path:line)" with the path relative to its sys.path entry: ours start with a package.
PROJECT_FRAME = re.compile(r"\((?:[^()]*/)?(?:lsemvae|server|client|simulation)/[\w/]+\.py:\d+\)$")
LIBRARY_FRAME = re.compile(r"\((?:flwr|ray|torch|opacus|numpy|scipy)/")


def _role(frames: list[str]) -> str:
    """The role of the innermost process in a py-spy ``--subprocesses`` raw stack."""
    procs = [f for f in frames if f.startswith("process ")]
    cmd = procs[-1] if procs else ""
    return next((role for role, needle in ROLES if needle in cmd), "launcher and other")


def pyspy_simulation_round(work: Path, top: int) -> dict:
    """py-spy (CPU samples only, no idle) over a 2-site, 1-round non-DP simulation (real ServerApp/ClientApp,
    Flower simulation engine, the tests' narrow model): samples per process role, each role's top functions by
    self samples, and its top project functions by inclusive samples."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    ckpt = H.narrow_checkpoint(work / "sim-ckpt.pt")
    folded = work / "pyspy.txt"
    shutil.rmtree(work / "sim", ignore_errors=True)
    cmd = [sys.executable, str(REPO / "simulation" / "run.py"), "--sites", "2", "--records", "48", "--rounds", "1",
           "--no-dp", "--batch-size", "16", "--checkpoint", str(ckpt), "--out", str(work / "sim")]
    spy = [pyspy, "record", "--subprocesses", "--rate", "50", "--format", "raw", "--output", str(folded),
           "--nonblocking", "--", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(spy, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not folded.is_file():
        return {"skipped": f"py-spy failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-400:]}"}
    return {"command": " ".join(cmd), "wall_s": round(wall, 1), "rate_hz": 50, "idle_samples": False,
            "note": "CPU samples of every process the simulation starts; a role's share of all samples is its share "
                    "of the run's CPU time (py-spy's own load included in the wall time)",
            "roles": pyspy_roles(folded, top)}


def pyspy_roles(folded: Path, top: int) -> dict:
    """Samples per process role from py-spy's raw output, with each role's top functions."""
    self_by: dict[str, dict[str, int]] = {}
    incl_by: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames or not count.isdigit():
            continue
        n, role = int(count), _role(frames)
        code = [f for f in frames if not f.startswith("process ")]
        totals[role] = totals.get(role, 0) + n
        if code:
            self_by.setdefault(role, {})[code[-1]] = self_by.get(role, {}).get(code[-1], 0) + n
        for f in {f for f in code if PROJECT_FRAME.search(f) and not LIBRARY_FRAME.search(f)}:
            incl_by.setdefault(role, {})[f] = incl_by.get(role, {}).get(f, 0) + n
    grand = sum(totals.values()) or 1

    def ranked(counts: dict[str, int], total: int) -> list[dict]:
        return [{"function": f, "samples": c, "share_of_role": round(c / total, 3)}
                for f, c in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    return {role: {"samples": n, "share_of_all": round(n / grand, 3), "top_self": ranked(self_by.get(role, {}), n),
                   "top_project_inclusive": ranked(incl_by.get(role, {}), n)}
            for role, n in sorted(totals.items(), key=lambda kv: -kv[1])}


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ptbxl", type=Path, default=REPO.parent / "shared" / "data" / "ptb-xl")
    p.add_argument("--quick", action="store_true", help="256 records, 1 repeat, no simulation profile (~2 min)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats of each timing (default 3, quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top", type=int, default=12, help="hotspots kept per profile")
    p.add_argument("--no-pyspy", action="store_true", help="skip the py-spy profile of a simulated round")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--out", type=Path, default=RESULTS / "speed.json")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    seed, batch = 0, args.batch_size
    started = time.monotonic()

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="speed-")))
        work.mkdir(parents=True, exist_ok=True)
        res: dict = {"load_at_start": load()}

        print("cache build (PTB-XL, 100 Hz)...", flush=True)
        refs = ptbxl_refs(args.ptbxl, 256 if args.quick else None)
        res["cache_build"], cohort = cache_build(refs, work)
        res["cache_build"]["peak_rss_mb_after"] = peak_rss_mb()
        print(f"  {res['cache_build']['records_per_s']} records/s", flush=True)

        from lsemvae.data.cache import patient_split

        train_idx, _, _ = patient_split(cohort, 0.1, seed=seed)
        site, data = site_setup(work, args.quick)
        n_site = len(data.train_idx)

        # Warm-up (untimed): first calls pay imports (Opacus), allocator growth and oneDNN kernel selection.
        print("warm-up...", flush=True)
        pretrain_epoch(cohort, train_idx[:64], batch, seed)
        finetune_full_epoch(cohort, train_idx[:64], batch, seed)
        finetune_probe(cohort, train_idx[:64], batch, seed, 1)
        for dp in (False, True):
            site_round(site, data, dp=dp, batch=batch, seed=seed)
        site_round(site, data, dp=True, batch=batch, seed=seed, train_encoders=False)

        # Interleaved repeats: every kind of work once per repeat, so load changes hit all alike.
        runs: dict[str, list] = {k: [] for k in ("pretrain", "ft_full", "ft_probe", "site_dp", "site_nodp",
                                                  "site_dp_probe")}
        for r in range(repeats):
            print(f"repeat {r + 1}/{repeats}", flush=True)
            dl, la, sec = timed(pretrain_epoch, cohort, train_idx, batch, seed + r)
            runs["pretrain"].append((sec, dl, la))
            dl, la, sec = timed(finetune_full_epoch, cohort, train_idx, batch, seed + r)
            runs["ft_full"].append((sec, dl, la))
            _, la, probe = timed(finetune_probe, cohort, train_idx, batch, seed + r, 5)
            runs["ft_probe"].append((probe["encode_s"], probe["epochs_s"] / 5, la))
            for key, dp, enc in (("site_nodp", False, True), ("site_dp", True, True), ("site_dp_probe", True, False)):
                dl, la, out = timed(site_round, site, data, dp=dp, batch=batch, seed=seed + r, train_encoders=enc)
                runs[key].append((out.seconds, dl, la))
            res.setdefault("peak_rss_mb_after_training", peak_rss_mb())

        n = len(train_idx)

        def throughput(key: str, records: int) -> dict:
            walls = [w for w, _, _ in runs[key]]
            shares = [dl / w for w, dl, _ in runs[key]]
            return {"records": records, "ecgs_per_s": round(records / statistics.median(walls), 1),
                    "epoch_seconds": [round(w, 2) for w in walls], "loader_share": med(shares),
                    "loader_share_runs": [round(s, 4) for s in shares], "load": [la for _, _, la in runs[key]]}

        res["pretraining"] = {"what": "train_epoch, compact, 12 leads, batch %d, PTB-XL train split" % batch,
                              **throughput("pretrain", n)}
        res["finetune_full"] = {"what": "train_one_epoch, compact full (encoders train), 6 leads, superclass, batch %d"
                                % batch, **throughput("ft_full", n)}
        enc = [e for e, _, _ in runs["ft_probe"]]
        ep = [e for _, e, _ in runs["ft_probe"]]
        res["finetune_probe"] = {
            "what": "finetune()'s probe path: one frozen-encoder pass caching posteriors, then epochs on the cache",
            "records": n, "encode_pass_ecgs_per_s": round(n / statistics.median(enc), 1),
            "epoch_on_cache_ecgs_per_s": round(n / statistics.median(ep), 1),
            "encode_seconds": [round(v, 2) for v in enc], "epoch_seconds": [round(v, 3) for v in ep],
            "load": [la for _, _, la in runs["ft_probe"]]}
        dp_t, nodp_t = throughput("site_dp", n_site), throughput("site_nodp", n_site)
        ratios = [nd / d for (d, _, _), (nd, _, _) in zip(runs["site_dp"], runs["site_nodp"])]
        probe_ratios = [nd / d for (d, _, _), (nd, _, _) in zip(runs["site_dp_probe"], runs["site_nodp"])]
        res["site_round"] = {
            "what": "lsemvae.federation.training.train_round on PTB-XL recording site 1 (6 leads, superclass + right_heart), "
                    "batch %d, 1 local epoch; seconds include make_private and the weight copy-out" % batch,
            "dp": dp_t, "non_dp": nodp_t, "dp_to_non_dp_throughput_ratio": med(ratios),
            "ratio_runs": [round(v, 3) for v in ratios],
            "dp_probe": {"what": "DP round with frozen encoders (train_encoders=False): what a site runs under DP by "
                                 "default", **throughput("site_dp_probe", n_site)},
            "dp_probe_to_non_dp_throughput_ratio": med(probe_ratios),
            "dp_probe_ratio_runs": [round(v, 3) for v in probe_ratios]}
        micro = RESULTS / "dp_throughput.json"
        if micro.is_file():
            rows = json.loads(micro.read_text())["results"]
            res["dp_throughput_microbenchmark"] = {
                "source": "benchmarks/results/dp_throughput.json (python -m benchmarks.dp_throughput)",
                "batch_32": {r["mode"]: r["ratio_to_non_dp"] for r in rows if r["batch_size"] == 32}}

        print("inference latency...", flush=True)
        res["inference"] = {"batch_1": latency(1, 30 if args.quick else 200),
                            "batch_64": latency(64, 5 if args.quick else 30)}

        res["peak_rss_mb_before_profiling"] = peak_rss_mb()
        print("profiles...", flush=True)
        prof_idx = train_idx[: 256] if args.quick else train_idx
        res["profile_pretrain_epoch"] = torch_profile(lambda: pretrain_epoch(cohort, prof_idx, batch, seed), args.top)
        res["profile_site_round_dp"] = torch_profile(
            lambda: site_round(site, data, dp=True, batch=batch, seed=seed, profile=True), args.top)
        if not (args.quick or args.no_pyspy):
            print("py-spy over a simulated round...", flush=True)
            res["profile_simulation_round"] = pyspy_simulation_round(work, args.top)
        res["peak_rss_mb_with_profilers"] = peak_rss_mb()  # torch.profiler keeps every event in memory

    res["summary"] = summary(res)
    result = H.write_results(args.out, H.meta("speed", argv, started),
                             {"quick": args.quick, "repeats": repeats, "threads": args.threads, "load_at_end": load(),
                              "note": "2 cores shared with other users' jobs: absolute timings are noisy, ratios are "
                                      "paired", **res})
    for k, v in result["summary"].items():
        print(f"{k:55s} {v}")
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


def summary(res: dict) -> dict:
    s = {
        "cache build, PTB-XL 100 Hz (records/s)": res["cache_build"]["records_per_s"],
        "pretraining, compact 12-lead batch 32 (ECGs/s)": res["pretraining"]["ecgs_per_s"],
        "fine-tuning full, 6-lead (ECGs/s)": res["finetune_full"]["ecgs_per_s"],
        "fine-tuning probe, epoch on cached posteriors (ECGs/s)": res["finetune_probe"]["epoch_on_cache_ecgs_per_s"],
        "fine-tuning probe, one-off encoder pass (ECGs/s)": res["finetune_probe"]["encode_pass_ecgs_per_s"],
        "site round DP-SGD (ECGs/s)": res["site_round"]["dp"]["ecgs_per_s"],
        "site round non-DP (ECGs/s)": res["site_round"]["non_dp"]["ecgs_per_s"],
        "DP / non-DP throughput, site round (ratio)": res["site_round"]["dp_to_non_dp_throughput_ratio"],
        "site round DP-SGD, probe: the federation's default under DP (ECGs/s)":
            res["site_round"]["dp_probe"]["ecgs_per_s"],
        "site round, the federation's defaults: DP probe over non-DP full training (throughput ratio)":
            res["site_round"]["dp_probe_to_non_dp_throughput_ratio"],
        "inference batch 1, median (ms/ECG)": res["inference"]["batch_1"]["median_ms_per_ecg"],
        "inference batch 1, p95 (ms/ECG)": res["inference"]["batch_1"]["p95_ms_per_ecg"],
        "inference batch 64, median (ms/ECG)": res["inference"]["batch_64"]["median_ms_per_ecg"],
        "inference batch 64, p95 (ms/ECG)": res["inference"]["batch_64"]["p95_ms_per_ecg"],
        "data loading share, pretraining (%)": round(100 * res["pretraining"]["loader_share"], 1),
        "data loading share, site DP step (%)": round(100 * res["site_round"]["dp"]["loader_share"], 1),
        "peak RSS, training + inference (MB)": res["peak_rss_mb_before_profiling"],
    }
    return s  # the encoder microbenchmark's DP ratio has its own row from dp_throughput.json


if __name__ == "__main__":
    sys.exit(main())
