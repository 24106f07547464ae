"""What private evaluation costs: pooled AUROC and calibration from the sites' k-anonymous histograms vs exact.

    python -m benchmarks.private_evaluation                 # both cohorts, a non-DP and a DP (epsilon 8) model
    python -m benchmarks.private_evaluation --cohorts real

A site answers an evaluation request with k-anonymous aggregates only
(:func:`lsemvae.federation.private_eval.task_histogram`: its own ``evaluation.bins`` on [0, 1], adjacent bins
merged until each cell holds ``evaluation.min_cell`` records, a label with fewer withheld); the server pools
them (:func:`lsemvae.federation.private_eval.pooled`) and computes AUROC and ECE from the pooled counts.
Here the same trained federated models (benchmarks/federation.py's FedAvg runs on the benchmark cohorts,
from its run cache) are scored both ways on the same held-out records: exactly from every record's score
(what a benchmark can do, no site may), and from the histograms each site would send under each policy
(bins x min_cell). The difference is what the privacy of the evaluation costs the coordinator's metrics;
the default policy's figure is checked against the round's own reported AUROC.

Writes ``benchmarks/results/private_evaluation.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks import harness as H
from benchmarks.federation import FED, Arm, cohort_arguments, cohort_of, prepare, run_arm

RESULT = "private_evaluation.json"
DEFAULT = (20, 10)   # lsemvae.site.EvaluationPolicy: bins, min_cell
POLICIES = [DEFAULT, (20, 5), (20, 20), (10, 10), (50, 10)]
CAL_BINS = 10


def exact_metrics(y: np.ndarray, p: np.ndarray) -> dict:
    from lsemvae.train import metrics

    ece = [metrics.calibration(y[:, c], p[:, c], n_bins=CAL_BINS)["ece"] for c in range(y.shape[1])]
    return {"auroc": H.macro_auroc(y, p), "ece": float(np.mean(ece))}


def private_metrics(y: np.ndarray, p: np.ndarray, site: np.ndarray, classes: list[str], *, bins: int,
                    min_cell: int) -> dict:
    """What the server computes from the sites' replies under one policy, and what the sites withheld."""
    from lsemvae.federation.private_eval import pooled, task_histogram
    from lsemvae.train import metrics

    hists, withheld = [], 0
    for s in dict.fromkeys(site):
        mine = site == s
        h = task_histogram(y[mine], p[mine], classes, bins=bins, min_cell=min_cell)
        withheld += sum(c is None for c in [*h.pos, *h.neg])
        hists.append(h)
    hist = pooled(hists)
    counted = float(np.sum(hist["pos"]) + np.sum(hist["neg"]))
    labelled = float(np.sum(~np.isnan(y)))
    return {"auroc": metrics.auroc_from_histograms(hist)["macro"]["auroc"],
            "ece": metrics.calibration_from_histograms(hist, n_bins=CAL_BINS)["macro"]["ece"],
            "labels_withheld": withheld, "records_counted_share": round(counted / labelled, 4)}


def per_site(y: np.ndarray, site: np.ndarray) -> dict:
    return {str(s): {"records": int((~np.isnan(y[site == s]).all(1)).sum()),
                     "positives": np.nansum(y[site == s], 0).astype(int).tolist()} for s in dict.fromkeys(site)}


def measure(cohort, arm: Arm, args, label: str) -> dict:
    from lsemvae.data.tasks import get_task

    scores = run_arm(cohort, arm, args, args.seed)
    meta = scores.pop("_meta")
    out = {"model": label, "data": cohort.describe, "tasks": {}}
    for task, s in scores.items():
        classes = list(get_task(task).classes)   # what the server's heads mean (checked against every site's)
        exact = exact_metrics(s["y"], s["p"])
        rows = []
        for bins, min_cell in POLICIES:
            private = private_metrics(s["y"], s["p"], s["site"], classes, bins=bins, min_cell=min_cell)
            rows.append({"bins": bins, "min_cell": min_cell, **private,
                         "auroc_loss": None if private["auroc"] is None else round(private["auroc"] - exact["auroc"], 4),
                         "ece_difference": None if private["ece"] is None else round(private["ece"] - exact["ece"], 4)})
        round_auroc = (meta.get("private_auroc_by_round") or [{}])[-1].get(task)
        default = rows[0]["auroc"]
        # the sites score in the round's own evaluation pass; a cell mean rounded to 3 decimals may differ by one
        # unit where float32 batches differ, nothing more
        if round_auroc is not None and default is not None and abs(round_auroc - default) > 2e-3:
            raise RuntimeError(f"{label} {task}: the round reported AUROC {round_auroc}, recomputed {default}")
        out["tasks"][task] = {"exact": exact, "policies": rows, "round_reported_auroc": round_auroc,
                              "sites": per_site(s["y"], s["site"])}
    return out


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
            results.append(measure(cohort, arm, args, label))
    body = {"summary": summarise(results), "policies": [{"bins": b, "min_cell": k} for b, k in POLICIES],
            "calibration_bins": CAL_BINS, "rounds": args.rounds, "seed": args.seed, "models": results}
    H.write_results(H.RESULTS / RESULT, H.meta("private_evaluation", argv, started), body)
    for k, v in body["summary"].items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
