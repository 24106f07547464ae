"""``lsemvae pretrain`` and ``lsemvae finetune``: thin CLI over :mod:`pretrain` and :mod:`finetune`.

Data come from the cohort cache (:mod:`lsemvae.data.cache`): PTB-XL (``--ptbxl``, official
strat_folds), LUDB (``--ludb``) or any folder of records (``--folder``), preprocessed at the
model's sampling rate and length; ``finetune --cache`` takes a cohort already prepared
(``lsemvae data prepare``), split by patient (:func:`~lsemvae.data.cache.cohort_split`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from lsemvae.argtypes import fraction_up_to_one, open_fraction, positive_float, positive_int
from lsemvae.config import validate
from lsemvae.errors import ConfigError, LSEMVAEError
from lsemvae.leads import LEADS_12, resolve_lead_set
from lsemvae.model.config import FUSIONS


def _provenance(pcfg, cohorts, args, used) -> dict:
    """What a pretrained checkpoint saw (``used``: each cohort's rows it trained and validated on) and what made it
    (``lsemvae pretrained export`` carries it into the card)."""
    from lsemvae.data.preprocess import PIPELINE_VERSION
    from lsemvae.provenance import code_state, command_line, environment
    return {"preprocess_config": pcfg.model_dump(mode="json"), "pipeline_version": PIPELINE_VERSION,
            "data_cache_keys": {c_name: c.key for c_name, c in cohorts.items()},
            "data": {c_name: {"records": len(used[c_name]), "patients": len({c.patient_ids[i] for i in used[c_name]})}
                     for c_name, c in cohorts.items()},
            "excluded_folds": sorted(args.exclude_folds) if args.ptbxl else [], "val_fraction": args.val_fraction,
            "code": code_state(), "command": command_line(), "environment": environment()}


def _datasets(args) -> dict[str, tuple[str, Path]]:
    """``{cohort key: (layout, root)}`` for the data options given: --ptbxl, --ludb, --folder."""
    given = {key: (key, root) for key, root in (("ptb-xl", args.ptbxl), ("ludb", getattr(args, "ludb", None))) if root}
    given.update({f"folder:{f}": ("folder", f) for f in getattr(args, "folder", None) or []})
    return given


def load_cohorts(args, pcfg, tasks=()) -> dict:
    """The cached cohorts named on the command line, the very caches `lsemvae data prepare` builds (built here once
    if it has not): a command chooses its rows from them (pretraining leaves PTB-XL's test fold out)."""
    from lsemvae.data.commands import dataset_cohort

    datasets = _datasets(args)
    if not datasets:
        raise ConfigError("no data given: pass --ptbxl, --ludb or --folder")
    cohorts = {}
    for key, (kind, root) in datasets.items():
        cohorts[key] = dataset_cohort(kind, Path(root), pcfg, Path(args.cache_dir), tasks=list(tasks))
        print(f"data: {cohorts[key].path} ({len(cohorts[key])} records)")
    return cohorts


def report_lead_faults(cohort, leads, rows) -> None:
    """Say which records a command leaves out because a lead it reads failed QC (the cache keeps them masked)."""
    from collections import Counter

    from lsemvae.data.cache import lead_fault_skips
    skips = lead_fault_skips(cohort, leads, rows)
    if skips:
        counts = ", ".join(f"{r} {n}" for r, n in Counter(s["reason"] for s in skips).most_common())
        print(f"left out {len(skips)} record(s) of {cohort.path.name} with a failed QC check in a lead read ({counts}; "
              f"e.g. {skips[0]['record']}: {skips[0]['message']})")


def run_pretrain(args) -> int:
    from lsemvae.data.cache import CohortDataset, patient_split
    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.pretrain import PretrainConfig, pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("fusion", args.fusion), ("amplitude", args.amplitude)) if v}
    mcfg = get_profile(args.profile, **overrides)
    pcfg = mcfg.preprocess_config()
    cohorts = load_cohorts(args, pcfg)
    train_parts, val_parts, used = [], [], {}
    for name, cohort in cohorts.items():
        report_lead_faults(cohort, LEADS_12, None)
        # PTB-XL's test fold stays out of pretraining: rows chosen from the shared cache, split as if it held no more
        kept = [i for i, m in enumerate(cohort.meta) if m.get("strat_fold") not in set(args.exclude_folds)]
        tr, va, _ = patient_split(cohort, args.val_fraction, seed=args.seed, rows=kept)
        used[name] = np.concatenate([tr, va])
        train_parts.append(CohortDataset(cohort, tr, tasks=[]))  # unlabelled: the caches' labels differ by dataset
        val_parts.append(CohortDataset(cohort, va, tasks=[]))
    train_set, val_set = ConcatDataset(train_parts), ConcatDataset(val_parts)
    if len(val_set) == 0:
        raise ConfigError("the validation split is empty: raise --val-fraction or add data")
    cfg = validate(PretrainConfig, {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                    "seed": args.seed}, source="command line")
    torch.manual_seed(args.seed)
    model = build_model(mcfg)
    print(f"pretraining {mcfg.profile}: {len(train_set)} train / {len(val_set)} validation records -> {args.out}")
    state = pretrain(model, train_set, val_set, cfg, args.out, provenance=_provenance(pcfg, cohorts, args, used),
                     resume=args.resume)
    best = state["best_metrics"]
    print(f"best epoch {state['best_epoch']}: val loss {state['best_val_loss']:.2f}, R2 {best.get('val_r2_mean', float('nan')):.3f}, "
          f"active dims {best.get('val_active_dims')}/{mcfg.latent_dim}; checkpoint {Path(args.out) / 'best.pt'}")
    return 0


