"""Collect every benchmarks/results/*.json into benchmarks/README.md: one table per issue-5 section.

    python benchmarks/summarise.py            # or: make benchmarks-summary

Each row gives a number, the results file it comes from, the command that reproduces that file,
the machine it ran on (a short key, machines listed at the end) and, where issue 5 sets one, the
target and whether it is met. A missing results file gives "not yet measured" rows, never an error.

Convention for results files (lets a new benchmark show up without editing this script):

* ``"summary": {label: value}`` at top level, flat, numbers or short strings. Sections whose
  benchmark has no dedicated reader below (speed, scale, privacy_utility, or any new file) print
  these rows as they are. Units belong in the label, e.g. ``"data loading share, pretraining (%)"``.
* ``"command"``: the command line that reproduces the file; ``"machine"``: a string or a dict.
* Targets are read from summary labels by pattern (``TARGETS`` below): a label with ``%`` holds a
  percentage, one with ``ratio`` a fraction. E.g. a label containing ``overhead`` and ``10 sites``
  (or ``10-site``) is the 10-site framework-overhead target.
* Plots: a ``results/<stem>.png`` written by a benchmark is shown as it is. Otherwise
  ``"curves": {series: {"x": [...], "y": [...], "xlabel": ..., "ylabel": ...}}`` is plotted to
  ``benchmarks/<stem>.png``; for privacy-utility results without either, any list of rows carrying an
  ``epsilon`` and an ``auroc`` (a number, or {task: number}) is plotted to
  ``benchmarks/privacy_utility_summary.png``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

# Commands for results files that do not record their own.
DEFAULT_COMMANDS = {
    "federation.json": "python benchmarks/federation.py",
    "federation_leads_fused_heads.json": "python benchmarks/federation.py (reverted head experiment, see git log e0b2ddd)",
    "synthetic_generator.json": "python benchmarks/synthetic_generator.py",
}
PUBLISHED_PTBXL = 0.93   # best 12-lead CNNs, PTB-XL superdiagnostic, Strodthoff et al., IEEE JBHI 2021
NOT_YET = "not yet measured"


# ----------------------------------------------------------------------------- reading

class Results:
    """The results files present, with their commands and machines (machines get short keys)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        for path in sorted(folder.glob("*.json")):
            try:
                self.files[path.name] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                self.errors[path.name] = str(err)
        self.machines: dict[str, str] = {}

    def get(self, name: str) -> dict | None:
        return self.files.get(name)

    def command(self, name: str) -> str:
        data = self.files.get(name) or {}
        return data.get("command") or DEFAULT_COMMANDS.get(name, f"python benchmarks/{Path(name).stem}.py")

    def machine(self, name: str) -> str:
        data = self.files.get(name) or {}
        m = data.get("machine")
        if not m:
            return "not recorded"
        text = m if isinstance(m, str) else ", ".join(f"{k} {v}" for k, v in m.items())
        for key in ("torch", "threads"):   # recorded beside "machine" by some benchmarks
            if key in data and key not in text:
                text += f", {key} {data[key]}"
        key = self.machines.setdefault(text, f"M{len(self.machines) + 1}")
        return key


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v, digits)}" for k, v in value.items())
    return str(value).replace("|", "/")


def flat_summary(data: dict) -> dict[str, Any]:
    """The file's summary as flat {label: value} (one nested level is joined into the label)."""
    out = {}
    for label, value in (data.get("summary") or {}).items():
        if isinstance(value, dict):
            for k, v in value.items():
                out[f"{label} {k}"] = v
        else:
            out[label] = value
    return out


# ----------------------------------------------------------------------------- tables

