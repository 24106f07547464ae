"""Model variants on PTB-XL fold-9 validation only: how the compact profile's defaults were chosen.

Fold 10 (the test fold) is never scored here. Each pretraining variant (the compact profile with
model overrides) is pretrained as ``benchmarks/ptbxl_accuracy.py`` pretrains (PTB-XL folds 1-9 +
LUDB, 40 epochs), then fully fine-tuned on the 6 limb leads for the five diagnostic superclasses at
100% and 10% of the training labels, seeds 0 and 1. Fine-tuning variants reuse the reference
checkpoint. ``ptbxl_accuracy.py`` then measures the chosen defaults on the test fold.

Usage (from the repo root; about 30 min on 2 cores for every variant):
    .venv/bin/python -m benchmarks.model_variants
    .venv/bin/python -m benchmarks.model_variants --variants reference standardised   # a subset
Writes benchmarks/results/model_variants.json (a subset run keeps the other variants' rows).
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
from benchmarks import ptbxl_accuracy as bench

REPO = H.REPO

#: name -> (what it changes, model overrides, fine-tuning recipe overrides, pretraining recipe overrides); a variant
#: with model (other than head) or pretraining overrides is pretrained anew, the others reuse the reference checkpoint
VARIANTS: dict[str, tuple[str, dict, dict, dict]] = {
    "reference": ("the compact profile as it is", {}, {}, {}),
    "standardised": ("each lead z-scored per record (the paper's input, the profile before millimetres)",
                     {"amplitude": "standardised"}, {}, {}),
    "wide-encoders": ("encoder channels 32-64-96-128 instead of 16-32-48-64", {"encoder_channels": (32, 64, 96, 128)}, {}, {}),
    "align-1.0": ("alignment weight 1.0 instead of 0.1", {"objective": {"align_weight": 1.0}}, {}, {}),
    "keep-0.5": ("pretraining expert keep probability 0.5 instead of 0.75", {"objective": {"expert_keep_prob": 0.5}}, {}, {}),
    "fused-head": ("heads read the fused mean only (no per-lead means), no head dropout",
                   {"head_input": "fused", "head_dropout": 0.0}, {}, {}),
    "mlp-head": ("a 128-unit hidden layer in the head", {"head_hidden": 128}, {}, {}),
    "encoder-lr-1.0": ("encoders fine-tune at the head's learning rate (not 0.3x)", {}, {"encoder_lr_scale": 1.0}, {}),
    "eval-crops-5": ("5 evaluation crops instead of 3", {}, {"eval_crops": 5}, {}),
    "pretrain-cosine": ("pretraining learning rate decays on a cosine over the 40 epochs (was constant)",
                        {}, {}, {"lr_schedule": "cosine"}),
    "pretrain-120-cosine": ("pretraining 120 epochs (was 40), cosine learning rate", {}, {},
                            {"epochs": 120, "lr_schedule": "cosine"}),
    "beta-0.5": ("final KL weight 0.5 instead of 1 (a more informative latent)", {"objective": {"beta_max": 0.5}}, {}, {}),
    "probe-first": ("fusion + heads trained on frozen encoders first, then everything (LP-FT)", {},
                    {"probe_first": True}, {}),
    "lr-3e-4": ("fine-tuning learning rate 3e-4 instead of 1e-3", {}, {"lr": 3e-4}, {}),
    "whole-signal": ("fine-tuning on the whole 10-s signal (no random 5-s crops), scored on it too", {},
                     {"augment": {"crop_samples": None, "scale_jitter": 0.1, "noise_std": 0.05}, "eval_crops": 1}, {}),
    "head-init-random": ("new heads start random (PyTorch's default) instead of at zero", {"head_init": "random"}, {}, {}),
    "latent-128": ("latent dimension 128 instead of 64", {"latent_dim": 128}, {}, {}),
}
HEAD_ONLY = {"head_input", "head_dropout", "head_hidden", "head_init"}  # applied at fine-tuning: no new pretraining
FRACTIONS, SEEDS = (1.0, 0.1), (0, 1)


def model_overrides(overrides: dict) -> dict:
    """Objective overrides merged into the profile's objective (a partial objective would reset the rest)."""
    from lsemvae.model.config import get_profile
    out = dict(overrides)
    if "objective" in out:
        out["objective"] = {**get_profile("compact").objective.model_dump(), **out["objective"]}
    return out


