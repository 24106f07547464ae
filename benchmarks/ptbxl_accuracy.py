"""PTB-XL accuracy benchmark: does LS-EMVAE pretraining help 6-lead diagnosis?

One command pretrains LS-EMVAE (compact) on every 12-lead record outside the test fold (PTB-XL
folds 1-9 + LUDB; patient-level validation split), then fine-tunes on 6 limb leads for the five
diagnostic superclasses (train folds 1-8, early stopping on fold 9, test fold 10) and compares:

  lsemvae-probe   pretrained encoders frozen, fusion gate + head trained
  lsemvae-full    pretrained, everything fine-tuned (encoders at 0.3x the head's learning rate)
  random-probe    the same model randomly initialised, probe (what the architecture alone gives)
  cnn             from-scratch 1-D ResNet on the 6 leads (lsemvae.train.baselines.ResNet1D)
  cnn-12l         the same CNN on all 12 leads: an upper reference the 6-lead methods cannot see

(LS-EMVAE models use the compact profile's head: per-lead means + fused mean, dropout 0.5, and
FINETUNE_PROFILES["compact"], weight decay 0.05; the CNN keeps FinetuneConfig's defaults)

at 100% and 10% of the training labels, 3 seeds each, all on identical folds. Reported: macro
AUROC on fold 10 per seed, the mean over seeds with a bootstrap 95% CI (the same 1,000 stratified
resamples for every seed and method), validation (fold 9) AUROC, and the paired bootstrap
difference of each method against the CNN (seed-mean AUROC on identical resamples).

Usage (from the repo root):
    .venv/bin/python -m benchmarks.ptbxl_accuracy            # full run, ~40-60 min on 2 shared cores
    .venv/bin/python -m benchmarks.ptbxl_accuracy --quick    # smoke run, a few minutes
    .venv/bin/python -m benchmarks.ptbxl_accuracy --pretrained runs/bench/pretrain/best.pt  # reuse
Writes benchmarks/results/ptbxl_accuracy.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import harness as H
from benchmarks.harness import seed_mean_bootstrap

REPO = H.REPO

TASK = "superclass"
METHODS = ("lsemvae-probe", "lsemvae-full", "random-probe", "cnn", "cnn-12l")
PRETRAINED_METHODS = ("lsemvae-probe", "lsemvae-full")


def _threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)  # one thread per process: oversubscribed BLAS threads stall on a shared machine


def load_data(args, model_overrides: dict | None = None):
    """The PTB-XL and LUDB cohorts preprocessed as the compact profile (with ``model_overrides``) reads them."""
    from lsemvae.data.cache import build_cohort
    from lsemvae.data.sources import ludb_index, ptbxl_index
    from lsemvae.model.config import get_profile
    pcfg = get_profile("compact", **(model_overrides or {})).preprocess_config()  # the CNNs read the same signals
    ptbxl = build_cohort(ptbxl_index(args.ptbxl, rate=100), [TASK], pcfg, args.cache_dir, name="ptb-xl")
    ludb = build_cohort(ludb_index(args.ludb), [], pcfg, args.cache_dir, name="ludb")
    return pcfg, ptbxl, ludb


def run_pretrain(args, out_dir: Path, model_overrides: dict | None = None, pretrain_overrides: dict | None = None) -> str:
    _threads(1)
    import torch
    from torch.utils.data import ConcatDataset
    from lsemvae.data.cache import CohortDataset, patient_split
    from lsemvae.data.preprocess import PIPELINE_VERSION
    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.pretrain import PretrainConfig, pretrain

    pcfg, ptbxl, ludb = load_data(args, model_overrides)
    train_parts, val_parts = [], []
    for cohort in (ptbxl, ludb):
        tr, va, _ = patient_split(cohort, 0.1, seed=0)
        if cohort is ptbxl:  # the test fold stays out of pretraining entirely
            fold = np.array([m.get("strat_fold") for m in cohort.meta])
            tr, va = tr[fold[tr] != 10], va[fold[va] != 10]
        train_parts.append(CohortDataset(cohort, tr, tasks=[]))
        val_parts.append(CohortDataset(cohort, va, tasks=[]))
    torch.manual_seed(0)
    model = build_model(get_profile("compact", **(model_overrides or {})))
    cfg = PretrainConfig(**{"epochs": args.pretrain_epochs, "seed": 0, **(pretrain_overrides or {})})
    provenance = {"preprocess_config": pcfg.model_dump(mode="json"), "pipeline_version": PIPELINE_VERSION,
                  "data_cache_keys": {"ptb-xl": ptbxl.key, "ludb": ludb.key}, "excluded_folds": [10]}
    pretrain(model, ConcatDataset(train_parts), ConcatDataset(val_parts), cfg, out_dir, provenance=provenance,
             progress=False)
    return str(out_dir / "best.pt")


def run_finetune(args, method: str, fraction: float, seed: int, checkpoint: str | None, *,
                 model_overrides: dict | None = None, finetune_overrides: dict | None = None,
                 score_test: bool = True) -> dict:
    """One method at one label fraction and seed; ``*_overrides`` change the compact model or its recipe and
    ``score_test=False`` never touches the test fold (benchmarks/model_variants.py)."""
    _threads(1)
    import torch
    from lsemvae.data.cache import CohortDataset, label_fraction, ptbxl_folds
    from lsemvae.data.tasks import get_task
    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.baselines import ResNet1D
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint
    from lsemvae.train.finetune import FINETUNE_PROFILES, FinetuneConfig, finetune, macro_auroc, predict

    t0 = time.time()
    _, ptbxl, _ = load_data(args, model_overrides)
    task = get_task(TASK)
    tasks = {TASK: task}
    heads = {TASK: {"kind": task.kind, "n_outputs": task.n_outputs}}
    train_idx, val_idx, test_idx = ptbxl_folds(ptbxl)
    train_idx = label_fraction(ptbxl, train_idx, fraction, task=TASK, seed=seed)
    leads = "12L" if method == "cnn-12l" else "6L"
    sets = [CohortDataset(ptbxl, idx, leads=leads, tasks=[TASK]) for idx in (train_idx, val_idx, test_idx)]
    torch.manual_seed(seed)
    compact = get_profile("compact", tasks=heads, **(model_overrides or {}))
    recipe = FINETUNE_PROFILES["compact"]  # LS-EMVAE's recipe; the CNN keeps FinetuneConfig's defaults
    if method.startswith("cnn"):
        model, mode, recipe = ResNet1D({TASK: task}, leads=leads), "full", FinetuneConfig()
    elif method == "random-probe":
        model, mode = build_model(compact), "probe"
    else:  # heads are new at fine-tuning, so they follow the current profile even on an older checkpoint
        model = model_from_checkpoint(load_checkpoint(checkpoint), tasks=heads, head_input=compact.head_input,
                                      head_dropout=compact.head_dropout, head_hidden=compact.head_hidden,
                                      head_init=compact.head_init)
        mode = method.split("-")[1]
    cfg = FinetuneConfig.model_validate({**recipe.model_dump(), "mode": mode, "seed": seed, "epochs": args.finetune_epochs,
                                         "patience": args.patience, **(finetune_overrides or {})})
    result = finetune(model, sets[0], sets[1], tasks, cfg, progress=False)
    val = predict(model, sets[1], tasks, **result["predict_kwargs"])
    row = {"method": method, "fraction": fraction, "seed": seed, "n_train": len(sets[0]),
           "best_epoch": result["best_epoch"], "val_macro_auroc": macro_auroc(val)}
    if score_test:
        test = predict(model, sets[2], tasks, **result["predict_kwargs"])
        row.update(test_macro_auroc=macro_auroc(test), test_y=test[TASK][0].tolist(), test_p=test[TASK][1].tolist())
    return {**row, "seconds": round(time.time() - t0, 1)}


def command_line(args) -> str:
    work = Path(args.work_dir).resolve()
    work = "" if work == REPO / "runs" / "bench" else f" --work-dir {work.relative_to(REPO) if work.is_relative_to(REPO) else work}"
    return ("python -m benchmarks.ptbxl_accuracy" + (" --quick" if args.quick else "") + work
            + (f" --pretrained {args.pretrained}" if args.pretrained else "")
            + ("" if list(args.methods) == list(METHODS) else " --methods " + " ".join(args.methods))
            + ("" if list(args.fractions) == [1.0, 0.1] else " --fractions " + " ".join(map(str, args.fractions))))


def summarise(runs: list[dict], pretrain_metrics: dict, args, seconds: float) -> dict:
    from lsemvae.train import metrics
    rows = []
    for fraction in sorted({r["fraction"] for r in runs}, reverse=True):
        by_method = {m: sorted([r for r in runs if r["method"] == m and r["fraction"] == fraction], key=lambda r: r["seed"])
                     for m in METHODS}
        if not by_method["cnn"]:
            continue
        y = np.asarray(by_method["cnn"][0]["test_y"])
        ref = [np.asarray(r["test_p"]) for r in by_method["cnn"]]
        for m, rs in by_method.items():
            if not rs:
                continue
            scores = [np.asarray(r["test_p"]) for r in rs]
            summary = seed_mean_bootstrap(y, scores, None if m == "cnn" else ref)
            per_seed = [{"seed": r["seed"], "test_macro_auroc": r["test_macro_auroc"],
                         "test_ci": metrics.bootstrap_auroc(y, np.asarray(r["test_p"]))["macro"]["auroc_ci"],
                         "val_macro_auroc": r["val_macro_auroc"], "best_epoch": r["best_epoch"], "seconds": r["seconds"]}
                        for r in rs]
            rows.append({"method": m, "label_fraction": fraction, "n_train": rs[0]["n_train"],
                         "test_macro_auroc_mean": summary["mean"], "test_ci": summary["ci"],
                         "val_macro_auroc_mean": float(np.mean([r["val_macro_auroc"] for r in rs])),
                         "diff_vs_cnn": summary.get("diff_vs_cnn"), "per_seed": per_seed})
    keep = ("epoch", "val_loss", "val_recon", "val_kl", "val_r2_mean", "val_r2_precordial_from_limb",
            "val_r2_12to12", "val_r2_6to12", "val_active_dims", "latent_dim")
    return {
        "quick": args.quick,
        "protocol": "PTB-XL subset (../shared/data), 6 limb leads, diagnostic superclasses (5, multilabel); "
                    "train folds 1-8, early stopping on fold 9 macro AUROC, test fold 10; pretraining on PTB-XL "
                    "folds 1-9 + LUDB (12-lead, unlabeled use, 10% of patients held out for validation); "
                    "seeds " + ",".join(map(str, sorted({r["seed"] for r in runs}))) + "; bootstrap 1000 stratified "
                    "resamples; early stopping (patience 10 epochs) waits for 300 optimizer steps",
        "pretrain": {k: pretrain_metrics.get(k) for k in keep},
        "results": rows, "runtime_seconds": round(seconds), "jobs": args.jobs, "torch_threads_per_process": 1,
        # a run restricted with --methods keeps the other methods' runs from WORK_DIR/runs.jsonl
        "methods_run_by_last_command": None if args.summarise_only else list(args.methods),
        "fractions_run_by_last_command": None if args.summarise_only else list(args.fractions),
        "note": args.note,
    }


def main(argv=None) -> int:
    shared = REPO.parent / "shared" / "data"
    p = argparse.ArgumentParser(prog="python -m benchmarks.ptbxl_accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ptbxl", type=Path, default=shared / "ptb-xl")
    p.add_argument("--ludb", type=Path, default=shared / "ludb")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench", help="pretraining checkpoints go here")
    p.add_argument("--pretrained", type=Path, help="reuse this pretraining checkpoint instead of pretraining")
    p.add_argument("--pretrain-epochs", type=int, default=40)
    p.add_argument("--finetune-epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--jobs", type=int, default=2, help="parallel single-threaded processes")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="run only these; runs of other methods (or other --fractions) already in WORK_DIR/runs.jsonl "
                        "are kept")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 pretraining and 3 fine-tuning epochs, one seed")
    p.add_argument("--output", type=Path, default=H.RESULTS / "ptbxl_accuracy.json")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. what a partial run left out)")
    p.add_argument("--summarise-only", action="store_true", help="rebuild the results file from WORK_DIR/runs.jsonl")
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_epochs, args.finetune_epochs, args.patience, args.seeds = 2, 3, 3, [0]
        if args.output == p.get_default("output"):
            args.output = args.work_dir / "ptbxl_accuracy_quick.json"
    t0 = time.monotonic()
    runs_log = args.work_dir / ("runs-quick.jsonl" if args.quick else "runs.jsonl")
    if args.summarise_only:
        runs = [json.loads(l) for l in runs_log.read_text().splitlines()]
        checkpoint = runs[0]["checkpoint"]
        return write_results(runs, checkpoint, args, t0)
    load_data(args)  # build the caches once, before the workers read them
    args.work_dir.mkdir(parents=True, exist_ok=True)
    kept = [json.loads(l) for l in runs_log.read_text().splitlines()] if runs_log.exists() else []
    runs = [r for r in kept if not (r["method"] in args.methods and r["fraction"] in args.fractions)]
    runs_log.write_text("".join(json.dumps(r) + "\n" for r in runs))
    grid = [(f, s) for f in args.fractions for s in args.seeds]
    pretrained = [m for m in args.methods if m in PRETRAINED_METHODS]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        pre = None
        if args.pretrained is None and pretrained:
            pre = pool.submit(run_pretrain, args, args.work_dir / ("pretrain-quick" if args.quick else "pretrain"))
        independent = [pool.submit(run_finetune, args, m, f, s, None)
                       for m in args.methods if m not in PRETRAINED_METHODS for f, s in grid]
        earlier = next((r["checkpoint"] for r in runs if r["method"] in PRETRAINED_METHODS), None)
        checkpoint = pre.result() if pre is not None else str(args.pretrained) if args.pretrained else earlier
        if pre is not None:
            print(f"pretraining done: {checkpoint}", flush=True)
        dependent = [pool.submit(run_finetune, args, m, f, s, checkpoint) for m in pretrained for f, s in grid]
        for fut in independent + dependent:
            r = fut.result()
            print(f"{r['method']:14s} labels {r['fraction']:.0%} seed {r['seed']}: test {r['test_macro_auroc']:.3f} "
                  f"val {r['val_macro_auroc']:.3f} ({r['seconds']} s)", flush=True)
            r["checkpoint"], r["command"] = checkpoint, command_line(args)
            runs.append(r)
            with open(runs_log, "a", encoding="utf-8") as fh:  # raw runs survive a failure in the summary
                fh.write(json.dumps(r) + "\n")
    return write_results(runs, checkpoint, args, t0)


def write_results(runs: list[dict], checkpoint: str, args, t0: float) -> int:
    from lsemvae.train.checkpoint import load_checkpoint
    pretrain_metrics = load_checkpoint(checkpoint)["state"].get("best_metrics", {}) if checkpoint else {}
    result = summarise(runs, pretrain_metrics, args, time.monotonic() - t0)
    # a --methods/--fractions rerun keeps the others' runs, and their commands
    command = H.joined_commands(r.get("command", command_line(args)) for r in runs)
    H.write_results(args.output, H.meta("ptbxl_accuracy", None, t0, command=command), result)
    for row in result["results"]:
        d = row["diff_vs_cnn"]
        print(f"{row['method']:14s} {row['label_fraction']:>4.0%}: {row['test_macro_auroc_mean']:.3f} "
              f"[{row['test_ci'][0]:.3f}, {row['test_ci'][1]:.3f}]"
              + (f"  vs CNN {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d else ""))
    print(f"wrote {args.output} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
