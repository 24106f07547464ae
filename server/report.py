"""Final report of a federated job: tables and figures a clinician-researcher can read.

Everything here is computed from ``metrics.jsonl`` rows, which hold only what sites sent: DP
updates' bookkeeping (example counts, cumulative epsilons), aggregate losses and gate weights, and
k-anonymous score counts (no per-patient score). ``report/report.md`` (tables, figures),
``report/report.json`` (the same numbers) and one PNG per figure.

Figures: rounds in whole numbers; epsilon per site with its lifetime budget as a dashed line of the
same colour; ROC and calibration per task with the pooled curve drawn strong and the sites thin; a
figure with nothing to show says why in its frame; HiME gate weights per site, and for all sites
separately by lead set (a 6-lead site has no chest weight to give).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lsemvae.train.metrics import auroc_from_histograms, calibration_from_histograms  # noqa: E402

Figure = tuple[str, Path]


def write_report(out_dir: Path, rows: list[dict], *, status: str, checkpoint: dict | None = None) -> Path:
    """``report.md`` + ``report.json`` + PNG figures under ``out_dir/report``; returns report.md."""
    rep = out_dir / "report"
    rep.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if r.get("round", 0) > 0]
    final = _last_evaluated(rows)
    tasks = sorted({t for r in rows for t in r.get("auroc", {})})
    figures = [*_figures_over_rounds(rows, tasks, rep), *_figures_of_final_model(final, tasks, rep)]
    summary = _summary(rows, final, status=status, checkpoint=checkpoint)
    (rep / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md = rep / "report.md"
    md.write_text("\n".join(_markdown(rows, final, tasks, summary, figures)) + "\n")
    return md


def _last_evaluated(rows: list[dict]) -> dict:
    """The last round whose model was evaluated (evaluations arrive a round late; the last one at the end)."""
    return next((r for r in reversed(rows) if "eval" in r), {})


# ----------------------------------------------------------------------------- figures

def _figures_over_rounds(rows: list[dict], tasks: list[str], rep: Path) -> list[Figure]:
    if not rows:
        return []
    sites = _sites(rows)
    loss = {"training (weighted mean; not reported under DP)": _series(rows, lambda r: r.get("train_loss")),
            "evaluation (weighted mean)": _series(rows, lambda r: r.get("eval_loss"))}
    auroc = {f"pooled {t}": _series(rows, lambda r, t=t: r.get("auroc", {}).get(t)) for t in tasks}
    site_auroc = {f"{s} {t}": _series(rows, lambda r, s=s, t=t: r.get("eval", {}).get(s, {}).get("auroc", {}).get(t))
                  for s in sites for t in tasks}
    return [("Loss over rounds", _lines(loss, rep / "loss.png", title="loss", ylabel="loss")),
            ("AUROC over rounds (pooled strong, sites thin)",
             _lines(auroc, rep / "auroc.png", title="AUROC of each round's model", ylabel="AUROC", thin=site_auroc)),
            ("Cumulative epsilon per site (dashed: its lifetime budget)", _epsilon(rows, sites, rep / "epsilon.png"))]


def _figures_of_final_model(final: dict, tasks: list[str], rep: Path) -> list[Figure]:
    figures = []
    for t in tasks:
        pooled = final.get("pooled_histograms", {}).get(t)
        sites = final.get("site_histograms", {}).get(t, {})
        figures.append((f"ROC {t} (last model)", _roc(pooled, sites, rep / f"roc_{t}.png", title=f"ROC {t}")))
        figures.append((f"Calibration {t} (last model)", _calibration(pooled, sites, rep / f"calibration_{t}.png",
                                                                       title=f"calibration {t}")))
    gates = _gates(final)
    if gates:
        figures.append(("HiME gate weight per lead group (last model, mean over evaluation records)",
                        _bars(gates, rep / "gates.png", title="HiME gates", ylabel="gate weight")))
    return figures


def _whole_rounds(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")


def _empty(ax, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=10, color="dimgrey")
    ax.set_xticks([]), ax.set_yticks([])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _lines(series: dict, path: Path, *, title: str, ylabel: str, thin: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for name, (x, y) in (thin or {}).items():
        drawn |= _plot(ax, x, y, lw=0.8, alpha=0.45, ms=2, label=name)
    for name, (x, y) in series.items():
        drawn |= _plot(ax, x, y, lw=2.4, ms=5, label=name)
    if not drawn:
        _empty(ax, "nothing to show: no round reported this")
    else:
        _whole_rounds(ax)
        ax.set(ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(series) + len(thin or {}) > 6 else 1)
    ax.set_title(title)
    return _save(fig, path)


def _plot(ax, x, y, **style) -> bool:
    y = np.array([np.nan if v is None else v for v in y], dtype=float)
    if not np.isfinite(y).any():
        return False
    ax.plot(list(x), y, marker="o", **style)
    return True


def _epsilon(rows: list[dict], sites: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    markers = "osD^vP*X"
    for i, s in enumerate(sites):
        x, y = _series(rows, lambda r, s=s: r.get("epsilon", {}).get(s))
        line = ax.plot(x, [np.nan if v is None else v for v in y], marker=markers[i % len(markers)], lw=1.6,
                       ms=6 - 0.5 * (i % 4), label=s)[0]
        budget = next((r["train"][s]["epsilon_budget"] for r in rows if "epsilon_budget" in r.get("train", {}).get(s, {})), None)
        if budget is not None:
            ax.axhline(budget, ls="--", lw=1, color=line.get_color(), alpha=0.8)
    if sites:
        _whole_rounds(ax)
        ax.set(ylabel="epsilon (each site's own delta)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no site trained")
    ax.set_title("cumulative epsilon: the federation's is the maximum")
    return _save(fig, path)


def _roc(pooled: dict | None, sites: dict, path: Path, *, title: str) -> Path:
    def draw(ax) -> None:
        for label, hist, style in _strong_pooled(pooled, sites):
            for c, name in enumerate(hist["classes"]):
                pos, neg = np.asarray(hist["pos"][c], float), np.asarray(hist["neg"][c], float)
                if pos.sum() and neg.sum():
                    a = auroc_from_histograms(hist)["per_class"][name]["auroc"]
                    suffix = "" if len(hist["classes"]) == 1 else f" {name}"
                    ax.plot(*_roc_points(pos, neg), label=f"{label}{suffix} ({a:.3f})", **style)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right", fontsize=6)

    return _task_figure(pooled, path, title, draw)


def _roc_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points at the bin edges (thresholds from high to low scores)."""
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / pos.sum()])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / neg.sum()])
    return fpr, tpr


