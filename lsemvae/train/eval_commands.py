"""``lsemvae evaluate``: score a fine-tuned checkpoint on a held-out split and write the report.

Works for LS-EMVAE checkpoints and the CNN baseline (``model_config.architecture = "resnet1d"``),
so every method is scored on the same records by the same code. Preprocessing, lead set and
test-time crop averaging default to what the checkpoint recorded at fine-tuning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lsemvae.argtypes import open_fraction, positive_int
from lsemvae.errors import ConfigError

SHARED_PTBXL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ptb-xl"


def _preprocess_config(model, ckpt):
    from lsemvae.data.preprocess import PreprocessConfig

    recorded = (ckpt.get("provenance") or {}).get("preprocess_config")
    if recorded:
        return PreprocessConfig(**recorded)
    cfg = model.config
    if hasattr(cfg, "preprocess_config"):
        return cfg.preprocess_config()
    return PreprocessConfig()


def _load_matching_cache(path, pcfg, fix: str):
    """A prepared cohort, refused when preprocessed at another rate, length or amplitude than the model reads."""
    from lsemvae.data.cache import load_cohort

    cohort = load_cohort(path)
    have = cohort.config
    if (have.fs, have.n_samples, have.amplitude) != (pcfg.fs, pcfg.n_samples, pcfg.amplitude):
        raise ConfigError(f"{path}: cached at {have.fs} Hz x {have.n_samples} samples ({have.amplitude}), the model "
                          f"expects {pcfg.fs} Hz x {pcfg.n_samples} ({pcfg.amplitude}); {fix}")
    return cohort


def _cohort(args, model, ckpt, task_names):
    from lsemvae.data.cache import build_cohort
    from lsemvae.data.sources import ptbxl_index
    from lsemvae.data.tasks import resolve_tasks

    pcfg = _preprocess_config(model, ckpt)
    if args.cache:
        return _load_matching_cache(args.cache, pcfg, "use --ptbxl to build a matching cache")
    root = args.ptbxl or (SHARED_PTBXL if args.dataset == "ptb-xl" else None)
    if root is None:
        raise ConfigError("no data given: pass --cache DIR (a prepared cohort), --ptbxl ROOT or --dataset ptb-xl")
    refs = ptbxl_index(root, rate=100 if pcfg.fs <= 100 else 500)
    return build_cohort(refs, list(resolve_tasks(task_names).values()), pcfg, args.cache_dir, name="ptb-xl")


def _split(cohort, split: str):
    import numpy as np

    from lsemvae.data.cache import ptbxl_folds

    if split == "all":
        return np.arange(len(cohort)), None
    try:
        _, val, test = ptbxl_folds(cohort)
    except ConfigError as err:
        raise ConfigError(f"--split {split} needs PTB-XL strat_folds ({err}); use --split all for other cohorts") from None
    # thresholds are chosen on validation: scoring validation itself uses a fixed 0.5 instead
    return (test, val) if split == "test" else (val, None)


def run_evaluate(args) -> int:
    import torch

    from lsemvae.train.evaluate import evaluate, load_classifier

    torch.set_num_threads(args.threads)
    model, ckpt = load_classifier(args.checkpoint)
    heads = list(model.heads)
    task_names = args.task or heads
    missing = [t for t in task_names if t not in heads]
    if missing:
        raise ConfigError(f"{args.checkpoint}: no head for task(s) {missing}; its heads are {heads}")
    cohort = _cohort(args, model, ckpt, task_names)
    absent = [t for t in task_names if t not in cohort.tasks]
    if absent:
        raise ConfigError(f"cohort {cohort.path} has no labels for {absent} (it has {list(cohort.tasks)})")
    test_idx, val_idx = _split(cohort, args.split)
    provenance = ckpt.get("provenance") or {}
    leads = args.leads or provenance.get("leads") or "6L"
    state = ckpt.get("state") or {}
    evaluate(model, cohort, test_idx, val_indices=val_idx, tasks={t: cohort.tasks[t] for t in task_names},
             leads=leads, out_dir=args.out, predict_kwargs=state.get("predict_kwargs"), n_boot=args.n_boot,
             seed=args.seed, threshold_method=args.threshold, target_sensitivity=args.target_sensitivity,
             interpretability=not args.no_interpret, ig_steps=args.ig_steps, ig_per_class=args.ig_per_class,
             config={"split": args.split, "checkpoint": str(args.checkpoint)},
             provenance={"checkpoint": str(args.checkpoint), "checkpoint_provenance": provenance},
             title=args.title or f"Evaluation of {Path(args.checkpoint).name} on {args.split}")
    return 0


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
        "for paired comparisons) and OUT/gates.csv. Thresholds are chosen on the validation split (PTB-XL fold 9) "
        "and applied to test (fold 10).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned model (lsemvae finetune writes OUT/model.pt)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--cache", type=Path, help="a prepared cohort cache directory")
    data.add_argument("--ptbxl", type=Path, help="PTB-XL root (folder with ptbxl_database.csv); cached under --cache-dir")
    data.add_argument("--dataset", choices=["ptb-xl"], help=f"the staged dataset (ptb-xl = {SHARED_PTBXL})")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where --ptbxl/--dataset caches are kept")
    p.add_argument("--split", choices=["test", "val", "all"], default="test",
                   help="test = PTB-XL fold 10 (thresholds from fold 9); val = fold 9; all = every record (threshold 0.5)")
    p.add_argument("--leads", default=None, help="lead set: 6L, 12L or names like I,II,aVF (default: as fine-tuned)")
    p.add_argument("--task", action="append", default=None, help="task to score (repeatable; default: every head)")
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