def _finetune_model(args, tasks, heads):
    """(model, recipe, provenance) for ``--model``: LS-EMVAE (pretrained or random) or the CNN baseline."""
    from lsemvae.model.config import get_profile
    from lsemvae.model.lsemvae import build_model
    from lsemvae.train.baselines import ResNet1D
    from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint
    from lsemvae.train.finetune import FINETUNE_PROFILES, FinetuneConfig

    if args.model == "cnn":
        if args.checkpoint or args.mode == "probe":
            raise ConfigError("--model cnn trains a from-scratch CNN: drop --checkpoint and --mode probe")
        return ResNet1D(tasks, leads=args.leads), FinetuneConfig(), {"pretrained": None, "baseline": "resnet1d"}
    head_specs = {n: h.model_dump() for n, h in heads.items()}
    if args.checkpoint and args.random_init:
        raise ConfigError("--checkpoint and --random-init contradict each other: drop one")
    if not (args.checkpoint or args.random_init or args.fusion):
        from lsemvae.pretrained import DEFAULTS
        if args.profile not in DEFAULTS:
            raise ConfigError(f"no pretrained checkpoint is shipped for profile {args.profile!r}: pass --checkpoint "
                              f"(pretrain one with `lsemvae pretrain --profile {args.profile}`) or --random-init")
        args.checkpoint = DEFAULTS[args.profile]
        print(f"no --checkpoint given: starting from the shipped pretrained checkpoint {args.checkpoint} "
              f"(`lsemvae pretrained show {args.checkpoint}`; --random-init for random encoders)")
    if args.checkpoint:
        if args.fusion:
            raise ConfigError("--fusion applies to a random-encoder model; a checkpoint keeps the fusion it was "
                              "pretrained with (pretrain with `lsemvae pretrain --fusion ...` for an ablation)")
        ckpt = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(ckpt, tasks=head_specs)
        print(f"pretrained checkpoint: {args.checkpoint}, sha256 {ckpt['source']['sha256'][:16]}…, pretrained on "
              f"{ckpt['source']['pretrained_on']}")
        provenance = {**ckpt["provenance"], "pretrained": ckpt["source"]}
    else:
        overrides = {"fusion": args.fusion} if args.fusion else {}
        model = build_model(get_profile(args.profile, tasks=head_specs, **overrides))
        provenance = {"pretrained": None}
    return model, FINETUNE_PROFILES.get(model.config.profile, FinetuneConfig()), provenance


def _require_both_classes(cohort, tasks, parts: dict) -> None:
    """Every task needs both classes in training (to learn) and validation (its AUROC drives early stopping)."""
    for t in tasks:
        for part, rows in parts.items():
            y = np.asarray(cohort.labels[t])[rows]  # NaN (unknown) compares false to both classes
            if ((y == 1).any(0) & (y == 0).any(0)).any():
                continue
            found = (f"no labels in its {len(rows)} records" if np.isnan(y).all() else
                     f"only one class ({int((y == 1).sum())} positive, {int((y == 0).sum())} negative labels)")
            raise ConfigError(f"task {t!r} has {found} in the {part} part of cohort {cohort.path}: it can be "
                              "neither learned nor validated. Check its label column, leave it out with --task, or "
                              "give more records of the missing class (a patient split: another --split-seed or "
                              "larger fractions)")