def _calibration(pooled: dict | None, sites: dict, path: Path, *, title: str) -> Path:
    def draw(ax) -> None:
        for label, hist, style in _strong_pooled(pooled, sites, thin_ms=2, strong_ms=4):
            for name, v in calibration_from_histograms(hist)["per_class"].items():
                rel = v["reliability"]
                mp = np.array([np.nan if m is None else m for m in rel["mean_pred"]], float)
                fp = np.array([np.nan if f is None else f for f in rel["frac_pos"]], float)
                ok = np.isfinite(mp) & np.isfinite(fp)
                suffix = "" if len(hist["classes"]) == 1 else f" {name}"
                ax.plot(mp[ok], fp[ok], marker="o", label=f"{label}{suffix}", **style)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfect")
        ax.set(xlabel="mean predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=6)

    return _task_figure(pooled, path, title, draw)


def _task_figure(pooled: dict | None, path: Path, title: str, draw: Callable[[plt.Axes], None]) -> Path:
    """One task's figure: ``draw`` it, or say in the frame why there is nothing to show."""
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    why = _nothing_to_score(pooled)
    if why:
        _empty(ax, why)
    else:
        draw(ax)
    ax.set_title(title)
    return _save(fig, path)


def _strong_pooled(pooled: dict, sites: dict, *, thin_ms: float | None = None, strong_ms: float | None = None):
    """``(label, histograms, line style)``: each site thin, then the pooled curve strong on top."""
    thin = {"lw": 0.8, "alpha": 0.45} | ({"ms": thin_ms} if thin_ms else {})
    strong = {"lw": 2.6, "color": "black"} | ({"ms": strong_ms} if strong_ms else {})
    return [*((s, h, thin) for s, h in sites.items()), ("pooled", pooled, strong)]


def _nothing_to_score(hist: dict | None) -> str | None:
    """Why a task's ROC or calibration cannot be drawn (None: it can)."""
    if not hist:
        return "no site could evaluate this task:\ntoo few records, or evaluation\nrefused by the sites' policies"
    pos = np.asarray(hist["pos"], float).sum()
    neg = np.asarray(hist["neg"], float).sum()
    if pos == 0 or neg == 0:
        return (f"{int(pos)} positives and {int(neg)} negatives reported:\na site withholds a class with fewer\n"
                "records than its evaluation.min_cell")
    return None


def _gates(final: dict) -> dict[str, dict[str, float]]:
    """Gate weights per site, and the mean over sites of each lead set (never 6- and 12-lead sites in one bar)."""
    evals = final.get("eval", {})
    out = {s: e["gates"] for s, e in sorted(evals.items()) if e.get("gates")}
    for leads in sorted({e.get("leads") for e in evals.values() if e.get("gates")}, key=lambda n: n or 0):
        group = [e for e in evals.values() if e.get("gates") and e.get("leads") == leads]
        if len(group) > 1:
            n = sum(e["num_examples"] for e in group)
            out[f"all {leads}-lead sites"] = {g: sum(e["gates"].get(g, 0.0) * e["num_examples"] for e in group) / n
                                              for g in dict.fromkeys(g for e in group for g in e["gates"])}
    return out


def _bars(values: dict[str, dict[str, float]], path: Path, *, title: str, ylabel: str) -> Path:
    cats = list(dict.fromkeys(k for g in values.values() for k in g))
    fig, ax = plt.subplots(figsize=(min(11.0, max(5.0, 0.35 * len(cats) * len(values) + 2.5)), 4.0))
    width = 0.8 / len(values)
    x = np.arange(len(cats))
    for i, (name, vals) in enumerate(values.items()):
        ax.bar(x + (i - (len(values) - 1) / 2) * width, [vals.get(c, np.nan) for c in cats], width, label=name,
               hatch="//" if name.startswith("all ") else None)
    ax.set_xticks(x, cats)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------------------- tables

def _series(rows: list[dict], getter: Callable[[dict], object]) -> tuple[list[int], list]:
    return [r["round"] for r in rows], [getter(r) for r in rows]


def _sites(rows: list[dict]) -> list[str]:
    return sorted({s for r in rows for s in r.get("train", {})} | {s for r in rows for s in r.get("eval", {})})


def _summary(rows: list[dict], final: dict, *, status: str, checkpoint: dict | None) -> dict:
    return {
        "status": status,
        "checkpoint": checkpoint,
        "rounds_completed": len(rows),
        "sites": _sites(rows),
        "final_auroc": final.get("auroc", {}),
        "final_epsilon": (rows[-1] if rows else {}).get("epsilon", {}),
        "epsilon_max": (rows[-1] if rows else {}).get("epsilon_max"),
        "epsilon_decreased": {r["round"]: r["epsilon_decreased"] for r in rows if r.get("epsilon_decreased")},
        "non_dp_sites": sorted({s for r in rows for s in r.get("non_dp_sites", [])}),
        "calibration_ece": {t: calibration_from_histograms(h)["macro"]["ece"]
                            for t, h in final.get("pooled_histograms", {}).items()},
        "gates": _gates(final),
        "seconds_per_round": [r.get("seconds") for r in rows],
        "bytes_per_site": (rows[-1] if rows else {}).get("bytes", {}),
        "failures": [f | {"round": r["round"]} for r in rows for f in r.get("failures", [])],
    }


def _markdown(rows: list[dict], final: dict, tasks: list[str], summary: dict, figures: list[Figure]) -> list[str]:
    src = summary["checkpoint"] or {}
    lines = ["# Federated run report\n",
             f"Status: **{summary['status']}**, {len(rows)} round(s) completed, sites: {', '.join(summary['sites'])}.\n",
             *([f"Started from the pretrained checkpoint {src.get('name', src.get('path', '?'))} (sha256 "
                f"`{src.get('sha256', '?')}`), pretrained on {src.get('pretrained_on', '?')}.\n"] if src else []),
             "Privacy is each site's cumulative epsilon (its own delta); the federation's is the MAX over sites. "
             "A round's model is evaluated with the next round's training (the last one at the end). "
             "Pooled AUROC is estimated from the sites' k-anonymous score cells, not computed from records: with "
             "small sites it can be off by a few hundredths (README, 'Evaluation is the site's aggregate').\n",
             *([f"**NO PRIVACY GUARANTEE: sites trained without DP: {', '.join(summary['non_dp_sites'])}.**\n"]
               if summary["non_dp_sites"] else []),
             *([f"**A site's epsilon went DOWN (its ledger was rolled back or reset): {summary['epsilon_decreased']}.**\n"]
               if summary["epsilon_decreased"] else []),
             "| round | seconds | sites trained | eval loss | " + " | ".join(f"AUROC {t}" for t in tasks)
             + " | max epsilon | failures |",
             "|" + "---|" * (6 + len(tasks))]
    for r in rows:
        au = " | ".join(_fmt(r.get("auroc", {}).get(t)) for t in tasks)
        lines.append(f"| {r['round']} | {_fmt(r.get('seconds'), 1)} | {r.get('sites_trained', '–')} | "
                     f"{_fmt(r.get('eval_loss'))} | {au} | {_fmt(r.get('epsilon_max'))} | {len(r.get('failures', []))} |")
    lines += _site_table(rows, final, tasks) + _gate_table(summary["gates"]) + _failure_list(summary["failures"])
    lines.append("\n## Figures\n")
    lines += [f"### {title}\n\n![{title}]({path.name})\n" for title, path in figures]
    return lines


def _site_table(rows: list[dict], final: dict, tasks: list[str]) -> list[str]:
    last = rows[-1] if rows else {}
    lines = ["\n## Per site (last model)\n",
             "| site | leads | epsilon | budget | " + " | ".join(f"AUROC {t}" for t in tasks) + " | bytes up | bytes down |",
             "|" + "---|" * (6 + len(tasks))]
    for s in _sites(rows):
        ev, b = final.get("eval", {}).get(s, {}), last.get("bytes", {}).get(s, {})
        budget = next((r["train"][s].get("epsilon_budget") for r in rows if s in r.get("train", {})), None)
        lines.append(f"| {s} | {ev.get('leads', '–')} | {_fmt(last.get('epsilon', {}).get(s))} | {_fmt(budget)} | "
                     + " | ".join(_fmt(ev.get("auroc", {}).get(t)) for t in tasks)
                     + f" | {b.get('up', '–')} | {b.get('down', 0) + b.get('down_evaluate', 0) if b else '–'} |")
    return lines


def _gate_table(gates: dict[str, dict[str, float]]) -> list[str]:
    if not gates:
        return []
    groups = list(dict.fromkeys(g for w in gates.values() for g in w))
    return ["\n## HiME gate weights (last model)\n",
            "Mean weight the fusion gate gave each lead group over the evaluation records: which groups the model "
            "relies on. A site that does not record a group gives it none, so sites are averaged by lead set.\n",
            "| site | " + " | ".join(groups) + " |", "|" + "---|" * (1 + len(groups)),
            *(f"| {s} | " + " | ".join(_fmt(w.get(g)) for g in groups) + " |" for s, w in gates.items())]


def _failure_list(failures: list[dict]) -> list[str]:
    if not failures:
        return []
    return ["\n## Sites that failed, refused or were late\n",
            *(f"- round {f['round']} ({f['stage']}): {f.get('site') or 'node ' + str(f.get('node'))}: {f['reason']}"
              for f in failures)]


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
