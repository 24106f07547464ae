"""Evaluation reports: results JSON, a short Markdown summary and a self-contained HTML page.

Figures are PNGs written next to the report (matplotlib, Agg backend) and embedded in the HTML
as data URIs, so the HTML alone can be mailed or attached. The plot helpers are reused by the
federation report (metric and epsilon over rounds) and interpretability (gates, lead shares).

``results`` layout read here (everything optional except ``tasks``)::

    {"title": str, "tasks": {task: metrics.summarize(...)}, "config": {...}, "provenance": {...},
     "gates": {task: {"groups": [...], "mean": [...], "per_class": {cls: [...]}}},
     "lead_shares": {task: {"leads": [...], "overall": [...], "per_class": {cls: [...]}}},
     "lead_ablation": {task: {"full": float, "drop": {lead: {"macro_auroc": float, "delta": float}}}},
     "reconstruction": {"target": str, "input_leads": [...], "per_lead": {lead: {"pearson_r_mean", ...}}}}
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

# ---------------------------------------------------------------------------------------------
# plot helpers (each writes one PNG and returns its path)
# ---------------------------------------------------------------------------------------------


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = ~np.isnan(y)
    y, s = y[ok], s[ok]
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    ends = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tpr = np.r_[0.0, np.cumsum(ys)[ends] / max(ys.sum(), 1)]
    fpr = np.r_[0.0, np.cumsum(1 - ys)[ends] / max((1 - ys).sum(), 1)]
    return fpr, tpr


def plot_roc(y_true, y_score, class_names: Sequence[str], path: Path, *, title: str = "ROC",
             aurocs: Mapping[str, float | None] | None = None) -> Path:
    """ROC per class plus the macro-average curve (TPR averaged on a common FPR grid)."""
    yt = np.asarray(y_true, dtype=float).reshape(len(y_true), -1)
    ys = np.asarray(y_score, dtype=float).reshape(len(y_score), -1)
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    grid = np.linspace(0, 1, 201)
    curves = []
    for c, name in enumerate(class_names):
        y = yt[:, c]
        if np.nansum(y) == 0 or np.nansum(1 - y) == 0:
            continue
        fpr, tpr = _roc_points(y, ys[:, c])
        curves.append(np.interp(grid, fpr, tpr))
        label = name if not aurocs or aurocs.get(name) is None else f"{name} ({aurocs[name]:.3f})"
        ax.plot(fpr, tpr, lw=1.2, label=label)
    if len(curves) > 1:
        ax.plot(grid, np.mean(curves, axis=0), "k", lw=2.2, label="macro average")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_calibration(reliability: Mapping[str, Mapping], path: Path, *, title: str = "Reliability") -> Path:
    """Reliability diagram from ``metrics.calibration(...)["reliability"]`` per class."""
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    for name, rel in reliability.items():
        mp = np.array([np.nan if v is None else v for v in rel["mean_pred"]], dtype=float)
        fp = np.array([np.nan if v is None else v for v in rel["frac_pos"]], dtype=float)
        ok = np.isfinite(mp) & np.isfinite(fp)
        ax.plot(mp[ok], fp[ok], "o-", ms=3, lw=1.2, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_series(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, *, title: str,
                xlabel: str = "round", ylabel: str = "") -> Path:
    """Lines of ``name -> (x, y)``: e.g. AUROC or cumulative epsilon per site over rounds."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, (x, y) in series.items():
        ax.plot(list(x), [np.nan if v is None else v for v in y], "o-", ms=3, lw=1.4, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bar(values: Mapping[str, float] | Mapping[str, Mapping[str, float]], path: Path, *, title: str,
             ylabel: str = "") -> Path:
    """Bars of ``category -> value``, or grouped bars of ``series -> {category -> value}``."""
    first = next(iter(values.values()), None)
    groups = values if isinstance(first, Mapping) else {"": values}
    cats = list(dict.fromkeys(k for g in groups.values() for k in g))
    fig, ax = plt.subplots(figsize=(min(10.0, max(4.5, 0.3 * len(cats) * len(groups) + 2.0)), 3.8))
    width = 0.8 / len(groups)
    x = np.arange(len(cats))
    for i, (name, vals) in enumerate(groups.items()):
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, [vals.get(c, np.nan) for c in cats], width,
               label=name or None)
    ax.set_xticks(x, cats)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(title=title, ylabel=ylabel)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_ci(point, ci) -> str:
    if point is None:
        return "–"
    if not ci or ci[0] is None:
        return _fmt(point)
    return f"{point:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"


_COLUMNS = ("n", "n_pos", "AUROC (95% CI)", "AUPRC (95% CI)", "threshold", "sens", "spec", "F1", "MCC", "ECE", "Brier")