class Table:
    HEAD = ("measurement", "value", "target / met?", "source", "command", "machine")

    def __init__(self, results: Results):
        self.results = results
        self.rows: list[tuple[str, ...]] = []

    def add(self, what: str, value: Any, source: str | None, target: str = "", *, digits: int = 3) -> None:
        if source is None:
            self.rows.append((what, value if isinstance(value, str) else fmt(value, digits), target, "–", "–", "–"))
            return
        self.rows.append((what, value if isinstance(value, str) else fmt(value, digits), target, f"`results/{source}`",
                          f"`{self.results.command(source)}`", self.results.machine(source)))

    def missing(self, what: str, source: str, target: str = "") -> None:
        self.rows.append((what, NOT_YET, target, f"`results/{source}` (absent)", f"`python benchmarks/{Path(source).stem}.py`",
                          "–"))

    def summary_rows(self, source: str, *, skip: Callable[[str], bool] = lambda _: False) -> bool:
        data = self.results.get(source)
        if data is None:
            return False
        for label, value in flat_summary(data).items():
            if not skip(label):
                self.add(label, value, source, target_cell(label, value))
        return True

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEAD) + " |", "|" + "---|" * len(self.HEAD)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join(lines)


def met(ok: bool | None) -> str:
    return "" if ok is None else ("**met**" if ok else "**not met**")


# Targets found in summary labels (any file): (pattern, description, unit, test). Unit "pct": the value is a
# percentage if the label has "%", else a fraction; "abs": the value is compared as it is (AUROC gaps).
TARGETS: list[tuple[re.Pattern, str, str, Callable[[float], bool]]] = [
    (re.compile(r"DP\s*/\s*non-DP throughput", re.I), "≥ 50% of non-DP", "pct", lambda v: v >= 50),
    (re.compile(r"data.?loading.*(share|fraction|%)", re.I), "< 10% of wall time", "pct", lambda v: v < 10),
    (re.compile(r"overhead.*\b10[ -]sites?\b|\b10[ -]sites?\b.*overhead", re.I), "< 25% of round time (10 sites)", "pct",
     lambda v: v < 25),
    (re.compile(r"gap.*centrali[sz]ed|centrali[sz]ed.*gap", re.I), "within 0.02 of centralised", "abs",
     lambda v: abs(v) <= 0.02),
]


def target_cell(label: str, value: Any) -> str:
    for pattern, text, unit, test in TARGETS:
        if pattern.search(label):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return f"{text}:"
            v = float(value)
            if unit == "pct" and "%" not in label and abs(v) <= 1:
                v *= 100
            return f"{text}: {met(test(v))}"
    return ""


# ----------------------------------------------------------------------------- sections

ACCURACY_NAMES = {
    "lsemvae-probe": "LS-EMVAE compact, frozen-encoder probe",
    "lsemvae-full": "LS-EMVAE compact, full fine-tuning",
    "cnn": "from-scratch 6-lead CNN",
    "random-probe": "random-encoder probe",
    "cnn-12l": "12-lead upper reference: from-scratch CNN on all 12 leads",
}
ACCURACY_EXPECTED = {"faithful": "LS-EMVAE faithful configuration", "12l": "12-lead upper reference"}
#: issue 3's targets for LS-EMVAE full fine-tuning (mean of 3 seeds, fold 10), by label fraction
ACCURACY_TARGETS = {1.0: 0.90, 0.1: 0.86}


