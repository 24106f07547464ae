"""What private evaluation costs: pooled AUROC and calibration from the sites' k-anonymous histograms vs exact.

    python -m benchmarks.private_evaluation                 # both cohorts, a non-DP and a DP (epsilon 8) model
    python -m benchmarks.private_evaluation --cohorts real

A site answers an evaluation request with k-anonymous aggregates only
(:func:`lsemvae.federation.private_eval.task_histogram`: its own ``evaluation.bins`` on [0, 1], adjacent bins
merged until each cell holds ``evaluation.min_cell`` records, a label with fewer withheld); the server pools
them (:func:`lsemvae.federation.private_eval.pooled`) and computes AUROC and ECE from the pooled counts.
Here the same trained federated models (benchmarks/federation.py's FedAvg runs on the benchmark cohorts,
from its run cache, and the final models of `make run`, benchmarks/make_run.py) are scored both ways on the
same held-out records: exactly from every record's score
(what a benchmark can do, no site may), and from the histograms each site would send under each policy
(bins x min_cell). The difference is what the privacy of the evaluation costs the coordinator's metrics;
the default policy's figure is checked against the round's own reported AUROC.

Writes ``benchmarks/results/private_evaluation.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness as H
from benchmarks.federation import FED, Arm, cohort_arguments, cohort_of, prepare, run_arm

RESULT = "private_evaluation.json"
DEFAULT = (20, 10)   # lsemvae.site.EvaluationPolicy: bins, min_cell
POLICIES = [DEFAULT, (20, 5), (20, 20), (10, 10), (50, 10)]
#: every policy as the sites apply it, then two candidate changes to the default (see private_metrics)
POLICY_ROWS = [{"bins": b, "min_cell": k} for b, k in POLICIES] + [
    {"bins": DEFAULT[0], "min_cell": DEFAULT[1], "whole_class": True},
    {"bins": DEFAULT[0], "min_cell": DEFAULT[1], "spread_cells": True}]
CAL_BINS = 10


def exact_metrics(y: np.ndarray, p: np.ndarray) -> dict:
    from lsemvae.train import metrics

    ece = [metrics.calibration(y[:, c], p[:, c], n_bins=CAL_BINS)["ece"] for c in range(y.shape[1])]
    return {"auroc": H.macro_auroc(y, p), "ece": float(np.mean(ece))}


def spread(hists: list) -> dict:
    """A candidate server-side estimate, not what the server does: every cell's count spread evenly over its own
    width (instead of placed at its mean score) on the common grid; AUROC then counts the overlap as ties."""
    from lsemvae.federation.private_eval import GRID, pooled

    def on_grid(counts) -> np.ndarray:
        out = np.zeros(GRID)
        if counts is not None:
            for lo, hi, n in zip(counts.edges, counts.edges[1:], counts.counts):
                a, b = int(round(lo * GRID)), max(int(round(hi * GRID)), int(round(lo * GRID)) + 1)
                out[a:b] += n / (b - a)
        return out

    hist = pooled(hists)   # the format and the classes check; its counts are replaced
    hist["pos"] = [sum(on_grid(h.pos[c]) for h in hists).tolist() for c in range(len(hist["classes"]))]
    hist["neg"] = [sum(on_grid(h.neg[c]) for h in hists).tolist() for c in range(len(hist["classes"]))]
    return hist


def private_metrics(y: np.ndarray, p: np.ndarray, site: np.ndarray, classes: list[str], *, bins: int,
                    min_cell: int, whole_class: bool = False, spread_cells: bool = False) -> dict:
    """What the server computes from the sites' replies under one policy, and what the sites withheld.

    Candidate changes, not what sites and server do: ``whole_class``: where a site withholds a class's positives
    or negatives, the server drops the other label's counts of that class at that site too (no site adds the
    negatives of a class without its positives, or the reverse); ``spread_cells``: :func:`spread` instead of
    :func:`~lsemvae.federation.private_eval.pooled` (AUROC only; calibration needs the cells' means)."""
    from lsemvae.federation.private_eval import pooled, task_histogram
    from lsemvae.train import metrics

    hists, withheld = [], 0
    for s in dict.fromkeys(site):
        mine = site == s
        h = task_histogram(y[mine], p[mine], classes, bins=bins, min_cell=min_cell)
        if whole_class:
            keep = [a is not None and b is not None for a, b in zip(h.pos, h.neg)]
            h = h.model_copy(update={"pos": [a if k else None for a, k in zip(h.pos, keep)],
                                     "neg": [b if k else None for b, k in zip(h.neg, keep)]})
        withheld += sum(c is None for c in [*h.pos, *h.neg])
        hists.append(h)
    hist = spread(hists) if spread_cells else pooled(hists)
    counted = float(np.sum(hist["pos"]) + np.sum(hist["neg"]))
    labelled = float(np.sum(~np.isnan(y)))
    return {"auroc": metrics.auroc_from_histograms(hist)["macro"]["auroc"],
            "ece": None if spread_cells else metrics.calibration_from_histograms(hist, n_bins=CAL_BINS)["macro"]["ece"],
            "labels_withheld": withheld, "records_counted_share": round(counted / labelled, 4)}


def per_site(y: np.ndarray, site: np.ndarray) -> dict:
    return {str(s): {"records": int((~np.isnan(y[site == s]).all(1)).sum()),
                     "positives": np.nansum(y[site == s], 0).astype(int).tolist()} for s in dict.fromkeys(site)}


def measure(scores: dict, reported: dict, label: str, data: str) -> dict:
    """Exact and private metrics of one model's scores (``{task: {"y", "p", "site"}}``); ``reported``: the pooled
    AUROC the round itself reported for that model (checked against the default policy's)."""
    from lsemvae.data.tasks import get_task

    out = {"model": label, "data": data, "tasks": {}}
    for task, s in scores.items():
        classes = list(get_task(task).classes)   # what the server's heads mean (checked against every site's)
        exact = exact_metrics(s["y"], s["p"])
        rows = []
        for policy in POLICY_ROWS:
            private = private_metrics(s["y"], s["p"], s["site"], classes, **policy)
            rows.append({**policy, **private,
                         "auroc_loss": None if private["auroc"] is None else round(private["auroc"] - exact["auroc"], 4),
                         "ece_difference": None if private["ece"] is None else round(private["ece"] - exact["ece"], 4)})
        round_auroc, default = reported.get(task), rows[0]["auroc"]
        # the sites score in the round's own evaluation pass; a cell mean rounded to 3 decimals may differ by one
        # unit where float32 batches differ, nothing more
        if round_auroc is not None and default is not None and abs(round_auroc - default) > 2e-3:
            raise RuntimeError(f"{label} {task}: the round reported AUROC {round_auroc}, recomputed {default}")
        out["tasks"][task] = {"exact": exact, "policies": rows, "round_reported_auroc": round_auroc,
                              "sites": per_site(s["y"], s["site"])}
    return out


def federation_model(cohort, arm: Arm, args, label: str) -> dict:
    """A model of benchmarks/federation.py's run cache (trained there if not yet)."""
    scores = run_arm(cohort, arm, args, args.seed)
    meta = scores.pop("_meta")
    return measure(scores, (meta.get("private_auroc_by_round") or [{}])[-1], label, cohort.describe)


def simulation_model(folder: Path) -> dict:
    """The final model of a ``simulation/run.py`` run (``benchmarks/make_run.py``'s folders): `make run`'s cohort."""
    from lsemvae.federation.state import load_state

    state = load_state(folder / "server")
    sites = H.load_sites(sorted((folder / "sites").glob("*.toml")))
    scores = H.exact_scores(H.model_of(state), sites, state.preprocess_config)
    rc = state.run_config
    return measure(scores, state.metrics[-1]["auroc"], f"make run ({folder.name})",
                   f"simulation/run.py: {len(sites)} synthetic sites, {rc.get('num-server-rounds')} rounds, "
                   f"{'DP' if rc.get('dp') else 'no DP'}, {rc.get('strategy')}")


def summarise(results: list[dict]) -> dict:
    s = {}
    for r in results:
        for task, t in r["tasks"].items():
            d = t["policies"][0]
            s[f"{r['model']}: {task}: pooled AUROC exact / private (bins {d['bins']}, k {d['min_cell']})"] = \
                f"{t['exact']['auroc']:.3f} / {d['auroc']:.3f}" if d["auroc"] is not None else f"{t['exact']['auroc']:.3f} / –"
            s[f"{r['model']}: {task}: ECE exact / private"] = \
                f"{t['exact']['ece']:.3f} / {d['ece']:.3f}" if d["ece"] is not None else f"{t['exact']['ece']:.3f} / –"
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.private_evaluation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohorts", default="synthetic,real", help="comma-separated: synthetic, real (default both)")
    p.add_argument("--epsilon", type=float, default=8.0, help="every site's budget for the DP model (default 8)")
    p.add_argument("--seed", type=int, default=0, help="run seed of the models (default 0)")
    p.add_argument("--make-run", type=Path, nargs="*", default=sorted((H.REPO / "runs" / "bench-make-run").glob("*")),
                   help="simulation/run.py folders (benchmarks/make_run.py's) whose final models are scored too "
                        "(default: every one under runs/bench-make-run)")
    cohort_arguments(p)
    args = p.parse_args(argv)
    started = time.monotonic()
    prepare(args)
    built: dict = {}
    results = []
    for name in [c.strip() for c in args.cohorts.split(",") if c.strip()]:
        cohort = cohort_of(name, args, built)
        for arm, label in ((FED, f"{name}, FedAvg without DP"),
                           (Arm("federated", epsilon=args.epsilon), f"{name}, FedAvg with DP (epsilon {args.epsilon:g})")):
            print(f"-- {label}", flush=True)
            results.append(federation_model(cohort, arm, args, label))
    for folder in args.make_run:
        print(f"-- {folder}", flush=True)
        results.append(simulation_model(folder.resolve()))
    body = {"summary": summarise(results),
            "policies": POLICY_ROWS,
            "calibration_bins": CAL_BINS, "rounds": args.rounds, "seed": args.seed, "models": results}
    H.write_results(H.RESULTS / RESULT, H.meta("private_evaluation", argv, started), body)
    for k, v in body["summary"].items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
