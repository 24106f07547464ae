"""Final report of a federated run: plots over rounds and pooled ROC/calibration from histograms.

Everything here is computed from ``metrics.jsonl`` rows, which hold only what sites sent:
aggregate losses, cumulative epsilons, mean gate weights and binned score histograms (no
per-patient score).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lsemvae.train.metrics import auroc_from_histograms, calibration_from_histograms  # noqa: E402
from lsemvae.train.report import plot_bar, plot_calibration, plot_series  # noqa: E402


def roc_from_histogram(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points at the bin edges (thresholds from high to low scores)."""
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / max(pos.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / max(neg.sum(), 1)])
    return fpr, tpr


def plot_roc_histograms(curves: dict[str, dict], path: Path, *, title: str) -> Path:
    """One ROC line per (site or pooled, class) from histogram counts."""
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    for label, hist in curves.items():
        auc = auroc_from_histograms(hist)["per_class"]
        for c, name in enumerate(hist["classes"]):
            pos, neg = np.asarray(hist["pos"][c], float), np.asarray(hist["neg"][c], float)
            if pos.sum() == 0 or neg.sum() == 0:
                continue
            fpr, tpr = roc_from_histogram(pos, neg)
            a = auc[name]["auroc"]
            suffix = "" if len(hist["classes"]) == 1 else f" {name}"
            ax.plot(fpr, tpr, lw=1.4, label=f"{label}{suffix} (AUROC {a:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series(rows: list[dict], getter) -> tuple[list[int], list]:
    xs, ys = [], []
    for r in rows:
        xs.append(r["round"])
        ys.append(getter(r))
    return xs, ys


def write_report(out_dir: Path, rows: list[dict], *, status: str, checkpoint: dict | None = None) -> Path:
    """``report.md`` + ``report.json`` + PNG figures under ``out_dir/report``; returns report.md.
    ``checkpoint``: the source of the pretrained checkpoint the run started from (name, sha256, data it saw)."""
    rep = out_dir / "report"
    rep.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Path]] = []
    rows = [r for r in rows if r.get("round", 0) > 0]
    sites = sorted({s for r in rows for s in r.get("train", {})} | {s for r in rows for s in r.get("eval", {})})
    tasks = sorted({t for r in rows for t in r.get("auroc", {})})
    if rows:
        series = {"train (weighted)": _series(rows, lambda r: r.get("train_loss")),
                  "eval (weighted)": _series(rows, lambda r: r.get("eval_loss"))}
        figures.append(("Loss over rounds", plot_series(series, rep / "loss.png", title="loss", ylabel="loss")))
        series = {f"pooled {t}": _series(rows, lambda r, t=t: r.get("auroc", {}).get(t)) for t in tasks}
        for s in sites:
            for t in tasks:
                series[f"{s} {t}"] = _series(rows, lambda r, s=s, t=t: r.get("eval", {}).get(s, {}).get("auroc", {}).get(t))
        figures.append(("AUROC over rounds", plot_series(series, rep / "auroc.png", title="AUROC (evaluation splits)", ylabel="AUROC")))
        series = {s: _series(rows, lambda r, s=s: r.get("epsilon", {}).get(s)) for s in sites}
        series["max over sites"] = _series(rows, lambda r: r.get("epsilon_max"))
        figures.append(("Cumulative epsilon per site", plot_series(series, rep / "epsilon.png", title="cumulative epsilon",
                                                                   ylabel="epsilon")))
    final = rows[-1] if rows else {}
    non_dp = sorted({s for r in rows for s in r.get("non_dp_sites", [])})
    calibration = {}
    for t in tasks:
        pooled = final.get("pooled_histograms", {}).get(t)
        if not pooled:
            continue
        curves = {"pooled": pooled}
        curves.update({s: h for s, h in final.get("site_histograms", {}).get(t, {}).items()})
        figures.append((f"ROC {t} (final round)", plot_roc_histograms(curves, rep / f"roc_{t}.png", title=f"ROC {t}")))
        cal = calibration_from_histograms(pooled)
        calibration[t] = cal
        rel = {f"pooled {name}": v["reliability"] for name, v in cal["per_class"].items()}
        for s, h in final.get("site_histograms", {}).get(t, {}).items():
            for name, v in calibration_from_histograms(h)["per_class"].items():
                rel[f"{s} {name}"] = v["reliability"]
        figures.append((f"Calibration {t} (final round)", plot_calibration(rel, rep / f"calibration_{t}.png",
                                                                            title=f"reliability {t}")))
    # which lead groups the tasks rely on at each site (a 6-lead site has no precordial weight to give)
    gates = {**{s: final["eval"][s]["gates"] for s in sites if final.get("eval", {}).get(s, {}).get("gates")},
             **({"all sites": final["gates"]} if final.get("gates") else {})}
    if gates:
        figures.append(("HiME gate weight per lead group (final round, mean over evaluation records)",
                        plot_bar(gates, rep / "gates.png", title="HiME gates", ylabel="gate weight")))
    summary = {
        "status": status,
        "rounds_completed": len(rows),
        "sites": sites,
        "final_auroc": final.get("auroc", {}),
        "final_epsilon": final.get("epsilon", {}),
        "epsilon_max": final.get("epsilon_max"),
        "non_dp_sites": non_dp,
        "calibration_ece": {t: c["macro"]["ece"] for t, c in calibration.items()},
        "gates": gates,
        "seconds_per_round": [r.get("seconds") for r in rows],
        "bytes_per_site": final.get("bytes", {}),
        "failures": [f | {"round": r["round"]} for r in rows for f in r.get("failures", [])],
        "checkpoint": checkpoint,
    }
    (rep / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = [f"# Federated run report\n", f"Status: **{status}**, {len(rows)} round(s) completed, sites: {', '.join(sites)}.\n",
             "Privacy is reported as each site's cumulative epsilon (its own delta); the federation's is the MAX over sites.\n",
             *([f"**NO PRIVACY GUARANTEE: sites trained without DP: {', '.join(non_dp)}.**\n"] if non_dp else []),
             *([f"Started from the pretrained checkpoint {checkpoint.get('name', checkpoint['path'])} (sha256 "
                f"`{checkpoint['sha256']}`), pretrained on {checkpoint['pretrained_on']}.\n"] if checkpoint else []),
             "| round | seconds | train loss | eval loss | " + " | ".join(f"AUROC {t}" for t in tasks) + " | max epsilon | failures |",
             "|" + "---|" * (6 + len(tasks))]
    for r in rows:
        au = " | ".join(_fmt(r.get("auroc", {}).get(t)) for t in tasks)
        lines.append(f"| {r['round']} | {_fmt(r.get('seconds'), 1)} | {_fmt(r.get('train_loss'))} | {_fmt(r.get('eval_loss'))} | "
                     f"{au} | {_fmt(r.get('epsilon_max'))} | {len(r.get('failures', []))} |")
    lines.append("\n## Final round per site\n")
    lines.append("| site | epsilon | " + " | ".join(f"AUROC {t}" for t in tasks) + " | bytes up | bytes down (train + evaluate) |")
    lines.append("|" + "---|" * (4 + len(tasks)))
    for s in sites:
        ev = final.get("eval", {}).get(s, {})
        b = final.get("bytes", {}).get(s, {})
        lines.append(f"| {s} | {_fmt(final.get('epsilon', {}).get(s))} | "
                     + " | ".join(_fmt(ev.get("auroc", {}).get(t)) for t in tasks)
                     + f" | {b.get('up', '')} | {b.get('down', 0) + b.get('down_evaluate', 0) if b else ''} |")
    if gates:
        groups = list(dict.fromkeys(g for w in gates.values() for g in w))
        lines.append("\n## HiME gate weights (final round)\n")
        lines.append("Mean weight the fusion gate gave each lead group over the evaluation records: which groups the "
                     "model relies on (groups a site does not record get none).\n")
        lines.append("| site | " + " | ".join(groups) + " |")
        lines.append("|" + "---|" * (1 + len(groups)))
        lines += [f"| {s} | " + " | ".join(_fmt(w.get(g)) for g in groups) + " |" for s, w in gates.items()]
    if summary["failures"]:
        lines.append("\n## Sites that failed or were late\n")
        for f in summary["failures"]:
            lines.append(f"- round {f['round']}: {f.get('site') or 'node ' + str(f.get('node'))}: {f['reason']}")
    lines.append("\n## Figures\n")
    for title, path in figures:
        lines.append(f"### {title}\n\n![{title}]({path.name})\n")
    md = rep / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)