def section_accuracy(r: Results) -> tuple[Table, str]:
    t = Table(r)
    src = "ptbxl_accuracy.json"
    data = r.get(src)
    t.rows.append(("published reference: best 12-lead CNNs, full PTB-XL (~17k training records), superdiagnostic "
                   "macro AUROC", f"≈ {PUBLISHED_PTBXL:.2f}", "", "Strodthoff et al., IEEE JBHI 2021 (PTB-XL benchmark)",
                   "–", "–"))
    if data is None:
        t.missing("LS-EMVAE and baselines, 6 limb leads, fold 10", src)
        return t, ""
    methods = set()
    for row in data.get("results", []):
        methods.add(row["method"])
        name = ACCURACY_NAMES.get(row["method"], row["method"])
        ci = row.get("test_ci") or [None, None]
        diff = row.get("diff_vs_cnn")
        vs = f"; vs CNN {diff['diff']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]" if diff else ""
        goal = ACCURACY_TARGETS.get(row["label_fraction"]) if row["method"] == "lsemvae-full" else None
        verdict = f"≥ {goal:.2f}: **{'met' if row['test_macro_auroc_mean'] >= goal else 'missed'}**" if goal else ""
        t.add(f"{name}, {row['label_fraction']:.0%} labels (n train {row.get('n_train', '?')}), macro AUROC [95% CI]",
              f"{row['test_macro_auroc_mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]{vs}", src, verdict)
    for key, name in ACCURACY_EXPECTED.items():
        if not any(key in m for m in methods):
            t.rows.append((name, NOT_YET, "", f"`results/{src}` (no such method)", f"`{r.command(src)}`", "–"))
    note = ("What differs from the published ≈0.93: we train on the ~1k-record PTB-XL subset in `../shared/data` "
            "(752 training records with superclass labels, vs ~17k), use the 6 limb leads (I, II, III, aVR, aVL, aVF; "
            "no precordial leads) and a CPU-sized model; the test fold is small, hence the wide CIs. "
            f"Protocol: {data.get('protocol', '')}")
    return t, note


def section_federated(r: Results) -> tuple[Table, str]:
    t = Table(r)
    target = "within 0.02 of centralised"
    found = False
    src = "federation.json"
    data = r.get(src) or {}
    fed, cen = data.get("federated_no_dp"), data.get("centralised")
    if isinstance(fed, dict) and isinstance(cen, dict) and "auroc" in fed and "auroc" in cen:   # first schema
        found = True
        sd = cen.get("auroc_sd", {})
        for task, c in cen["auroc"].items():
            f = fed["auroc"].get(task)
            if f is None:
                continue
            t.add(f"{task}: federated (no DP) / centralised (mean ± sd over {len(cen.get('auroc_runs', [])) or 1} runs)",
                  f"{f:.3f} / {c:.3f} ± {sd.get(task, 0):.3f}", src)
            t.add(f"{task}: gap centralised − federated", c - f, src, f"{target}: {met(abs(c - f) <= 0.02)}")
    found |= t.summary_rows(src)
    found |= t.summary_rows("privacy_utility.json", skip=lambda label: not re.search(r"centrali[sz]ed", label, re.I))
    if not found:
        t.missing("AUROC gap federated vs centralised", src, target)
    note = ("Few positives are evaluated on the synthetic sites (about 30 for left_atrial), so one centralised run moves "
            "by a few hundredths with the shuffle order alone; read a gap against that spread.")
    return t, note


def _eps_key(label: str) -> float:
    m = re.search(r"eps(?:ilon)?\s*([0-9.]+)", label)
    return float(m.group(1)) if m else math.inf


def section_privacy(r: Results) -> tuple[Table, str]:
    t = Table(r)
    src = "privacy_utility.json"
    if t.summary_rows(src):
        return t, "Per-site final epsilons and the full curve are in the results file."
    t.missing("AUROC at epsilon 0.5, 1, 2, 4, 8 and no DP (≥20,000 synthetic records over 5 sites; real subset)", src)
    fed = r.get("federation.json")
    if fed and isinstance(fed.get("federated_no_dp"), dict):   # first schema of the federation benchmark
        runs = sorted((k for k in fed if k.startswith("federated_dp_eps")), key=_eps_key)
        for k in ["federated_no_dp", *runs]:
            row = fed[k]
            eps = row.get("epsilon_max")
            t.add(f"preliminary (3 sites × {fed['setup'].get('records_per_site')} records): "
                  f"{'no DP' if k == 'federated_no_dp' else 'DP, max site epsilon ' + fmt(eps, 2)}, AUROC",
                  fmt(row["auroc"]), "federation.json")
        return t, ("Until `privacy_utility.json` lands, the DP runs of the federation benchmark give a small "
                   "preliminary curve (1,200 records, far below the issue's 20,000).")
    return t, ""