def run_finetune(args) -> int:
    from lsemvae.data.cache import (
        CohortDataset, cohort_split, cohort_tasks, label_fraction, load_cohort, matching_cohort,
    )
    from lsemvae.data.tasks import resolve_tasks
    from lsemvae.model.config import TaskHeadSpec, get_profile
    from lsemvae.train.checkpoint import save_checkpoint
    from lsemvae.train.finetune import FinetuneConfig, finetune

    if not (args.ptbxl or args.cache):
        raise ConfigError("no data given: pass --ptbxl ROOT (PTB-XL, official folds) or --cache DIR (a cohort "
                          "prepared with `lsemvae data prepare`, split by patient)")
    # a prepared cohort is opened first: its labels are the default tasks, which the model's heads need
    prepared = load_cohort(args.cache) if args.cache else None
    tasks = cohort_tasks(prepared, args.task) if prepared else resolve_tasks(args.task)
    heads = {n: TaskHeadSpec(kind=t.kind, n_outputs=t.n_outputs) for n, t in tasks.items()}
    torch.manual_seed(args.seed)
    leads = resolve_lead_set(args.leads)
    model, recipe, provenance = _finetune_model(args, tasks, heads)
    # the CNN reads the same preprocessed signals as the profile's LS-EMVAE (identical records and folds)
    pcfg = (model.config if args.model == "lsemvae" else get_profile(args.profile)).preprocess_config()
    cohort = matching_cohort(prepared, pcfg) if prepared else load_cohorts(args, pcfg, tasks=list(args.task))["ptb-xl"]
    # the test part is never used here: `lsemvae evaluate --split test` scores it from the recorded split;
    # QC applies to the leads fine-tuned on: a 6-lead model keeps records whose precordial leads failed
    report_lead_faults(cohort, leads, None)
    train_idx, val_idx, _, split = cohort_split(cohort, val_fraction=args.val_fraction,
                                                test_fraction=args.test_fraction, seed=args.split_seed, leads=leads)
    train_idx = label_fraction(cohort, train_idx, args.label_fraction, task=next(iter(tasks)), seed=args.seed)
    _require_both_classes(cohort, tasks, {"training": train_idx, "validation": val_idx})
    train_set = CohortDataset(cohort, train_idx, leads=leads, tasks=list(tasks))
    val_set = CohortDataset(cohort, val_idx, leads=leads, tasks=list(tasks))
    mode = "full" if args.model == "cnn" else args.mode
    cfg = validate(FinetuneConfig, {**recipe.model_dump(), "mode": mode, "epochs": args.epochs,
                                     "lr": args.lr if args.lr is not None else recipe.lr, "seed": args.seed},
                   source="command line")
    print(f"fine-tuning {args.model} ({mode}, leads {','.join(leads)}, tasks {', '.join(tasks)}) on "
          f"{cohort.path.name}: {len(train_set)} train / {len(val_set)} validation records, {len(split['test_ids'])} test records held "
          f"out ({split['method']} split)")
    result = finetune(model, train_set, val_set, tasks, cfg)
    out = Path(args.out)
    save_checkpoint(out / "model.pt", model=model, epoch=result["best_epoch"],
                    provenance={**provenance, "preprocess_config": pcfg.model_dump(mode="json"),
                                "finetune_config": cfg.model_dump(mode="json"), "leads": list(leads),
                                "label_fraction": args.label_fraction, "n_train": len(train_set), "split": split},
                    state={k: v for k, v in result.items() if k != "history"})
    (out / "finetune.json").write_text(json.dumps(result, indent=2))
    print(f"best epoch {result['best_epoch']}: validation macro AUROC {result['best_val_auroc']:.3f}; model {out / 'model.pt'}")
    return 0


