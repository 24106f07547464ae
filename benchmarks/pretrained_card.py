"""The evaluation section of a pretrained checkpoint's model card, measured with the project's own commands.

For each fine-tuning mode (probe: frozen encoders; full: everything) and seed, on PTB-XL's official folds
(1-8 train, 9 early stopping, 10 test), 6 limb leads, the five diagnostic superclasses:

    lsemvae finetune --ptbxl ROOT --checkpoint NAME --mode MODE --leads 6L --seed S --out WORK/MODE-sS
    lsemvae evaluate --checkpoint WORK/MODE-sS/model.pt --ptbxl ROOT --split test --out WORK/MODE-sS/eval

then the seed-mean fold-10 macro AUROC with a bootstrap 95% CI (:func:`benchmarks.harness.seed_mean_bootstrap`:
identical stratified resamples for every seed), each seed's AUROC and CI as
`lsemvae evaluate` reports them, and the reconstruction R² of V1-V6 from the 6 limb leads as `lsemvae
evaluate` reports it (from the probe models: their encoders and decoders are the pretrained ones).

Writes benchmarks/results/pretrained_card.json and the card's evaluation (checkpoint.json + MODEL_CARD.md of
the checkpoint folder; the weights are not touched).

Usage (from the repo root, ~10 min on 2 shared cores):
    .venv/bin/python -m benchmarks.pretrained_card                       # compact-ptbxl-ludb, 3 seeds
    .venv/bin/python -m benchmarks.pretrained_card --checkpoint runs/pretrained/my-ckpt --no-update
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness as H
from benchmarks.harness import seed_mean_bootstrap

REPO = H.REPO

TASK = "superclass"
PRECORDIAL = ("V1", "V2", "V3", "V4", "V5", "V6")


def _rel(path: Path) -> str:
    return os.path.relpath(path, REPO)


def lsemvae(*argv: str) -> str:
    """Run one `lsemvae` command as a user would (its own process, from the repo root); return it as typed."""
    typed = "lsemvae " + shlex.join(argv)
    print(typed, flush=True)
    subprocess.run([sys.executable, "-m", "lsemvae", *argv], check=True, cwd=REPO)
    return typed


def run_one(args, mode: str, seed: int) -> dict:
    out = args.work_dir / f"{mode}-s{seed}"
    t0 = time.time()
    data = ["--ptbxl", _rel(args.ptbxl), "--cache-dir", _rel(args.cache_dir)]
    commands = [lsemvae("finetune", *data, "--checkpoint", args.checkpoint, "--mode", mode, "--leads", "6L",
                        "--seed", str(seed), "--out", _rel(out))]
    # interpretation (with the reconstruction) only where it is reported: the probe models
    commands.append(lsemvae("evaluate", "--checkpoint", _rel(out / "model.pt"), *data, "--split", "test", "--out", _rel(out / "eval"),
                            *(() if mode == "probe" else ("--no-interpret",))))
    report = json.loads((out / "eval" / "report.json").read_text())
    macro = report["tasks"][TASK]["macro"]
    return {"mode": mode, "seed": seed, "test_macro_auroc": macro["auroc"], "test_ci": macro["auroc_ci"],
            "n_test": report["provenance"]["n_test"], "reconstruction": report.get("reconstruction"),
            "predictions": str(out / "eval" / "predictions.csv"), "commands": commands,
            "seconds": round(time.time() - t0, 1)}


def summarise(runs: list[dict]) -> dict:
    from lsemvae.train.evaluate import read_predictions

    figures = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["seed"])
        preds = [read_predictions(Path(r["predictions"]))[1][TASK] for r in rs]
        summary = seed_mean_bootstrap(preds[0][0], [p[1] for p in preds])
        figures[mode] = {"mean": summary["mean"], "ci": summary["ci"], "seeds": [r["seed"] for r in rs],
                         "per_seed": [r["test_macro_auroc"] for r in rs], "per_seed_ci": [r["test_ci"] for r in rs],
                         "n_test": rs[0]["n_test"]}
    recon = [r["reconstruction"] for r in runs if r["mode"] == "probe" and r.get("reconstruction")]
    r2 = {lead: float(np.mean([rc["per_lead"][lead]["r2"] for rc in recon])) for lead in PRECORDIAL
          if all(lead in rc["per_lead"] for rc in recon)} if recon else {}
    pearson = {lead: float(np.mean([rc["per_lead"][lead]["pearson_r_median"] for rc in recon])) for lead in r2}
    return {"auroc": figures, "reconstruction_r2": r2, "reconstruction_pearson_median": pearson,
            "reconstruction_n": recon[0]["per_lead"]["V1"]["n"] if recon else None}


def card_entries(summary: dict, runs: list[dict], seeds: list[int]) -> list[dict]:
    """The evaluation section of checkpoint.json (rendered into MODEL_CARD.md)."""
    seeds_text = ", ".join(map(str, seeds))
    rows = [{"fine-tuning": {"probe": "probe (encoders frozen)", "full": "full (everything)"}[m],
             "macro AUROC, seed mean": f["mean"], "95% CI": f"{f['ci'][0]:.3f}-{f['ci'][1]:.3f}",
             "per seed": ", ".join(f"{v:.3f}" for v in f["per_seed"]), "test records": f["n_test"]}
            for m, f in summary["auroc"].items()]
    entries = [{
        "title": "PTB-XL fold 10: diagnostic superclasses from the 6 limb leads",
        "protocol": f"Fine-tuned on PTB-XL folds 1-8 of the staged subset (early stopping on fold 9), scored on fold 10, "
                    f"which pretraining never saw; 5 superclasses (NORM, MI, STTC, CD, HYP), multilabel, macro AUROC. "
                    f"Seeds {seeds_text}; the CI is a bootstrap over test records (1,000 stratified resamples, the same "
                    "for every seed) of the seed-mean AUROC.",
        "metric": "test_macro_auroc", "figures": summary["auroc"], "rows": rows,
        "commands": ["python -m benchmarks.pretrained_card        # all of the following, and this card", ""]
                    + [c for r in runs if r["seed"] == seeds[0] for c in r["commands"]]
                    + [f"(and the same with --seed {', '.join(map(str, seeds[1:]))})"] * (len(seeds) > 1),
    }]
    if summary["reconstruction_r2"]:
        entries.append({
            "title": "Reconstruction of the precordial leads from the 6 limb leads (PTB-XL fold 10)",
            "protocol": "Median beats of V1-V6 decoded from the limb leads alone, R² per lead (1 - SSE/SST around the "
                        "lead's mean beat) and median Pearson r, as `lsemvae evaluate` reports them for the probe models "
                        f"(mean over seeds {seeds_text}; their encoders and decoders are the pretrained ones, the fusion "
                        f"gate is fine-tuned); {summary['reconstruction_n']} records.",
            "figures": {"r2": summary["reconstruction_r2"], "pearson_median": summary["reconstruction_pearson_median"]},
            "rows": [{"lead": lead, "R²": r2, "Pearson r (median)": summary["reconstruction_pearson_median"][lead]}
                     for lead, r2 in summary["reconstruction_r2"].items()],
            "commands": ["the probe's `lsemvae evaluate` above (its report.json, `reconstruction`)"],
        })
    return entries


def main(argv=None) -> int:
    shared = REPO.parent / "shared" / "data"
    p = argparse.ArgumentParser(prog="python -m benchmarks.pretrained_card", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="compact-ptbxl-ludb", help="shipped name or checkpoint folder")
    p.add_argument("--ptbxl", type=Path, default=shared / "ptb-xl")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "pretrained-card")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", choices=["probe", "full"], default=["probe", "full"])
    p.add_argument("--output", type=Path, default=H.RESULTS / "pretrained_card.json")
    p.add_argument("--no-update", action="store_true", help="do not write the figures into the checkpoint's card")
    args = p.parse_args(argv)
    from lsemvae.pretrained import locate, read_meta
    from lsemvae.pretrained.export import write_meta

    folder = locate(args.checkpoint)
    meta = read_meta(folder)
    t0 = time.monotonic()
    runs = [run_one(args, mode, seed) for mode in args.modes for seed in args.seeds]
    summary = summarise(runs)
    entries = card_entries(summary, runs, args.seeds)
    result = {"checkpoint": meta["name"], "sha256": meta["weights"]["sha256"],
              "summary": summary, "evaluation": entries,
              "runs": [{k: v for k, v in r.items() if k != "reconstruction"} for r in runs]}
    H.write_results(args.output, H.meta("pretrained_card", argv, t0), result)
    for mode, f in summary["auroc"].items():
        print(f"{mode}: fold-10 macro AUROC {f['mean']:.3f} [{f['ci'][0]:.3f}, {f['ci'][1]:.3f}] "
              f"(seeds {', '.join(f'{v:.3f}' for v in f['per_seed'])})")
    if summary["reconstruction_r2"]:
        print("R² from the limb leads: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["reconstruction_r2"].items()))
    if not args.no_update:
        if read_meta(folder)["weights"]["sha256"] != meta["weights"]["sha256"]:
            raise SystemExit(f"{folder}: its weights changed during the run: card not updated")
        write_meta(folder, {**meta, "evaluation": entries})
        print(f"card updated: {folder}")
    print(f"wrote {args.output} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