def section_speed(r: Results) -> tuple[Table, str]:
    t = Table(r)
    if not t.summary_rows("speed.json"):
        t.missing("throughput, latency, memory, cache build rate, data-loading share, framework overhead", "speed.json",
                  "data loading < 10% of wall time; DP ≥ 50% of non-DP")
    src = "dp_throughput.json"
    data = r.get(src)
    if data:
        by_batch: dict[int, dict] = {}
        for row in data.get("results", []):
            if row["mode"] != "non-dp":
                best = by_batch.get(row["batch_size"])
                if best is None or row["ratio_to_non_dp"] > best["ratio_to_non_dp"]:
                    by_batch[row["batch_size"]] = row
        for bs, row in sorted(by_batch.items()):
            t.add(f"DP / non-DP throughput, encoder microbenchmark, batch {bs}, best mode ({row['mode']})",
                  f"{row['ratio_to_non_dp']:.2f} ({row['ecgs_per_s']} ECGs/s)", src,
                  f"≥ 50% of non-DP: {met(row['ratio_to_non_dp'] >= 0.5)}")
    return t, ""


def section_scale(r: Results) -> tuple[Table, str]:
    t = Table(r)
    if not t.summary_rows("scale.json"):
        t.missing("cost vs records (1k, 10k, 50k) and vs sites (2, 5, 10, 20)", "scale.json",
                  "10-site framework overhead < 25% of round time")
    return t, ""


def section_communication(r: Results) -> tuple[Table, str]:
    t = Table(r)
    src = "communication.json"
    data = r.get(src)
    if data is None:
        t.missing("bytes per site per round (compact, faithful; float16)", src, "compact < 5 MB per site per round")
        return t, ""
    for profile, row in data["computed"].items():
        for key, b in row.items():
            if not isinstance(b, dict):
                continue
            leads, dtype = key.split("/")
            target = ""
            if profile == "compact":
                target = f"< 5 MB sent per site: {met(b['up'] < 5e6)}"
            t.add(f"{profile}, {leads} site, {dtype}: up / down (train + evaluate broadcast), MB",
                  f"{b['up'] / 1e6:.2f} / {b['down'] / 1e6:.2f}", src, target)
            if "up_probe" in b:
                t.add(f"{profile}, {leads} site, {dtype}, under DP (probe, the default): up / down per round once the "
                      "site holds the encoders (train + evaluate), MB", f"{b['up_probe'] / 1e6:.4f} / {b.get('down_probe', math.nan) / 1e6:.4f}", src)
    rnd = data.get("float16_rounding")
    if rnd:
        t.add("float16 round trip of the pretrained compact weights: relative L2 error / max abs error",
              f"{rnd['l2_relative_error']:.1e} / {rnd['max_abs_error']:.1e}", src)
    for i, pair in enumerate(data.get("runs", [])):
        runs = pair["runs"]
        if i == 0:   # bytes do not depend on the seed: one pair's ServerApp log is enough
            b32, b16 = (runs[d]["bytes_per_site_per_round"] for d in ("float32", "float16"))
            for site in sorted(b16):
                t.add(f"measured by the ServerApp, site {site}: up / down (train + evaluate), float32 → float16, MB",
                      f"{b32[site]['up'] / 1e6:.3f} / {_down(b32[site]) / 1e6:.3f} → "
                      f"{b16[site]['up'] / 1e6:.3f} / {_down(b16[site]) / 1e6:.3f}", src)
        moved = pair.get("fine_tuning_relative_l2_change")
        t.add(f"AUROC cost of float16 ({pair['label']}): float16 − float32 per task (final weights differ by "
              f"{pair.get('final_weights_relative_l2_gap', math.nan):.1e} of their norm"
              + (f"; fine-tuning moved them by {moved:.1e})" if moved is not None else ")"),
              ", ".join(f"{k} {v:+.4f}" for k, v in pair["auroc_difference"].items()), src)
    note = ("Up is what a site sends when it trains its encoders (its leads' encoders, the fusion gate, its task heads; "
            "the default without DP); under DP a site trains and sends only the fusion gate and heads by default "
            "(`train-encoders = \"auto\"`), and the frozen encoders go down to it only once. Down is every federated "
            "group, sent twice per round (train message and the evaluation broadcast of the aggregated model). "
            "Decoders never travel. Bytes are the serialised tensors (`flwr.app.Array`: values plus a 128-byte .npy "
            "header each); the message envelope adds a few kB. float16 is the run-config key "
            "`update-dtype = \"float16\"` (`simulation/run.py --update-dtype float16`); training and aggregation stay "
            "float32/float64.")
    return t, note


