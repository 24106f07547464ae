"""A model that travels: leave-one-source-out on the shared data.

Sources are the institutions we have: PTB-XL's recording sites with at least ``--min-site-records`` usable staged
records (sites 1, 0 and 3; the smaller ones always train) and LUDB (another institution, country and device). For
each held-out source and seed a compact LS-EMVAE is fine-tuned on the other sources (6 limb leads, the five
diagnostic superclasses): PTB-XL folds 1-8 and 85% of LUDB's patients train, fold 9 and LUDB's other patients stop
early; as the README's quick start, the model is first pretrained (``--pretrain-epochs``, here per held-out
source on the other sources' 12-lead ECGs, PTB-XL fold 10 left out) and then fully fine-tuned. It is scored on

* internal: PTB-XL fold 10 of the training sites (records like the ones it trained on), and
* external: every record of the held-out source,

and the gap is external - internal macro AUROC (seed means, bootstrap 95% CIs over records). A recipe that
travels better must not cost accuracy inside: each recipe is also scored on PTB-XL fold 10 (train folds 1-8, all
sites, early stopping on fold 9, the README's benchmark), with the same seeds; holding LUDB out is exactly that
training, so its internal score is the fold-10 result.

LUDB has no superclass labels: its cardiologists' statements are mapped (:func:`ludb_superclasses`; part of any
external gap is such label mapping, as it is for any outside database).

Recipes (fine-tuning augmentation, :class:`lsemvae.train.augment.AugmentConfig`):

  baseline        the compact recipe before this benchmark: 5-s crops, per-lead gain x(1 + N(0, 0.1)), noise
  gain            + one gain factor per record exp(N(0, 0.2)): devices calibrate differently
  axis            + frontal heart-vector rotation N(0, 15 deg) (the six limb leads follow it): electrode placement
  lowpass         + half the records low-passed at 15-40 Hz: monitors' and exports' filters
  hospital        gain + axis + lowpass together

The default run is the compact setting, affordable on 2 shared cores (under half an hour; run it under ``nice``):
40 pretraining epochs per held-out source, recipes baseline and hospital, 3 seeds, two worker processes, one torch
thread each. Bigger settings are one flag away: ``--recipes`` (any of the above), ``--seeds``,
``--pretrain-epochs``, ``--min-site-records 40`` (PTB-XL site 2 held out too); ``--pretrain-epochs 0`` fine-tunes
from random weights. It also measures the scale QC on every shared record (``scale_qc``: false positives on the
real records, detection of 1000x, 5x and 0.2x gain errors).

Usage (from the repo root):
    nice .venv/bin/python benchmarks/external.py                          # compact default
    nice .venv/bin/python benchmarks/external.py --recipes baseline gain axis lowpass hospital
Writes benchmarks/results/external.json (or --output).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data"
TASK = "superclass"
LEADS = "6L"
#: Holding LUDB out trains on exactly the PTB-XL benchmark's folds 1-8 of every site and stops early on fold 9: its
#: internal score is the fold-10 benchmark, so that one training gives both.
FOLD10_FROM = "ludb"
RECIPES: dict[str, dict] = {
    "baseline": {},
    "gain": {"gain_jitter": 0.2},
    "axis": {"axis_rotation_deg": 15.0},
    "lowpass": {"lowpass_share": 0.5},
    "hospital": {"gain_jitter": 0.2, "axis_rotation_deg": 15.0, "lowpass_share": 0.5},
}


# ----------------------------------------------------------------------------- LUDB labels

_LUDB_HYP = ("left ventricular hypertrophy", "right ventricular hypertrophy", "left atrial hypertrophy",
             "left atrial overload", "right atrial overload", "right atrial hypertrophy", "left ventricular overload")
_LUDB_CD = ("incomplete right bundle branch block", "complete right bundle branch block",
            "incomplete left bundle branch block", "complete left bundle branch block", "left anterior hemiblock",
            "i degree av block", "iii degree av-block", "non-specific intravintricular conduction delay",
            "sinoatrial blockade")
_LUDB_RHYTHMS = ("sinus rhythm", "sinus bradycardia", "sinus tachycardia", "sinus arrhythmia", "irregular sinus rhythm")


def ludb_superclasses(diagnoses: list[str]) -> np.ndarray:
    """PTB-XL's NORM, MI, STTC, CD, HYP from LUDB's statements (PTB-XL's own statements grouped the same way).

    HYP: ventricular hypertrophy or overload, atrial hypertrophy or overload. CD: bundle-branch and fascicular
    blocks, AV blocks, intraventricular conduction delay. MI: scar formation or STEMI. STTC: ischemia or non-specific
    repolarisation abnormalities. LUDB's "undefined ischemia/scar/supp. NSTEMI" leaves MI and STTC unknown unless
    another statement decides them. NORM: a sinus rhythm and no statement beyond it and the electrical axis.
    """
    text = [d.lower() for d in diagnoses]
    has = lambda *prefixes: any(t.startswith(prefixes) for t in text)  # noqa: E731
    hyp, cd = has(*_LUDB_HYP), has(*_LUDB_CD)
    mi, sttc = has("scar formation", "stemi"), has("ischemia:", "non-specific repolarization")
    undefined = has("undefined ischemia")
    other = [t for t in text if not t.startswith(_LUDB_RHYTHMS + ("electric axis",))]
    norm = has(*_LUDB_RHYTHMS) and not other
    return np.array([float(norm), 1.0 if mi else (np.nan if undefined else 0.0), 1.0 if sttc else
                     (np.nan if undefined else 0.0), float(cd), float(hyp)], dtype=np.float32)


# ----------------------------------------------------------------------------- data

def load_sources(cache_dir: Path, min_site_records: int):
    """The PTB-XL and LUDB caches (those `lsemvae data prepare` builds) and the rows of each source, 6-lead usable."""
    from lsemvae.data.cache import usable_rows
    from lsemvae.data.commands import dataset_cohort
    from lsemvae.model.config import get_profile

    pcfg = get_profile("compact").preprocess_config()
    ptbxl = dataset_cohort("ptb-xl", SHARED / "ptb-xl", pcfg, cache_dir, progress=False)
    ludb = dataset_cohort("ludb", SHARED / "ludb", pcfg, cache_dir, progress=False)
    rows = usable_rows(ptbxl, LEADS)
    site = np.array([m.get("site") for m in ptbxl.meta], dtype=object)
    counts = {s: int((site[rows] == s).sum()) for s in set(site[rows])}
    sources = {f"ptb-xl site {s}": rows[site[rows] == s] for s, n in sorted(counts.items(), key=lambda kv: -kv[1])
               if n >= min_site_records}
    sources["ludb"] = usable_rows(ludb, LEADS)
    return ptbxl, ludb, sources


class Pool:
    """A ``Dataset`` over (cohort, row) pairs of both caches with superclass labels for each (LUDB's mapped)."""

    def __init__(self, items: list[tuple[object, int, np.ndarray]], leads=LEADS):
        from lsemvae.data.cache import CohortDataset

        self.items = items
        self.views = {id(c): CohortDataset(c, leads=leads, tasks=[]) for c, _, _ in items}  # row i is item i

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        import torch

        cohort, row, y = self.items[i]
        return {**self.views[id(cohort)][row], "y": {TASK: torch.from_numpy(y)}}


def labels(cohort, row: int) -> np.ndarray:
    if cohort.meta[row].get("source") == "ludb":
        return ludb_superclasses(cohort.meta[row]["diagnoses"])
    return np.array(cohort.labels[TASK][row], dtype=np.float32)  # a copy: torch wants writable arrays


def parts(ptbxl, ludb, sources: dict, held_out: str):
    """(train, validation, internal test, external) item lists without the source ``held_out``."""
    from lsemvae.data.cache import patient_split

    fold = np.array([m.get("strat_fold") for m in ptbxl.meta])
    out_rows = set(sources[held_out]) if held_out != "ludb" else set()
    ptb = [r for r in sources_rows(ptbxl) if r not in out_rows]
    item = lambda c, r: (c, int(r), labels(c, int(r)))  # noqa: E731
    train = [item(ptbxl, r) for r in ptb if fold[r] <= 8]
    val = [item(ptbxl, r) for r in ptb if fold[r] == 9]
    internal = [item(ptbxl, r) for r in ptb if fold[r] == 10]
    if held_out == "ludb":
        external = [item(ludb, r) for r in sources["ludb"]]
    else:
        external = [item(ptbxl, r) for r in sorted(out_rows)]
        l_train, l_val, _ = patient_split(ludb, 0.15, seed=0, leads=LEADS)
        train += [item(ludb, r) for r in l_train]
        val += [item(ludb, r) for r in l_val]
    return train, val, internal, external


def sources_rows(ptbxl) -> np.ndarray:
    from lsemvae.data.cache import usable_rows
    return usable_rows(ptbxl, LEADS)


# ----------------------------------------------------------------------------- one run

def run_job(job: dict) -> dict:
    """Fine-tune one recipe without one source, for one seed; per-record internal and external scores."""
    import logging

    import torch
    torch.set_num_threads(1)  # one thread per process: oversubscribed threads stall on a shared machine
    logging.getLogger("lsemvae.train.finetune").setLevel(logging.ERROR)  # thin validation: counted in the runs instead
    from lsemvae.data.tasks import get_task
    from lsemvae.model.config import TaskHeadSpec, get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint
    from lsemvae.train.finetune import FINETUNE_PROFILES, finetune, macro_auroc, predict

    t0 = time.time()
    ptbxl, ludb, sources = load_sources(Path(job["cache_dir"]), job["min_site_records"])
    train, val, internal, external = parts(ptbxl, ludb, sources, job["held_out"])
    task = get_task(TASK)
    heads = {TASK: TaskHeadSpec(kind=task.kind, n_outputs=task.n_outputs)}
    torch.manual_seed(job["seed"])
    if job.get("checkpoint"):
        model = model_from_checkpoint(load_checkpoint(job["checkpoint"]), tasks={TASK: heads[TASK].model_dump()})
    else:
        model = build_model(get_profile("compact", tasks=heads))
    recipe = FINETUNE_PROFILES["compact"]
    augment = recipe.augment.model_copy(update=RECIPES[job["recipe"]])
    cfg = recipe.model_copy(update={"seed": job["seed"], "epochs": job["epochs"], "augment": augment})
    result = finetune(model, Pool(train), Pool(val), {TASK: task}, cfg, progress=False)
    row = {k: job[k] for k in ("recipe", "held_out", "seed")}
    row.update(best_epoch=result["best_epoch"], val_macro_auroc=result["best_val_auroc"], n_train=len(train),
               thin_validation_classes=len(result["warnings"]))
    for name, items in (("internal", internal), ("external", external)):
        y, p = predict(model, Pool(items), {TASK: task}, **result["predict_kwargs"])[TASK]
        row[name] = {"macro_auroc": macro_auroc({TASK: (y, p)}), "y": y.tolist(), "p": p.tolist()}
    row["seconds"] = round(time.time() - t0, 1)
    return row


def pretrain_for(held_out: str, args) -> str:
    """A compact LS-EMVAE pretrained on every 12-lead ECG outside the held-out source and PTB-XL fold 10."""
    import torch
    torch.set_num_threads(1)
    from lsemvae.data.cache import CohortDataset, patient_split
    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.pretrain import PretrainConfig, pretrain
    from torch.utils.data import ConcatDataset

    ptbxl, ludb, sources = load_sources(args.cache_dir, args.min_site_records)
    out = Path(args.work_dir) / f"pretrain-{held_out.replace(' ', '-')}"
    train_parts, val_parts = [], []
    for name, cohort in (("ptb-xl", ptbxl), ("ludb", ludb)):
        if held_out == "ludb" and name == "ludb":
            continue
        tr, va, _ = patient_split(cohort, 0.1, seed=0)
        drop = set()
        if name == "ptb-xl":
            drop = {i for i, m in enumerate(cohort.meta) if m.get("strat_fold") == 10}
            drop |= set(sources[held_out]) if held_out != "ludb" else set()
        train_parts.append(CohortDataset(cohort, [r for r in tr if r not in drop], tasks=[]))
        val_parts.append(CohortDataset(cohort, [r for r in va if r not in drop], tasks=[]))
    torch.manual_seed(0)
    pretrain(build_model(get_profile("compact")), ConcatDataset(train_parts), ConcatDataset(val_parts),
             PretrainConfig(epochs=args.pretrain_epochs, seed=0), out, progress=False)
    return str(out / "best.pt")


# ----------------------------------------------------------------------------- statistics

def boot_macro(y: np.ndarray, scores: list[np.ndarray], n_boot: int, seed: int = 0) -> np.ndarray:
    """Seed-mean macro AUROC on each of ``n_boot`` stratified resamples of the records (same resamples for the
    same ``y`` and ``seed``: paired across recipes)."""
    from lsemvae.train import metrics

    w = np.concatenate(list(metrics.bootstrap_weights(y, n_boot=n_boot, seed=seed)))
    return np.mean([np.nanmean(metrics._boot_class_metrics(y, s, w)[0], axis=1) for s in scores], axis=0)


def ci(dist: np.ndarray) -> list[float]:
    d = dist[np.isfinite(dist)]
    return [round(float(np.percentile(d, 2.5)), 4), round(float(np.percentile(d, 97.5)), 4)]


def summarise(rows: list[dict], args) -> dict:
    from lsemvae.train.finetune import macro_auroc

    out: dict = {}
    dists: dict = {}
    for recipe in args.recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        res: dict = {"folds": {}}
        for held_out in [h for h in args.held_out]:
            runs = sorted([r for r in mine if r["held_out"] == held_out], key=lambda r: r["seed"])
            if not runs:
                continue
            part = {}
            for name in ("internal", "external"):
                y = np.asarray(runs[0][name]["y"], dtype=np.float64)
                scores = [np.asarray(r[name]["p"]) for r in runs]
                dist = boot_macro(y, scores, args.n_boot)
                dists[(recipe, held_out, name)] = dist
                part[name] = {"macro_auroc": round(float(np.mean([r[name]["macro_auroc"] for r in runs])), 4),
                              "ci": ci(dist), "n": int(len(y)),
                              "per_seed": [round(r[name]["macro_auroc"], 4) for r in runs]}
            gap = dists[(recipe, held_out, "external")] - dists[(recipe, held_out, "internal")]
            part["gap"] = {"mean": round(part["external"]["macro_auroc"] - part["internal"]["macro_auroc"], 4),
                           "ci": ci(gap)}
            part["best_epochs"] = [r["best_epoch"] for r in runs]
            res["folds"][held_out] = part
        gaps = [f["gap"]["mean"] for f in res["folds"].values()]
        res["mean_external"] = round(float(np.mean([f["external"]["macro_auroc"] for f in res["folds"].values()])), 4)
        res["mean_gap"] = round(float(np.mean(gaps)), 4)
        f10 = sorted([r for r in mine if r["held_out"] == FOLD10_FROM], key=lambda r: r["seed"])
        if f10:
            y = np.asarray(f10[0]["internal"]["y"], dtype=np.float64)
            dist = boot_macro(y, [np.asarray(r["internal"]["p"]) for r in f10], args.n_boot)
            dists[(recipe, None, "internal")] = dist
            res["fold10"] = {"macro_auroc": round(float(np.mean([macro_auroc({TASK: (y, np.asarray(r["internal"]["p"]))})
                                                                   for r in f10])), 4),
                             "ci": ci(dist), "per_seed": [round(r["internal"]["macro_auroc"], 4) for r in f10]}
        out[recipe] = res
    comparison = {}
    for recipe in args.recipes[1:]:
        base = args.recipes[0]
        comp = {}
        for held_out in list(args.held_out) + [None]:
            key = "external" if held_out is not None else "internal"
            a, b = dists.get((recipe, held_out, key)), dists.get((base, held_out, key))
            if a is None or b is None:
                continue
            diff = a - b
            label = held_out or "ptb-xl fold 10"
            point = (out[recipe]["folds"][held_out]["external"]["macro_auroc"] - out[base]["folds"][held_out]["external"]["macro_auroc"]
                     if held_out else out[recipe]["fold10"]["macro_auroc"] - out[base]["fold10"]["macro_auroc"])
            comp[label] = {"diff": round(point, 4), "ci": ci(diff)}
        comparison[f"{recipe} - {base}"] = comp
    return {"results": out, "comparison": comparison}


def flat_summary(summary: dict, recipes: list[str]) -> dict:
    """Rows for benchmarks/README.md (summarise.py prints a results file's "summary" as it is)."""
    rows = {}
    for recipe in recipes:
        res = summary["results"][recipe]
        for held_out, f in res["folds"].items():
            rows[f"{recipe}: held out {held_out}: external / internal macro AUROC, gap [95% CI]"] = (
                f"{f['external']['macro_auroc']:.3f} / {f['internal']['macro_auroc']:.3f}, "
                f"{f['gap']['mean']:+.3f} [{f['gap']['ci'][0]:+.3f}, {f['gap']['ci'][1]:+.3f}]")
        rows[f"{recipe}: mean over held-out sources: external AUROC, gap"] = \
            f"{res['mean_external']:.3f}, {res['mean_gap']:+.3f}"
        if "fold10" in res:
            f10 = res["fold10"]
            rows[f"{recipe}: PTB-XL fold 10 macro AUROC [95% CI]"] = \
                f"{f10['macro_auroc']:.3f} [{f10['ci'][0]:.3f}, {f10['ci'][1]:.3f}]"
    for name, comp in summary["comparison"].items():
        for where, c in comp.items():
            rows[f"{name}: {where} AUROC difference [95% CI, paired]"] = \
                f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"
    return rows


# ----------------------------------------------------------------------------- scale QC

def scale_qc() -> dict:
    """QC's scale verdicts on every shared record, as read and with its signal scaled as a wrong header gain would
    (gain 1000x too high: x0.001; 5x too high: x0.2; 5x too low: x5)."""
    import dataclasses
    from collections import Counter

    from lsemvae.data.preprocess import PreprocessConfig, preprocess
    from lsemvae.data.sources import ludb_index, ptbxl_index
    from lsemvae.errors import RecordError

    cfg = PreprocessConfig(amplitude="millimetres")
    refs = ptbxl_index(SHARED / "ptb-xl") + ptbxl_index(SHARED / "ptb-xl", rate=500) + ludb_index(SHARED / "ludb")
    verdicts = {f: Counter() for f in ("real", "x0.001", "x0.2", "x5")}
    for ref in refs:
        record = ref.load()
        for name, factor in (("real", 1.0), ("x0.001", 1e-3), ("x0.2", 0.2), ("x5", 5.0)):
            try:
                out = preprocess(dataclasses.replace(record, signal=record.signal * factor), cfg)
                v = "implausible-amplitude" if any(f.startswith("implausible") for f in out.flags) else "pass"
            except RecordError as err:
                v = err.reason
            verdicts[name][v] += 1
    real = verdicts["real"]
    flagged = real["implausible-amplitude"] + real["wrong-scale"]
    qc_ok = real["pass"] + flagged
    caught = lambda c: c["implausible-amplitude"] + c["wrong-scale"] + c["amplitude"]  # noqa: E731
    return {
        "records": len(refs), "plausible_range_mv": list(cfg.qrs_amplitude_mv),
        "wrong_scale_factor": cfg.wrong_scale_factor, "verdicts": {k: dict(v) for k, v in verdicts.items()},
        "false_positive_rate_real": flagged / max(qc_ok, 1),
        "caught": {k: caught(v) / max(sum(v.values()) - v["nan-share"] - v["saturation"], 1)
                   for k, v in verdicts.items() if k != "real"},
        "note": "real: records that pass QC otherwise, flagged implausible-amplitude or rejected wrong-scale (false "
                "positives). Caught: flagged, or rejected as wrong-scale or for a lead above 20 mV with the scale "
                "named, among the copies of records that QC does not refuse for NaN or clipping.",
    }


# ----------------------------------------------------------------------------- main

def command_line(args) -> str:
    parts_ = ["python benchmarks/external.py"]
    defaults = build_parser().parse_args([])
    for flag in ("recipes", "seeds", "epochs", "pretrain_epochs", "min_site_records", "n_boot"):
        value = getattr(args, flag)
        if value != getattr(defaults, flag):
            parts_.append(f"--{flag.replace('_', '-')} " + (" ".join(map(str, value)) if isinstance(value, list)
                                                             else str(value)))
    return " ".join(parts_)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["baseline", "hospital"],
                   help="fine-tuning recipes; the first is the reference the others are compared with")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs (early stopping on validation)")
    p.add_argument("--pretrain-epochs", type=int, default=40,
                   help="pretrain a model per held-out source for this many epochs on the other sources' 12-lead ECGs "
                        "(PTB-XL fold 10 left out), as the README's quick start does; 0: fine-tune from random weights")
    p.add_argument("--min-site-records", type=int, default=100, help="PTB-XL sites with fewer records always train")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--workers", type=int, default=2, help="processes (one torch thread each)")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench-external")
    p.add_argument("--skip-qc", action="store_true", help="leave out the scale-QC sweep")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "external.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    _, _, sources = load_sources(args.cache_dir, args.min_site_records)
    args.held_out = list(sources)
    checkpoints = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        if args.pretrain_epochs:
            print(f"pretraining {len(args.held_out)} models, each without one source ...", flush=True)
            checkpoints = dict(zip(args.held_out, pool.map(functools.partial(pretrain_for, args=args), args.held_out)))
    jobs = [{"recipe": r, "held_out": h, "seed": s, "epochs": args.epochs, "cache_dir": str(args.cache_dir),
             "min_site_records": args.min_site_records, "checkpoint": checkpoints.get(h)}
            for s in args.seeds for r in args.recipes for h in args.held_out]
    rows = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for row in pool.map(run_job, jobs):
            rows.append(row)
            print(f"[{len(rows)}/{len(jobs)}] {row['recipe']} held out {row['held_out']} seed {row['seed']}: internal "
                  f"{row['internal']['macro_auroc']:.3f}, external {row['external']['macro_auroc']:.3f} "
                  f"({row['seconds']} s)", flush=True)
    summary = summarise(rows, args)
    ptbxl, ludb, _ = load_sources(args.cache_dir, args.min_site_records)
    result = {
        "benchmark": "external",
        "protocol": "leave one source out: PTB-XL sites with >= %d usable records and LUDB held out in turn; compact "
                    "LS-EMVAE (%s), 6 limb leads, superclasses; train PTB-XL folds 1-8 of the other sites + 85%% of "
                    "LUDB's patients, early stopping on fold 9 + LUDB's other patients; internal = fold 10 of the "
                    "training sites, external = every record of the held-out source; fold 10 = the PTB-XL benchmark "
                    "(all sites, folds 1-8/9/10); seeds %s; bootstrap %d stratified resamples (gap: independent "
                    "resamples of the two sets; recipe differences: paired)" % (
                        args.min_site_records, f"pretrained {args.pretrain_epochs} epochs per fold" if
                        args.pretrain_epochs else "random initial weights", ",".join(map(str, args.seeds)), args.n_boot),
        "sources": {h: {"records": int(len(rows_)), "superclass_positives": [int(v) for v in np.nansum(np.stack(
            [labels(ludb if h == "ludb" else ptbxl, int(r)) for r in rows_]), 0)]} for h, rows_ in
            load_sources(args.cache_dir, args.min_site_records)[2].items()},
        "recipes": {r: RECIPES[r] for r in args.recipes},
        **summary,
        "runs": [{k: v for k, v in r.items() if k not in ("internal", "external")} |
                 {k: r[k]["macro_auroc"] for k in ("internal", "external")} for r in rows],
        "summary": flat_summary(summary, args.recipes),
        "runtime_seconds": round(time.time() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch threads per process 1, "
                   f"{args.workers} processes",
        "command": command_line(args),
    }
    if not args.skip_qc:
        print("scale QC on every shared record ...", flush=True)
        result["scale_qc"] = scale_qc()
        qc = result["scale_qc"]
        result["summary"]["scale QC: real records flagged (false-positive rate)"] = \
            f"{qc['false_positive_rate_real']:.4f} of {qc['records']}"
        for k, v in qc["caught"].items():
            result["summary"][f"scale QC: signals {k} (a wrong gain) caught"] = f"{v:.3f}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.output} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
