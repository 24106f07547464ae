"""``lsemvae evaluate``: score a fine-tuned checkpoint on a held-out split and write the report.

Works for LS-EMVAE checkpoints and the CNN baseline (``model_config.architecture = "resnet1d"``),
so every method is scored on the same records by the same code. Preprocessing, lead set and
test-time crop averaging default to what the checkpoint recorded at fine-tuning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lsemvae.argtypes import open_fraction, positive_int
from lsemvae.errors import ConfigError, LSEMVAEError
from lsemvae.leads import resolve_lead_set
from lsemvae.train.commands import report_lead_faults

SHARED_PTBXL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ptb-xl"


def _cohort(args, model, ckpt):
    from lsemvae.data.cache import load_cohort, matching_cohort
    from lsemvae.data.commands import dataset_cohort
    from lsemvae.train.checkpoint import preprocess_config

    pcfg = preprocess_config(ckpt, model.config)
    if args.cache:
        return matching_cohort(load_cohort(args.cache), pcfg)
    root = args.ptbxl or (SHARED_PTBXL if args.dataset == "ptb-xl" else None)
    if root is None:
        raise ConfigError("no data given: pass --cache DIR (a prepared cohort), --ptbxl ROOT or --dataset ptb-xl")
    return dataset_cohort("ptb-xl", Path(root), pcfg, args.cache_dir)  # the cache `lsemvae data prepare` builds


def _split(cohort, split: str, recorded: dict | None, leads):
    """``(rows scored, validation rows for thresholds)``: the parts fine-tuning recorded (``recorded``), records
    usable with ``leads`` only (QC applies to the leads the model reads)."""
    from lsemvae.data.cache import cohort_split, has_ptbxl_folds, usable_rows

    if split == "all":
        return usable_rows(cohort, leads), None
    # federated and older checkpoints record no split: PTB-XL's official folds, as before
    if recorded is None and not has_ptbxl_folds(cohort):
        raise ConfigError(f"--split {split}: the checkpoint records no fine-tuning split (a federated or older model) "
                          f"and cohort {cohort.path} has no PTB-XL folds; score every record with --split all")
    try:
        _, val, test, _ = cohort_split(cohort, recorded=recorded, leads=leads)
    except ConfigError as err:
        raise ConfigError(f"--split {split} scores the held-out part of the cohort the model was fine-tuned on: "
                          f"{err}. For external validation on another cohort use --split all") from None
    # thresholds are chosen on validation: scoring validation itself uses a fixed 0.5 instead
    return (test, val) if split == "test" else (val, None)


def run_evaluate(args) -> int:
    import torch

    from lsemvae.data.cache import cohort_tasks
    from lsemvae.data.tasks import task_name
    from lsemvae.train.evaluate import EvalConfig, evaluate, load_classifier

    torch.set_num_threads(args.threads)
    model, ckpt = load_classifier(args.checkpoint)
    heads = list(model.heads)
    task_names = [task_name(t) for t in args.task] if args.task else heads
    missing = [t for t in task_names if t not in heads]
    if missing:
        raise ConfigError(f"{args.checkpoint}: no head for task(s) {missing}; its heads are {heads}")
    cohort = _cohort(args, model, ckpt)
    tasks = cohort_tasks(cohort, task_names)
    provenance = ckpt.get("provenance") or {}
    leads = resolve_lead_set(args.leads or provenance.get("leads") or "6L")
    test_idx, val_idx = _split(cohort, args.split, provenance.get("split"), leads)
    report_lead_faults(cohort, leads, test_idx if val_idx is None else np.concatenate([test_idx, val_idx]))
    headline_computable(cohort, tasks, test_idx)
    cfg = EvalConfig(leads=leads, predict_kwargs=(ckpt.get("state") or {}).get("predict_kwargs") or {},
                     n_boot=args.n_boot, seed=args.seed, threshold_method=args.threshold,
                     target_sensitivity=args.target_sensitivity, interpretability=not args.no_interpret,
                     ig_steps=args.ig_steps, ig_per_class=args.ig_per_class,
                     title=args.title or f"Evaluation of {Path(args.checkpoint).name} on {args.split}",
                     extra={"split": args.split, "checkpoint": str(args.checkpoint)})
    results = evaluate(model, cohort, test_idx, cfg, val_indices=val_idx, tasks=tasks, out_dir=args.out,
                       provenance={"checkpoint": str(args.checkpoint), "checkpoint_provenance": provenance})
    missing = [t for t, r in results["tasks"].items() if not np.isfinite(r["macro"]["auroc"])]
    if missing:
        raise LSEMVAEError(f"macro AUROC could not be computed for {', '.join(missing)} (no class with both positive "
                           f"and negative labels among the {len(test_idx)} records scored); the report in {args.out} "
                           "has what could be computed")
    return 0


def headline_computable(cohort, tasks, rows) -> None:
    """Refuse, before any scoring, an evaluation whose macro AUROC cannot exist: a task without a class that has both
    positive and negative labels among the records scored (all labels missing, or one class only)."""
    for name, task in tasks.items():
        y = np.asarray(cohort.labels[name])[np.asarray(rows, dtype=np.int64)]
        if ((y == 1).any(0) & (y == 0).any(0)).any():
            continue
        from lsemvae.data.tasks import label_sources
        found = (f"no labels in the {len(rows)} records scored" if np.isnan(y).all() else
                 f"no class with both positive and negative labels ({int((y == 1).sum())} positive, "
                 f"{int((y == 0).sum())} negative labels over its classes)")
        raise ConfigError(f"task {name!r} of cohort {cohort.path} has {found}: its AUROC cannot be computed. It reads "
                          f"{label_sources(task)}; prepare the cohort with those labels (`lsemvae data prepare "
                          "--tasks ...`) or score another task with --task")


def run_compare(args) -> int:
    import json

    from lsemvae.train.evaluate import compare_predictions

    result = compare_predictions(args.a, args.b, n_boot=args.n_boot, seed=args.seed)
    text = json.dumps({"a": str(args.a), "b": str(args.b), "tasks": result}, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    for task, r in result.items():
        m = r["macro"]
        print(f"{task}: macro AUROC difference a - b = {m['diff']:+.3f} (95% CI {m['ci'][0]:+.3f} to {m['ci'][1]:+.3f}, "
              f"p = {m['p_value']:.3f}, paired bootstrap n={r['bootstrap']['n_used']})")
    return 0


def register(subparsers) -> None:
    c = subparsers.add_parser(
        "compare",
        help="paired bootstrap of the AUROC difference between two evaluations of the same records",
        description="Compare two `lsemvae evaluate` runs on the same split: reads their predictions.csv and gives the "
        "macro and per-class AUROC difference (A - B) with a paired bootstrap 95%% CI and p-value.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("a", type=Path, help="predictions.csv of method A")
    c.add_argument("b", type=Path, help="predictions.csv of method B (same records, same order)")
    c.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap resamples")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, default=None, help="also write the full result as JSON here")
    c.set_defaults(func=run_compare)

    p = subparsers.add_parser(
        "evaluate",
        help="score a fine-tuned checkpoint: AUROC with CIs, calibration, gates, lead attributions, report",
        description="Evaluate a fine-tuned LS-EMVAE or CNN-baseline checkpoint on a held-out split. Writes "
        "OUT/report.{json,md,html} (ROC and reliability plots embedded), OUT/predictions.csv (per-record scores, "
        "for paired comparisons) and OUT/gates.csv. --split test scores the test part fine-tuning held out (PTB-XL "
        "fold 10, or the test records `lsemvae finetune --cache` recorded in the checkpoint, only on that same cohort) "
        "with thresholds chosen on its validation part (fold 9, or the recorded validation records). Another "
        "cohort (external validation) is scored with --split all.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned model (lsemvae finetune writes OUT/model.pt)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--cache", type=Path, help="a prepared cohort cache directory")
    data.add_argument("--ptbxl", type=Path, help="PTB-XL root (folder with ptbxl_database.csv); cached under --cache-dir")
    data.add_argument("--dataset", choices=["ptb-xl"], help=f"the staged dataset (ptb-xl = {SHARED_PTBXL})")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where --ptbxl/--dataset caches are kept")
    p.add_argument("--split", choices=["test", "val", "all"], default="test",
                   help="test = the held-out test part (PTB-XL fold 10, or the records finetune --cache recorded), "
                        "thresholds from its validation part (fold 9, or the recorded ones); val = the validation "
                        "part; all = every record of any cohort (threshold 0.5)")
    p.add_argument("--leads", default=None, help="lead set: 6L, 12L or names like I,II,aVF (default: as fine-tuned)")
    p.add_argument("--task", action="append", default=None,
                   help="task to score, a head name or column:<label column> (repeatable; default: every head)")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="report directory")
    p.add_argument("--n-boot", type=positive_int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and IG-sampling seed")
    p.add_argument("--threshold", choices=["youden", "sensitivity"], default="youden",
                   help="how the decision threshold is chosen on validation")
    p.add_argument("--target-sensitivity", type=open_fraction, default=0.9, help="for --threshold sensitivity")
    p.add_argument("--no-interpret", action="store_true", help="skip gates, integrated gradients and lead ablation")
    p.add_argument("--ig-steps", type=positive_int, default=32, help="integrated-gradients quadrature steps")
    p.add_argument("--ig-per-class", type=positive_int, default=16, help="records per class explained by integrated gradients")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    p.add_argument("--title", default=None, help="report title")
    p.set_defaults(func=run_evaluate)