def _down(b: dict) -> int:
    return b["down"] + b.get("down_evaluate", b["down"])


def section_membership(r: Results) -> tuple[Table, str]:
    t = Table(r)
    found = False
    for src in sorted(n for n in r.files if n.startswith("membership_inference")):
        data = r.files[src]
        found = True
        for s in data.get("settings", []):
            a = s["attack"]
            eps = f" (accountant {s['achieved_epsilon']:.2f})" if s.get("achieved_epsilon") else ""
            ci = a.get("auroc_ci95") or [math.nan, math.nan]
            t.add(f"{data.get('data', src)}: {s['setting']}{eps}: attack AUROC [95% CI]; held-out AUROC",
                  f"{a['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]; {fmt(s.get('held_out_auroc'), 2)}", src)
    if not found:
        t.missing("loss-threshold attack AUROC, no DP vs DP", "membership_inference.json")
    return t, "An attack AUROC of 0.5 is chance; DP bounds TPR ≤ e^ε·FPR + δ."


def section_memory(r: Results) -> tuple[Table, str]:
    t = Table(r)
    src = "memory_rounds.json"
    data = r.get(src)
    if data is None:
        t.missing("RSS per round (server, sites, SuperLink)", src, "flat across rounds")
        return t, ""
    for role, s in data.get("summary", {}).items():
        t.add(f"{role}: RSS first → last (MB); second-half slope (MB/round)",
              f"{s['first_mb']} → {s['last_mb']}; {s['second_half_slope_mb_per_round']}", src)
    t.add(f"flat over {data.get('rounds')} rounds ({data.get('flat_rule', '')})", data.get("flat"), src,
          f"flat across rounds: {met(bool(data.get('flat')))}")
    return t, data.get("note", "")


def section_external(r: Results) -> tuple[Table, str]:
    t = Table(r)
    if not t.summary_rows("external.json"):
        t.missing("leave-one-source-out gap (external - internal macro AUROC), before and after", "external.json")
    data = r.get("external.json") or {}
    return t, data.get("note", "")


SECTIONS: list[tuple[str, Callable[[Results], tuple[Table, str]]]] = [
    ("1. Accuracy on real data (PTB-XL subset, 6 limb leads, superclasses, fold 10)", section_accuracy),
    ("2. Federated vs centralised", section_federated),
    ("3. Privacy-utility", section_privacy),
    ("4. Speed on this machine", section_speed),
    ("5. Scale", section_scale),
    ("6. Communication", section_communication),
    ("7. Membership inference", section_membership),
    ("8. Memory over rounds", section_memory),
    ("9. External validity: leave one source out (PTB-XL sites, LUDB)", section_external),
]


# ----------------------------------------------------------------------------- plots