def _metric_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name in summary["classes"]:
        m = summary["per_class"][name]
        rows.append([name, str(m["n"]), str(m["n_pos"]), format_ci(m["auroc"], m["auroc_ci"]), format_ci(m["auprc"], m["auprc_ci"]),
                     _fmt(m["threshold"]), _fmt(m["sensitivity"]), _fmt(m["specificity"]), _fmt(m["f1"]),
                     _fmt(m["mcc"]), _fmt(m["ece"]), _fmt(m["brier"])])
    m = summary["macro"]
    rows.append(["**macro**", str(summary["n"]), "", format_ci(m["auroc"], m["auroc_ci"]), format_ci(m["auprc"], m["auprc_ci"]),
                 "", _fmt(m["sensitivity"]), _fmt(m["specificity"]), _fmt(m["f1"]), _fmt(m["mcc"]), _fmt(m["ece"]),
                 _fmt(m["brier"])])
    return rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(tag, v):
        bold = v.startswith("**")
        v = html.escape(v.strip("*"))
        return f"<{tag}>{'<b>' + v + '</b>' if bold else v}</{tag}>"
    head = "<tr>" + "".join(cell("th", h) for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(cell("td", v) for v in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def _interpretability_figures(results: dict, fig_dir: Path) -> list[tuple[str, Path]]:
    figs = []
    for task, g in results.get("gates", {}).items():
        per_class = {cls: dict(zip(g["groups"], w)) for cls, w in g.get("per_class", {}).items()}
        data = per_class or {"all": dict(zip(g["groups"], g["mean"]))}
        figs.append((f"{task}: HiME gate weight per lead group, mean over records positive for each class",
                     plot_bar(data, fig_dir / f"gates_{task}.png", title=f"HiME gates ({task})", ylabel="gate weight")))
    for task, s in results.get("lead_shares", {}).items():
        data = {"all": dict(zip(s["leads"], s["overall"]))}
        data.update({cls: dict(zip(s["leads"], v)) for cls, v in s.get("per_class", {}).items()})
        figs.append((f"{task}: integrated-gradients share of each lead",
                     plot_bar(data, fig_dir / f"lead_shares_{task}.png", title=f"IG lead shares ({task})",
                              ylabel="share of |attribution|")))
    for task, a in results.get("lead_ablation", {}).items():
        data = {lead: v["delta"] for lead, v in a["drop"].items()}
        figs.append((f"{task}: change in macro AUROC when one lead is removed (full: {_fmt(a['full'])})",
                     plot_bar(data, fig_dir / f"lead_ablation_{task}.png", title=f"Lead ablation ({task})",
                              ylabel="Δ macro AUROC")))
    return figs


class _Document:
    """The report's Markdown lines and HTML fragments, written side by side."""

    def __init__(self, title: str):
        self.md = [f"# {title}", ""]
        self.html = [f"<h1>{html.escape(title)}</h1>"]

    def table(self, heading: str, header: Sequence[str], rows: Sequence[Sequence[str]], note: str | None = None,
              *, html_heading: str | None = None) -> None:
        """A section: heading, table and an optional note (``html_heading``: the heading as HTML, if not plain)."""
        self.md += [f"## {heading}", "", _md_table(header, rows), ""] + ([note, ""] if note else [])
        self.html += [f"<h2>{html_heading or html.escape(heading)}</h2>", _html_table(header, rows)]
        if note:
            self.html.append(f"<p class='note'>{html.escape(note)}</p>")

    def text(self, heading: str, text: str, *, language: str = "json") -> None:
        self.md += [f"## {heading}", "", f"```{language}", text, "```", ""]
        self.html += [f"<h2>{heading}</h2>", f"<pre>{html.escape(text)}</pre>"]

    def figures(self, figures: Sequence[tuple[str, Path]], out_dir: Path) -> None:
        """Linked from the Markdown, embedded in the HTML (data URIs)."""
        self.md += ["## Figures", ""] + [f"![{cap}]({p.relative_to(out_dir).as_posix()})" for cap, p in figures] + [""]
        self.html.append("<h2>Figures</h2>")
        for cap, p in figures:
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            self.html.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{html.escape(cap)}</figcaption></figure>")


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
          "td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:8px}"
          "img{max-width:520px}.note{font-size:12px;color:#555}pre{background:#f6f6f6;padding:8px;font-size:12px}")


def write_report(out_dir: Path, results: dict, *, predictions: Mapping[str, tuple] | None = None,
                 name: str = "report") -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md``, ``<name>.html`` and PNG figures under ``out_dir``.

    ``predictions`` maps task -> ``(y_true [N,C], y_prob [N,C])`` for ROC curves (omit to skip
    them; reliability diagrams come from the summaries). Returns the paths written.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = results.get("title", "LS-EMVAE evaluation")
    doc = _Document(title)
    for task, summary in results["tasks"].items():
        _task_section(doc, task, summary)
    figures = _task_figures(results["tasks"], predictions or {}, fig_dir) + _interpretability_figures(results, fig_dir)
    _interpretability_sections(doc, results)
    doc.figures(figures, out_dir)
    for key in ("provenance", "config"):
        if key in results:
            doc.text(key.capitalize(), json.dumps(results[key], indent=2, default=str))
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "html": out_dir / f"{name}.html"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["md"].write_text("\n".join(doc.md))
    paths["html"].write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                             f"<style>{_STYLE}</style></head><body>{''.join(doc.html)}</body></html>\n")
    paths.update({f"figure:{p.stem}": p for _, p in figures})
    return paths