def main(argv=None) -> int:
    shared = REPO.parent / "shared" / "data"
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_variants", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--ptbxl", type=Path, default=shared / "ptb-xl")
    p.add_argument("--ludb", type=Path, default=shared / "ludb")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "variants")
    p.add_argument("--jobs", type=int, default=2, help="parallel single-threaded processes")
    p.add_argument("--output", type=Path, default=H.RESULTS / "model_variants.json")
    args = p.parse_args(argv)
    args.pretrain_epochs, args.finetune_epochs, args.patience = 40, 40, 10
    t0 = time.monotonic()
    bench.load_data(args)  # build the reference caches once, before the workers read them
    args.work_dir.mkdir(parents=True, exist_ok=True)
    pretrained, rows = {}, []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        needs = {name: ({k: v for k, v in VARIANTS[name][1].items() if k not in HEAD_ONLY}, VARIANTS[name][3])
                 for name in args.variants}
        own = {name: (model_overrides(m), p) for name, (m, p) in needs.items() if m or p}
        if "reference" in args.variants or len(own) < len(args.variants):
            own["reference"] = ({}, {})
        futures = {name: pool.submit(bench.run_pretrain, args, args.work_dir / name, m, p)
                   for name, (m, p) in own.items()}
        for name, fut in futures.items():
            pretrained[name] = fut.result()
            print(f"pretrained {name}: {pretrained[name]}", flush=True)
        jobs = []
        for name in args.variants:
            desc, m, f, _ = VARIANTS[name]
            ckpt = pretrained[name if name in own else "reference"]
            for fraction in FRACTIONS:
                for seed in SEEDS:
                    jobs.append((name, pool.submit(bench.run_finetune, args, "lsemvae-full", fraction, seed, ckpt,
                                                   model_overrides=model_overrides(m), finetune_overrides=f,
                                                   score_test=False)))
        for name, fut in jobs:
            r = fut.result()
            rows.append({"variant": name, **{k: r[k] for k in ("fraction", "seed", "val_macro_auroc", "best_epoch", "seconds")}})
            print(f"{name:16s} labels {r['fraction']:.0%} seed {r['seed']}: val {r['val_macro_auroc']:.3f}", flush=True)
    write(args, rows, pretrained, t0)
    return 0


def write(args, rows: list[dict], pretrained: dict, started: float) -> None:
    from lsemvae.train.checkpoint import load_checkpoint
    keep = ("epoch", "val_r2_mean", "val_r2_precordial_from_limb", "val_active_dims", "val_kl")
    old = json.loads(args.output.read_text()) if args.output.exists() else {"variants": {}}
    variants = {k: v for k, v in old.get("variants", {}).items() if k not in args.variants and k in VARIANTS}
    for name in args.variants:
        mine = [r for r in rows if r["variant"] == name]
        metrics = load_checkpoint(pretrained.get(name, pretrained["reference"]))["state"].get("best_metrics", {})
        variants[name] = {
            "changes": VARIANTS[name][0],
            "pretraining": {k: metrics.get(k) for k in keep} if name in pretrained else "the reference checkpoint",
            "val_macro_auroc_mean": {f"{f:.0%}": float(np.mean([r["val_macro_auroc"] for r in mine if r["fraction"] == f]))
                                     for f in FRACTIONS},
            "runs": mine,
        }
    # each row is compared with the reference of the run that measured it (the profile moves between runs)
    ref = variants.get("reference", {}).get("val_macro_auroc_mean", {})
    for name in args.variants:
        variants[name]["reference_val_macro_auroc_mean"] = ref
    for v in variants.values():
        own_ref = v.get("reference_val_macro_auroc_mean", ref)
        v["vs_reference"] = {k: round(x - own_ref[k], 4) for k, x in v["val_macro_auroc_mean"].items() if k in own_ref}
    result = {"selection": "PTB-XL fold-9 validation macro AUROC only, mean of seeds 0-1, full fine-tuning, "
                           "6 limb leads, superclass; fold 10 (test) never scored",
              "note": old.get("note", ""), "variants": variants, "runtime_seconds": round(time.monotonic() - started),
              "torch_threads_per_process": 1}
    H.write_results(args.output, H.meta("model_variants", ["--variants", *args.variants], started), result)
    for name, v in variants.items():
        print(f"{name:16s} " + "  ".join(f"{k} {x:.3f} ({v['vs_reference'].get(k, 0):+.3f})"
                                         for k, x in v["val_macro_auroc_mean"].items()))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