def curves_of(data: dict) -> dict[str, dict]:
    """Series to plot: the file's "curves", else rows with an epsilon and an AUROC."""
    if isinstance(data.get("curves"), dict):
        return data["curves"]
    points: dict[str, list[tuple[float, float]]] = {}

    def eps_of(row: dict) -> float | None | str:
        for k, v in row.items():
            if "epsilon" in k.lower() and "delta" not in k.lower() and (v is None or isinstance(v, (int, float))):
                return v
        return "absent"

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
            for row in obj:
                eps, au = eps_of(row), row.get("auroc")
                if eps == "absent" or au is None:
                    continue
                x = math.inf if eps is None else float(eps)
                for task, y in (au.items() if isinstance(au, dict) else [("auroc", au)]):
                    if isinstance(y, (int, float)):
                        points.setdefault(f"{path} {task}".strip(), []).append((x, float(y)))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path} {k}".strip() if path else k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, path)

    walk(data, "")
    return {name: {"x": [p[0] for p in sorted(pts)], "y": [p[1] for p in sorted(pts)], "xlabel": "epsilon",
                   "ylabel": "AUROC"} for name, pts in points.items() if len(pts) >= 2}


def federation_curves(data: dict) -> dict[str, dict]:
    """Preliminary privacy-utility curve from the federation benchmark's DP runs."""
    out: dict[str, dict] = {}
    for k, row in data.items():
        if not k.startswith("federated_") or not isinstance(row, dict) or not isinstance(row.get("auroc"), dict):
            continue
        x = math.inf if k == "federated_no_dp" else float(row.get("epsilon_max") or _eps_key(k))
        for task, y in row["auroc"].items():
            s = out.setdefault(task, {"x": [], "y": [], "xlabel": "max site epsilon", "ylabel": "pooled AUROC"})
            s["x"].append(x)
            s["y"].append(y)
    return out