def _task_section(doc: _Document, task: str, summary: dict) -> None:
    boot = summary["bootstrap"]
    note = (f"Threshold: {summary['threshold_method']} on validation. CIs: {boot['n_boot']} stratified "
            f"bootstrap resamples (seed {boot['seed']}, {boot['n_skipped']} skipped). "
            f"ECE: {len(summary['per_class'][summary['classes'][0]]['reliability']['count'])} equal-width bins.")
    doc.table(f"Task `{task}`", ("class",) + _COLUMNS, _metric_rows(summary), note,
              html_heading=f"Task <code>{html.escape(task)}</code>")


def _task_figures(summaries: Mapping[str, dict], predictions: Mapping[str, tuple],
                  fig_dir: Path) -> list[tuple[str, Path]]:
    """Per task: ROC curves (where ``predictions`` has the task) and the reliability diagram."""
    figs = []
    for task, summary in summaries.items():
        if task in predictions:
            y, p = predictions[task]
            aurocs = {c: summary["per_class"][c]["auroc"] for c in summary["classes"]}
            figs.append((f"{task}: ROC curves (test)", plot_roc(y, p, summary["classes"], fig_dir / f"roc_{task}.png",
                                                                title=f"ROC ({task})", aurocs=aurocs)))
        rel = {c: summary["per_class"][c]["reliability"] for c in summary["classes"]}
        figs.append((f"{task}: reliability diagram (test)",
                     plot_calibration(rel, fig_dir / f"calibration_{task}.png", title=f"Reliability ({task})")))
    return figs


def _interpretability_sections(doc: _Document, results: dict) -> None:
    """Gate weights, IG lead shares, reconstruction quality and lead ablation, where ``results`` has them."""
    for task, g in results.get("gates", {}).items():
        rows = [["all", *(_fmt(v) for v in g["mean"])]]
        rows += [[f"{cls} positives", *(_fmt(v) for v in w)] for cls, w in g.get("per_class", {}).items()]
        doc.table(f"HiME gate weights: `{task}` (mean per lead group)", ("records", *g["groups"]), rows)
    for task, s in results.get("lead_shares", {}).items():
        rows = [["mean of classes", *(_fmt(v) for v in s["overall"])]]
        rows += [[f"{cls} (n={s.get('n_records', {}).get(cls, '?')})", *(_fmt(v) for v in w)]
                 for cls, w in s.get("per_class", {}).items()]
        comp = s.get("completeness", {})
        note = (f"Integrated gradients, zero baseline, {s.get('n_steps', '?')} steps; share of |attribution summed over "
                f"time| per lead. Completeness: median |sum(attr) - (f(x) - f(0))| = {_fmt(comp.get('median_abs_error'))} "
                f"({_fmt(comp.get('median_rel_error'))} of median |f(x) - f(0)|).")
        doc.table(f"Lead shares (integrated gradients): `{task}`", ("target", *s["leads"]), rows, note)
    if results.get("reconstruction"):
        rec = results["reconstruction"]
        rows = [[lead, str(v["n"]), _fmt(v["pearson_r_mean"]), _fmt(v["pearson_r_median"]), _fmt(v["rmse"]), _fmt(v["r2"])]
                for lead, v in rec["per_lead"].items()]
        doc.table(f"Reconstruction ({rec['target']}) from {', '.join(rec['input_leads'])}",
                  ("lead", "n", "Pearson r (mean)", "Pearson r (median)", "RMSE", "R²"), rows)
    for task, a in results.get("lead_ablation", {}).items():
        rows = [[lead, _fmt(v["macro_auroc"]), _fmt(v["delta"])] for lead, v in a["drop"].items()]
        doc.table(f"Lead ablation: `{task}` (macro AUROC with all leads {_fmt(a['full'])})",
                  ("lead removed", "macro AUROC", "Δ"), rows)
