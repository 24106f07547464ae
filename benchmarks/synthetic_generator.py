"""Synthetic cohort generator: speed, and how separable its phenotypes are.

Speed: records/s of :func:`generate_signals` (with site artefacts) at 100 and 500 Hz, the time for
10,000 ten-second 500 Hz records (in chunks of 256, as :func:`write_cohort` does), and the time to
write the default cohort (WFDB + labels.csv). Separability: 5-fold cross-validated AUROC of a
logistic regression on classic measurements of median beats (frontal QRS axis, R and S in V1 and
V6, P in II, terminal P in V1, R and S in I), for ``right_heart``, ``left_atrial`` and
``phenotype`` (right-sided records only), at a default site's noise and the default severity range.
It should be clearly above chance and not perfect: a perfect score would make the benchmark tasks
trivial, a chance score would mean the labels are not in the signal.

    python -m benchmarks.synthetic_generator            # ~1 min on 2 cores
    python -m benchmarks.synthetic_generator --records 2000

Writes benchmarks/results/synthetic_generator.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks import harness as H
from lsemvae.data.synth.features import beat_features, median_beats
from lsemvae.data.synthetic import GENERATOR_VERSION, default_cohort, generate_signals, write_cohort

FEW = ("qrs_axis_deg", "v1_r_mv", "v6_s_mv", "p_ii_mv")


def _generate(n: int, fs: int, chunk: int = 256) -> tuple[float, float]:
    """Wall and CPU seconds (CPU time is the steadier number on a shared machine)."""
    art = default_cohort().sites[0].artefacts
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(0, n, chunk):
        generate_signals(min(chunk, n - k), np.random.default_rng([0, k]), fs=fs, artefacts=art)
    return time.perf_counter() - wall, time.process_time() - cpu


def _auroc(x: np.ndarray, y: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    prob = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                             method="predict_proba")[:, 1]
    return round(float(roc_auc_score(y, prob)), 3)


def separability(n: int, fs: int = 250) -> dict:
    site = default_cohort().sites[0]
    sig, lab, meta = generate_signals(n, np.random.default_rng(1), fs=fs, prevalence=0.3, left_prevalence=0.3,
                                      severity=site.severity, artefacts=site.artefacts)
    beats, times = median_beats(sig, fs, meta["r_peaks"])
    feats = beat_features(beats, times)
    all_x = np.stack(list(feats.values()), axis=1)
    few_x = np.stack([feats[k] for k in FEW], axis=1)
    right = lab["right_heart"] == 1
    return {
        "n": n, "fs": fs, "severity_range": list(site.severity), "noise_mv": site.noise_mv,
        "features_few": list(FEW), "features_all": list(feats),
        "auroc": {
            "right_heart_few": _auroc(few_x, lab["right_heart"]),
            "right_heart_all": _auroc(all_x, lab["right_heart"]),
            "left_atrial_all": _auroc(all_x, lab["left_atrial"]),
            "phenotype_all_right_only": _auroc(all_x[right], lab["phenotype"][right].astype(int)),
        },
        "right_axis_deviation_share": {
            "right_heart": round(float(np.mean(feats["qrs_axis_deg"][right] > 90)), 3),
            "others": round(float(np.mean(feats["qrs_axis_deg"][~right] > 90)), 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synthetic_generator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="records for the large timing (500 Hz)")
    parser.add_argument("--separability-records", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=H.RESULTS / "synthetic_generator.json")
    args = parser.parse_args(argv)
    started = time.monotonic()

    speed = {}
    for fs in (100, 500):
        wall, cpu = _generate(1024, fs)
        speed[f"records_per_s_{fs}hz"] = round(1024 / wall)
        speed[f"records_per_cpu_s_{fs}hz"] = round(1024 / cpu)
    wall, cpu = _generate(args.records, 500)
    speed[f"seconds_for_{args.records}_records_500hz"] = round(wall, 1)
    speed[f"cpu_seconds_for_{args.records}_records_500hz"] = round(cpu, 1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = write_cohort(default_cohort(), tmp, progress=False)
        speed["seconds_to_write_default_cohort"] = round(time.perf_counter() - start, 1)
        speed["default_cohort_records"] = summary["n_records"]
    result = H.write_results(args.out, H.meta("synthetic_generator", argv, started), {
        "generator_version": GENERATOR_VERSION, "numpy": np.__version__,
        "note": "10 s records, site artefacts on; shared 2-core machine, single process",
        "speed": speed, "separability": separability(args.separability_records)})
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