def plot(curves: dict[str, dict], path: Path, title: str) -> Path | None:
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, c) in enumerate(curves.items()):
        pts = sorted(zip(c["x"], c["y"]))
        finite = [(x, y) for x, y in pts if math.isfinite(x)]
        color = f"C{i}"
        if finite:
            ax.plot(*zip(*finite), "o-", color=color, label=name)
        for x, y in pts:
            if not math.isfinite(x):
                ax.axhline(y, color=color, ls="--", lw=1, label=f"{name}, no DP")
    first = next(iter(curves.values()))
    xs = sorted({x for c in curves.values() for x in c["x"] if math.isfinite(x)})
    if xs and xs[0] > 0:
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:.3g}" for x in xs])
        ax.minorticks_off()
    ax.set_xlabel(first.get("xlabel", "epsilon"))
    ax.set_ylabel(first.get("ylabel", "AUROC"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- README

# Issue 5's targets: (what, target text as the sections write it, the results file expected to measure it).
REQUIRED_TARGETS = [
    ("DP-SGD throughput vs non-DP", "≥ 50% of non-DP", "speed.json"),
    ("data loading share of training wall time", "< 10% of wall time", "speed.json"),
    ("federated (no DP) vs centralised macro AUROC", "within 0.02 of centralised", "federation.json"),
    ("10-site simulation framework overhead", "< 25% of round time (10 sites)", "scale.json"),
    ("compact model bytes sent per site per round", "< 5 MB sent per site", "communication.json"),
    ("memory over rounds", "flat across rounds", "memory_rounds.json"),
]


def targets_overview(tables: dict[str, Table]) -> Table:
    """Every row that carries a target verdict, gathered at the top; a target nothing measured yet says so."""
    t = Table(next(iter(tables.values())).results)
    for title, table in tables.items():
        for row in table.rows:
            if "met**" in row[2]:
                t.rows.append((f"{title.split(' ', 1)[1].split(' (')[0]}: {row[0]}", *row[1:]))
    for what, target, source in REQUIRED_TARGETS:
        if not any(r[2].startswith(target) for r in t.rows):
            t.rows.append((what, NOT_YET, target, f"`results/{source}`", f"`{t.results.command(source)}`", "–"))
    return t


def privacy_plot(r: Results, out_dir: Path) -> str | None:
    """The privacy-utility figure for the README: the benchmark's own PNG if it wrote one, else drawn here."""
    own = out_dir / "privacy_utility_summary.png"
    theirs = r.folder / "privacy_utility.png"
    if theirs.is_file():
        own.unlink(missing_ok=True)
        return os.path.relpath(theirs, out_dir)
    pu, fed = r.get("privacy_utility.json"), r.get("federation.json")
    if pu is not None:
        drawn = plot(curves_of(pu), own, "Privacy-utility")
    else:
        drawn = plot(federation_curves(fed or {}), own, "Privacy-utility (preliminary, 3 synthetic sites)")
    if drawn is None:
        own.unlink(missing_ok=True)   # never leave a figure of data that is gone
        return None
    return own.name


def render(r: Results, out_dir: Path = BENCH) -> str:
    tables, notes = {}, {}
    for title, fn in SECTIONS:
        try:
            tables[title], notes[title] = fn(r)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:   # a schema this reader predates
            t = Table(r)
            t.rows.append(("this section", f"could not be read: {type(err).__name__}: {err}", "", "–", "–", "–"))
            tables[title], notes[title] = t, "Its results file changed schema; update the section's reader in summarise.py."
    pu_plot = privacy_plot(r, out_dir)
    extra_plots = []   # other results files' own PNGs, and plots of their "curves"
    for png in sorted(r.folder.glob("*.png")):
        if png.name != "privacy_utility.png":
            extra_plots.append(os.path.relpath(png, out_dir))
    for name, data in r.files.items():
        if name != "privacy_utility.json" and isinstance(data.get("curves"), dict):
            q = plot(data["curves"], out_dir / f"{Path(name).stem}.png", Path(name).stem)
            if q:
                extra_plots.append(q.name)
    out = ["# Benchmarks: one table", "",
           "Generated by `python benchmarks/summarise.py` (`make benchmarks-summary`) from `benchmarks/results/*.json`; "
           "do not edit by hand. Each benchmark is one command under `benchmarks/` (the `command` column). Timings are "
           "ratios measured in the same run where possible: the machines are shared and noisy; absolute numbers come "
           "with the machine they ran on (keys at the end).", "",
           "## Targets (issue 5)", "", targets_overview(tables).markdown(), ""]
    for title in tables:
        out += [f"## {title}", "", tables[title].markdown(), ""]
        if notes[title]:
            out += [notes[title], ""]
        if title.startswith("3.") and pu_plot:
            out += [f"![privacy-utility]({pu_plot})", ""]
    for p in extra_plots:
        out += [f"![{Path(p).stem}]({p})", ""]
    out += ["## Machines", ""]
    out += [f"- **{key}**: {text}" for text, key in r.machines.items()] or ["- none recorded"]
    out += ["- **not recorded**: the file does not say; these ran on the project's shared 2-core x86_64 machine "
            "(torch 2.13.0 CPU)", ""]
    other = sorted(set(r.files) - USED_FILES)
    if other:
        out += ["Other results files (not in a table): " + ", ".join(f"`{n}`" for n in other), ""]
    if r.errors:
        out += ["Unreadable results files: " + "; ".join(f"`{k}`: {v}" for k, v in r.errors.items()), ""]
    return "\n".join(out)


USED_FILES = {"ptbxl_accuracy.json", "federation.json", "privacy_utility.json", "speed.json", "dp_throughput.json",
              "scale.json", "communication.json", "membership_inference.json", "membership_inference_ptbxl.json",
              "memory_rounds.json", "external.json"}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of results JSON (default benchmarks/results)")
    p.add_argument("--out", type=Path, default=BENCH, help="folder for README.md and plots (default benchmarks/)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text(render(Results(args.results), args.out))
    print(f"wrote {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