def _data_args(p: argparse.ArgumentParser, *, prepared: bool = False) -> None:
    source = p.add_mutually_exclusive_group() if prepared else p
    source.add_argument("--ptbxl", type=Path, help="PTB-XL root (folder with ptbxl_database.csv)")
    if prepared:
        source.add_argument("--cache", type=Path, help="a cohort prepared with `lsemvae data prepare` (e.g. a "
                            "hospital's records + labels CSV): split by patient into training, validation and test")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="preprocessed cohort cache (default .cache)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain LS-EMVAE on unlabeled 12-lead ECGs",
        description="Self-supervised pretraining (reconstruct every lead's median beat from the leads present, with "
        "expert dropout). Validation is a patient-level split; every epoch writes OUT/last.pt (resumable), "
        "OUT/metrics.jsonl (loss terms, R2 per lead, active latent dimensions) and, when validation improves, OUT/best.pt.")
    _data_args(p)
    p.add_argument("--ludb", type=Path, help="LUDB root (adds its 200 records)")
    p.add_argument("--folder", type=Path, action="append", help="any folder of records (repeatable)")
    p.add_argument("--exclude-folds", type=int, nargs="*", default=[10],
                   help="PTB-XL strat_folds kept out of pretraining (default: 10, the test fold)")
    p.add_argument("--profile", default="compact", help="model profile: compact (default) or faithful")
    p.add_argument("--fusion", choices=FUSIONS, default=None,
                   help="fusion ablation (default: the profile's, hime-gated for compact)")
    p.add_argument("--amplitude", choices=("millimetres", "standardised"), default=None,
                   help="what the encoders read (default: the profile's, millimetres for compact); the checkpoint "
                        "records it and fine-tuning, evaluation and the federation's sites follow")
    p.add_argument("--epochs", type=positive_int, default=40)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=open_fraction, default=0.1, help="share of patients held out for validation")
    p.add_argument("--out", type=Path, default=Path("runs/pretrain"))
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly where it stopped")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice); recorded, since CPU results depend on it: the "
                        "same seed and thread count on the same machine give the same weights")
    p.set_defaults(func=run_pretrain)

    p = subparsers.add_parser(
        "finetune", help="fine-tune LS-EMVAE (or a baseline) on labelled ECGs: PTB-XL or your own prepared cohort",
        description="Supervised fine-tuning with early stopping on validation macro AUROC; the test part is never "
        "touched here. --ptbxl: official folds 1-8 train, 9 validation, 10 test. --cache: a cohort prepared with "
        "`lsemvae data prepare` (e.g. a hospital's records and label column), split by patient (--val-fraction, "
        "--test-fraction, --split-seed; a cohort of PTB-XL records keeps its folds). OUT/model.pt records the split "
        "(method, fractions, seed, the cohort's cache key, validation and test record ids): `lsemvae evaluate "
        "--cache DIR --split test` scores exactly those test records. probe = frozen encoders (fusion gate + heads "
        "trained); full = everything, encoders at a lower learning rate. Class imbalance via pos_weight. Writes "
        "OUT/model.pt and OUT/finetune.json. Baselines through the same split: --model cnn (from-scratch 1-D "
        "ResNet), --random-init --mode probe (random-encoder probe), --fusion poe|moe|hime (fusion ablations, random "
        "encoders). Without --checkpoint, LS-EMVAE starts from the shipped pretrained checkpoint (`lsemvae pretrained "
        "list`). Score any of them with `lsemvae evaluate`.")
    _data_args(p, prepared=True)
    p.add_argument("--model", choices=["lsemvae", "cnn"], default="lsemvae",
                   help="lsemvae (default) or cnn: the from-scratch 1-D ResNet baseline on the same leads and split")
    p.add_argument("--checkpoint", type=Path,
                   help="pretrained checkpoint: a shipped name (`lsemvae pretrained list`), a checkpoint folder or "
                        "lsemvae pretrain's best.pt (default: the profile's shipped one, compact-ptbxl-ludb)")
    p.add_argument("--random-init", action="store_true",
                   help="random encoders instead of pretrained ones (the random-encoder baseline)")
    p.add_argument("--profile", default="compact", help="profile with --random-init (compact or faithful)")
    p.add_argument("--fusion", choices=FUSIONS, default=None,
                   help="fusion ablation: a random-encoder model with this fusion (a checkpoint keeps its pretrained one)")
    p.add_argument("--task", action="append", default=None,
                   help="task (repeatable): a built-in name or column:<label column>; default: superclass with "
                        "--ptbxl, every task the cohort has labels for with --cache")
    p.add_argument("--leads", default="6L", help="lead set: 6L (default), 12L or names like I,II,V1")
    p.add_argument("--mode", choices=["probe", "full"], default="full")
    p.add_argument("--label-fraction", type=fraction_up_to_one, default=1.0, help="share of training records with labels (e.g. 0.1)")
    p.add_argument("--epochs", type=positive_int, default=40)
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the profile's fine-tuning recipe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=open_fraction, default=0.15,
                   help="--cache: share of patients for validation (default 0.15; PTB-XL keeps fold 9)")
    p.add_argument("--test-fraction", type=open_fraction, default=0.15,
                   help="--cache: share of patients held out for testing (default 0.15; PTB-XL keeps fold 10)")
    p.add_argument("--split-seed", type=int, default=0, help="--cache: seed of the patient split (default 0)")
    p.add_argument("--out", type=Path, default=Path("runs/finetune"))
    p.set_defaults(func=lambda a: run_finetune(_with_default_task(a)))


def _with_default_task(args):
    if not args.task and not args.cache:  # a prepared cohort defaults to every task it has labels for
        args.task = ["superclass"]
    if not 0 < args.label_fraction <= 1:
        raise LSEMVAEError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    return args
