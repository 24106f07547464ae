"""benchmarks/README.md from benchmarks/results/*.json: a page of grids, one section per question.

    python -m benchmarks.summarise            # or: make benchmarks-summary

Each section names the command(s) that made its numbers once, then grids (rows x columns, units in
the headers); the targets of the issues are gathered at the top with their verdicts, the machine is
one line. A missing results file gives a "not yet measured" line, an unreadable one a line saying so
(never an error): a file in a schema its reader predates costs only its own section.

Files follow :class:`benchmarks.harness.ResultMeta` (``command``, ``machine``, ...); a file no section
reads is named at the end. Results that an accepted change in the code has made out of date are listed
in :data:`STALE` and flagged where shown, with the command that refreshes them.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PUBLISHED_PTBXL = 0.93   # best 12-lead CNNs, PTB-XL superdiagnostic, Strodthoff et al., IEEE JBHI 2021
NOT_YET = "not yet measured"

#: results whose code path changed after they were measured: file -> what is out of date and why
STALE = {
    "scale.json": "the sites and deployment rows ran before the federated round moved into lsemvae/federation "
                  "(server_round, site_round), the wire format became one packed buffer and evaluation rode on the "
                  "train replies (one exchange per round; their overhead counted a separate evaluate stage); rerun "
                  "`python -m benchmarks.scale` (~40 min; the records rows are unaffected)",
    "speed.json": "the site-round rows ran before the round moved into lsemvae/federation/site_round (same "
                  "train_round underneath); rerun `python -m benchmarks.speed`",
    "memory_rounds.json": "ran before the round moved into lsemvae/federation and before sites refused evaluation "
                          "below evaluation.min_records (its tiny sites now evaluate with --eval-min-cell 1); rerun "
                          "`python -m benchmarks.memory_rounds`",
    "communication.json": "the bytes per round are current (`python -m benchmarks.communication --bytes-only`); the "
                          "float16 runs (AUROC differences, the bytes the server measured) ran through simulation/run.py "
                          "before the round moved into lsemvae/federation, with an evaluate message every round; rerun "
                          "`python -m "
                          "benchmarks.communication` (~15 min)",
    "privacy_utility.json": "ran on the benchmark's own copy of the federated round, before it drove the library's "
                            "(lsemvae/federation run_rounds over in-process sites); rerun `python -m "
                            "benchmarks.privacy_utility --only synthetic,synthetic-probe` and `--only real,real-full` "
                            "(hours on 2 cores)",
}


# ----------------------------------------------------------------------------- reading

class Results:
    """The results files present: contents, commands, machines; unreadable files are remembered, not raised."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    raise ValueError("the top level is not an object")
                self.files[path.name] = data
            except (OSError, ValueError) as err:
                self.errors[path.name] = str(err)
        self.used: set[str] = set()

    def get(self, name: str) -> dict | None:
        if name in self.files:
            self.used.add(name)
        return self.files.get(name)

    def matching(self, patterns: list[str]) -> list[str]:
        """The files present that the patterns (file names or globs, in order) name."""
        return list(dict.fromkeys(n for pat in patterns for n in sorted(fnmatch.filter(self.files, pat))))

    def command(self, name: str) -> str | None:
        """The command that reproduces a file, as it is run now (None: the file does not say)."""
        return current((self.files.get(name) or {}).get("command"))


def current(command: str | None) -> str | None:
    """A recorded ``python benchmarks/<name>.py ...`` as it runs today (``python -m benchmarks.<name> ...``: the
    same module and arguments; the benchmarks became a package)."""
    return command and re.sub(r"(^|; then )python (?:\S*/)?benchmarks/(\w+)\.py", r"\1python -m benchmarks.\2",
                              command.strip())


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 1e5:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v, digits)}" for k, v in value.items())
    return str(value)


def ci(d: dict | None, *, key: str = "diff", signed: bool = True) -> str:
    """``value [low, high]`` of a ``{key, ci95|ci}`` dict."""
    if not d:
        return "–"
    lo, hi = d.get("ci95") or d.get("ci") or (None, None)
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(d[key])} [{f.format(lo)}, {f.format(hi)}]" if lo is not None else f.format(d[key])


def grid(corner: str, columns: list[str], rows: list[tuple[str, list[Any]]]) -> list[str]:
    """A markdown table: ``corner`` heads the row labels, one cell per column (values formatted by :func:`fmt`)."""
    esc = lambda v: (v if isinstance(v, str) else fmt(v)).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join([corner, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    out += ["| " + " | ".join([esc(label), *(esc(c) for c in cells)]) + " |" for label, cells in rows]
    return out + [""]


@dataclass
class Section:
    """One question: the results files present that it reads, its grids and notes (``lines``), target verdicts and,
    where the files' own ``command`` is not the whole story, the commands behind it."""

    title: str
    sources: list[str]
    lines: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, str, bool | None]] = field(default_factory=list)  # what, value, target, met
    commands: list[str] = field(default_factory=list)
    command_per_row: bool = False     # the grid names each row's command: no section-wide line

    def target(self, what: str, value: str, target: str, met: bool | None) -> None:
        self.targets.append((what, value, target, met))


def verdict(met: bool | None) -> str:
    return "" if met is None else ("**met**" if met else "**not met**")


# ----------------------------------------------------------------------------- sections

ACCURACY_NAMES = {
    "lsemvae-probe": "LS-EMVAE compact, frozen-encoder probe",
    "lsemvae-full": "LS-EMVAE compact, full fine-tuning",
    "random-probe": "random-encoder probe",
    "cnn": "from-scratch 6-lead CNN",
    "cnn-12l": "12-lead upper reference: from-scratch CNN on 12 leads",
}
#: issue 3's targets for LS-EMVAE full fine-tuning (mean of 3 seeds, fold 10), by label fraction
ACCURACY_TARGETS = {1.0: 0.90, 0.1: 0.86}


def section_accuracy(r: Results, s: Section) -> None:
    s.lines.append(f"Published reference: best 12-lead CNNs on the full PTB-XL (~17k training records), superdiagnostic "
                   f"macro AUROC ≈ {PUBLISHED_PTBXL:.2f} (Strodthoff et al., IEEE JBHI 2021).\n")
    data = r.get("ptbxl_accuracy.json")
    if data is None:
        s.lines.append(f"Macro AUROC of LS-EMVAE and baselines: {NOT_YET}.\n")
        for f, goal in ACCURACY_TARGETS.items():
            s.target(f"LS-EMVAE full fine-tuning, {f:.0%} labels, macro AUROC", NOT_YET, f"≥ {goal:.2f}", None)
    else:
        rows = data.get("results", [])
        fractions = sorted({row["label_fraction"] for row in rows}, reverse=True)
        n_train = {f: next((row.get("n_train") for row in rows if row["label_fraction"] == f), "?") for f in fractions}
        cells: dict[str, dict[float, str]] = {}
        for row in rows:
            c = row.get("test_ci") or [None, None]
            text = f"{row['test_macro_auroc_mean']:.3f} [{c[0]:.3f}, {c[1]:.3f}]" if c[0] is not None else \
                f"{row['test_macro_auroc_mean']:.3f}"
            d = row.get("diff_vs_cnn")
            if d:
                text += f"; {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
            cells.setdefault(row["method"], {})[row["label_fraction"]] = text
            goal = ACCURACY_TARGETS.get(row["label_fraction"]) if row["method"] == "lsemvae-full" else None
            if goal:
                s.target(f"LS-EMVAE full fine-tuning, {row['label_fraction']:.0%} labels, macro AUROC",
                         f"{row['test_macro_auroc_mean']:.3f}", f"≥ {goal:.2f}", row["test_macro_auroc_mean"] >= goal)
        order = [m for m in ACCURACY_NAMES if m in cells] + [m for m in cells if m not in ACCURACY_NAMES]
        s.lines.append("Macro AUROC [95% CI], seed mean; after `;` the paired difference to the 6-lead CNN [95% CI].\n")
        s.lines += grid("method", [f"{f:.0%} labels (n train {n_train[f]})" for f in fractions],
                        [(ACCURACY_NAMES.get(m, m), [cells[m].get(f, "–") for f in fractions]) for m in order])
        if data.get("protocol"):
            s.lines.append(f"Protocol: {data['protocol']}. What differs from the published ≈0.93: the ~1k-record subset "
                           "in ../shared/data, 6 limb leads only, a CPU-sized model; the test fold is small, hence "
                           "the wide CIs.\n")
    card = r.get("pretrained_card.json")
    if card:
        au = card.get("summary", {}).get("auroc", {})
        s.lines.append(f"Shipped checkpoint `{card.get('checkpoint')}` through `lsemvae finetune` / `lsemvae evaluate` "
                       "(the model card's figures):\n")
        s.lines += grid("fine-tuning", ["fold-10 macro AUROC [95% CI]", "per seed"],
                        [(mode, [ci(f, key="mean", signed=False), ", ".join(f"{v:.3f}" for v in f.get("per_seed", []))])
                         for mode, f in au.items()])


FED_TARGET = 0.02


def section_federated(r: Results, s: Section) -> None:
    data = r.get("federation.json")
    if not data or "experiments" not in data:
        s.lines.append(f"Federated minus pooled AUROC on both cohorts: {NOT_YET}.\n")
        s.target("federated (no DP) vs pooled, every task", NOT_YET, f"within {FED_TARGET} of pooled", None)
        return
    s.lines.append("AUROC of arm a minus arm b on the same held-out records (every natural site's evaluation split, "
                   "scored exactly), runs paired by seed: seed mean [95% CI over records and seeds] (a / b seed means). "
                   "Same pretrained checkpoint, same heads, same optimiser budget: R rounds x E local epochs "
                   "federated, R x E epochs pooled.\n")
    by_tasks: dict[tuple[str, ...], list[tuple[str, dict]]] = {}
    for name, exp in data["experiments"].items():
        for row in exp["comparisons"]:
            by_tasks.setdefault(tuple(row["tasks"]), []).append((name, row))
            if name == "main":
                for t, d in row["tasks"].items():
                    s.target(f"{row['label']}: {t} (no DP, {len(d.get('per_seed', []))} seeds)", ci(d),
                             f"within {FED_TARGET} of pooled", abs(d["diff"]) <= FED_TARGET)
    for tasks, rows in by_tasks.items():
        s.lines += grid("comparison (experiment)", [f"{t}: a - b" for t in tasks],
                        [(f"{row['label']} ({name})",
                          [f"{ci(row['tasks'][t])} ({row['tasks'][t]['a']:.3f} / {row['tasks'][t]['b']:.3f})"
                           for t in tasks]) for name, row in rows])
    sizes: dict[str, list[str]] = {}
    for name, exp in data["experiments"].items():
        sizes.setdefault(f"{exp.get('records_per_site', '?')} synthetic records per site, {exp.get('rounds', '?')} "
                         f"rounds x {exp.get('local_epochs', '?')} local epoch(s)", []).append(name)
    s.lines.append("Sizes: " + "; ".join(f"{size} ({', '.join(names)})" for size, names in sizes.items())
                   + ". Per-seed values, runs and the cohorts' descriptions are in the results file.\n")
    rows = data.get("decomposition") or []
    if rows:
        tasks = list(dict.fromkeys(t for row in rows for t in row["tasks"]))
        s.lines.append("**Decomposition** (synthetic cohort). FedAvg on the natural sites trails pooled training by the "
                       "natural gap; each control removes or changes one suspect. Cell: the gap under the control "
                       "minus the natural gap [95% CI] (positive: the control closes that much of the gap); for an "
                       "*effect* row, the suspect's own effect on pooled training. Natural gap: "
                       + ", ".join(f"{t} {rows[0]['tasks'][t]['natural_gap']:+.3f}" for t in tasks if t in rows[0]["tasks"])
                       + ".\n")
        s.lines += grid("suspect: control", [f"{t}: change (gap under control)" for t in tasks],
                        [(row["factor"] + (" *(effect)*" if row["effect"] else ""),
                          [f"{ci(row['tasks'][t]['change'])} ({row['tasks'][t]['gap']:+.3f})" if t in row["tasks"] else "–"
                           for t in tasks]) for row in rows])
    if data.get("conclusion"):
        s.lines.append(data["conclusion"] + "\n")


def section_privacy(r: Results, s: Section) -> None:
    data = r.get("privacy_utility.json")
    cohorts = {k: v for k, v in (data or {}).items() if isinstance(v, dict) and "settings" in v}
    if not cohorts:
        s.lines.append(f"AUROC at epsilon 0.5, 1, 2, 4, 8 and without DP: {NOT_YET}.\n")
        return
    s.lines.append("Exact AUROC on the sites' held-out records (seed mean where several seeds ran); the epsilon column is "
                   "the largest any site's privacy ledger holds (delta 1e-5), not the target. Details (noise "
                   "multipliers, per-site figures): `results/privacy_utility.md`.\n")
    for key, c in cohorts.items():
        tasks = c.get("tasks", [])
        s.lines.append(f"*{c.get('data', key)}*; {c.get('rounds', '?')} round(s).\n")
        s.lines += grid("setting", [f"AUROC {t}" for t in tasks] + ["max site epsilon (ledger)"],
                        [(row["setting"], [row["auroc"].get(t) for t in tasks]
                          + [max(row["epsilon"].values()) if row.get("epsilon") else None]) for row in c["settings"]])
    s.commands = list(dict.fromkeys(c.get("command") for c in cohorts.values() if c.get("command")))


def section_private_evaluation(r: Results, s: Section) -> None:
    make_run(r, s)
    data = r.get("private_evaluation.json")
    if not data:
        s.lines.append(f"Pooled AUROC and calibration from the sites' k-anonymous histograms vs exact, per histogram "
                       f"policy: {NOT_YET}.\n")
        return
    policies = data.get("policies", [])
    s.lines.append("The same federated model scored exactly on every held-out record and from the histograms the sites "
                   "would send (bins on [0, 1], adjacent bins merged to at least k records per cell, cells placed at "
                   "their mean). Cells: private value (private - exact). ECE over "
                   f"{data.get('calibration_bins', 10)} bins. The first policy is the sites' default; \"a class "
                   "withheld whole\" and \"cells spread\" are candidate changes measured here, not what sites and server do: "
                   "where a site withholds a class's positives (fewer than k) the server also drops its negatives of "
                   "that class; every cell spread evenly over its width instead of placed at its mean.\n")
    rows = []
    for m in data.get("models", []):
        for task, t in m["tasks"].items():
            cells = [f"{t['exact']['auroc']:.3f}"]
            for p in t["policies"]:
                cells.append("withheld" if p["auroc"] is None else f"{p['auroc']:.3f} ({p['auroc_loss']:+.3f})")
            d = t["policies"][0]
            cells += [f"{t['exact']['ece']:.3f}", "–" if d["ece"] is None else f"{d['ece']:.3f} ({d['ece_difference']:+.3f})"]
            n = sum(v["records"] for v in t["sites"].values())
            rows.append((f"{m['model']}: {task} ({n} records, {len(t['sites'])} sites)", cells))
    s.lines += grid("model: task", ["exact AUROC"] + [f"AUROC, bins {p['bins']}, k {p['min_cell']}"
                                                      + (", a class withheld whole" if p.get("whole_class") else "")
                                                      + (", cells spread over their width" if p.get("spread_cells") else "")
                                                      for p in policies]
                    + ["exact ECE", f"ECE, bins {policies[0]['bins']}, k {policies[0]['min_cell']}" if policies else "ECE"],
                    rows)


def make_run(r: Results, s: Section) -> None:
    """`make run`'s report (the pooled AUROC the server reads from k-anonymous histograms) beside the exact AUROC of
    the same final model on the same records."""
    data = r.get("make_run.json")
    if not data:
        return
    entries = data.get("entries", {})
    tasks = list(dict.fromkeys(t for e in entries.values() for t in e.get("exact_auroc", {})))
    s.lines.append("`make run` (simulation/run.py, the real ServerApp and ClientApps): the pooled AUROC its report "
                   "gives (private: from the sites' k-anonymous histograms) and the exact AUROC of the same final model "
                   "on the same records. Cells: private / exact.\n")
    s.lines += grid("run (simulation/run.py options)", [f"{t}: private / exact" for t in tasks] + ["max site epsilon"],
                    [(f"{label} ({' '.join(e.get('simulation_args') or []) or 'defaults'})",
                      [f"{fmt(e['private_auroc'].get(t))} / {fmt(e['exact_auroc'].get(t))}" for t in tasks]
                      + [e.get("epsilon_max")]) for label, e in entries.items()])


def section_speed(r: Results, s: Section) -> None:
    data = r.get("speed.json")
    if data is None:
        s.lines.append(f"Throughput, latency, memory, data-loading share: {NOT_YET}.\n")
        s.target("DP / non-DP throughput, site round", NOT_YET, "≥ 50% of non-DP", None)
        s.target("data loading share of training wall time", NOT_YET, "< 10% of wall time", None)
    else:
        summary = flat_summary(data)
        s.lines += grid("measurement", ["value"], [(k, [v]) for k, v in summary.items()])
        for k, v in summary.items():
            if re.search(r"DP\s*/\s*non-DP throughput", k):
                s.target(k, fmt(v), "≥ 50% of non-DP", _percent(k, v) >= 50)
            elif re.search(r"data.?loading.*(share|%)", k):
                s.target(k, fmt(v), "< 10% of wall time", _percent(k, v) < 10)
    micro = r.get("dp_throughput.json")
    if micro:
        results = micro.get("results", [])
        modes = list(dict.fromkeys(row["mode"] for row in results))
        batches = sorted({row["batch_size"] for row in results})
        cell = {(row["batch_size"], row["mode"]): row for row in results}
        s.lines.append("Encoder microbenchmark (6 leads, compact encoders): ECGs/s (ratio to non-DP).\n")
        s.lines += grid("batch", modes, [(str(b), [
            "–" if (b, m) not in cell else f"{cell[b, m]['ecgs_per_s']}" + (
                f" ({cell[b, m]['ratio_to_non_dp']:.2f})" if cell[b, m].get("ratio_to_non_dp") and m != "non-dp" else "")
            for m in modes]) for b in batches])
        for b in batches:
            best = max((cell[b, m] for m in modes if (b, m) in cell and m != "non-dp"),
                       key=lambda row: row.get("ratio_to_non_dp") or 0, default=None)
            if best and best.get("ratio_to_non_dp"):
                s.target(f"DP / non-DP throughput, encoder microbenchmark, batch {b} ({best['mode']})",
                         f"{best['ratio_to_non_dp']:.2f}", "≥ 50% of non-DP", best["ratio_to_non_dp"] >= 0.5)


def _percent(label: str, value: float) -> float:
    return float(value) if "%" in label or abs(float(value)) > 1 else 100 * float(value)


def section_scale(r: Results, s: Section) -> None:
    data = r.get("scale.json")
    if data is None:
        s.lines.append(f"Cost against records (1k, 10k, 50k) and sites (2, 5, 10, 20): {NOT_YET}.\n")
        s.target("10-site simulation framework overhead", NOT_YET, "< 25% of round time (10 sites)", None)
        return
    recs = data.get("records", [])
    if recs:
        phases = [p for p in ("synth", "cache", "epoch") if p in recs[0]]
        s.lines += grid("records", ["synthesis (s)", "cache build (s)", "cache on disk (MB)",
                                    "pretraining epoch (s, extrapolated)", "peak RSS, max over phases (MB)"],
                        [(f"{row['records']:,}", [row["synth"]["seconds"], row["cache"]["seconds"], row["cache"]["disk_mb"],
                                                 row["epoch"]["epoch_seconds"],
                                                 max(row[p]["peak_rss_mb"] for p in phases)]) for row in recs])
    rows = [(f"{row['sites']} sites{' DP' if row.get('dp') else ''}, simulation", row) for row in data.get("sites", [])]
    for key, label in (("deployment", "2 sites, deployment"),
                       ("deployment_object_concurrency", "2 sites, deployment, Flower object concurrency raised")):
        if data.get(key):
            rows.append((label, data[key]))
    if rows:
        s.lines += grid("federation", ["round wall (s)", "client compute, parallel (s)", "framework overhead (% of round)",
                                       "server RSS growth over rounds (MB)"],
                        [(label, [row["round_wall_s"], row["client_compute_parallel_s"],
                                  round(100 * row["overhead_share"], 1), row.get("server_rss_growth_mb")])
                         for label, row in rows])
        for label, row in rows:
            if row.get("sites") == 10 and not row.get("dp") and "simulation" in label:
                s.target("10-site simulation framework overhead (% of round)", f"{100 * row['overhead_share']:.1f}",
                         "< 25% of round time (10 sites)", row["overhead_share"] < 0.25)
    if data.get("overhead_definition"):
        s.lines.append(data["overhead_definition"] + "\n")


def section_deployment_round(r: Results, s: Section) -> None:
    data = r.get("deployment_round.json")
    if data is None:
        s.lines.append(f"A deployment round before and after: {NOT_YET}.\n")
        return
    rows = []
    for key in ("before", "after"):
        part, dep = data[key], data[key]["deployment"]
        rows.append((f"{key} ({part['commit']})", [dep["per_round"][0]["wall_s"], dep["round_wall_s"],
                                                  dep["client_compute_parallel_s"], round(100 * dep["overhead_share"], 1)]))
    s.lines += grid("2 sites, deployment", ["first round (s)", "steady round (s)", "client compute, parallel (s)",
                                            "framework overhead (% of round)"], rows)
    s.lines.append(f"What was measured: {data['what']}. Messages per site per round: "
                   f"{data['summary']['messages per site per round, before -> after']}. Before: "
                   f"`{data['before']['command']}` at {data['before']['commit']} (that commit's own benchmark).\n")
    after = data["after"]["deployment"]
    s.target("framework overhead of a steady 2-site deployment round", f"{100 * after['overhead_share']:.1f}%",
             "< 30% of the round", after["overhead_share"] < 0.30)
    s.target("first deployment round against a steady one", f"{after['per_round'][0]['wall_s'] / after['round_wall_s']:.2f}x",
             "within 2x", after["per_round"][0]["wall_s"] <= 2 * after["round_wall_s"])
    s.commands.append(data["after"]["command"])


def section_communication(r: Results, s: Section) -> None:
    data = r.get("communication.json")
    if data is None:
        s.lines.append(f"Bytes per site per round: {NOT_YET}.\n")
        s.target("compact model bytes sent per site per round", NOT_YET, "< 5 MB sent per site", None)
        return
    rows = []
    for profile, row in data["computed"].items():
        for leads in ("12L", "6L"):
            cells = []
            for dtype in ("float32", "float16"):
                b = row.get(f"{leads}/{dtype}")
                cells += ["–", "–"] if b is None else [f"{b['up'] / 1e6:.2f} / {b['down'] / 1e6:.2f}",
                                                       f"{b['up_probe'] / 1e6:.4f} / {b['down_probe'] / 1e6:.4f}"]
            rows.append((f"{profile}, {leads} site", cells))
            b = row.get(f"{leads}/float32")
            if profile == "compact" and b:
                s.target(f"compact model, {leads} site, float32: MB sent per round", f"{b['up'] / 1e6:.2f}",
                         "< 5 MB sent per site", b["up"] < 5e6)
    s.lines.append("MB per site per round, up / down (down: the round's one message, the train instruction; the last "
                   "model's evaluation broadcast adds one more down, once per job). Encoders "
                   "trained: every group the site trains (the default without DP); probe: fusion + heads only (the "
                   "default under DP), the frozen encoders sent once.\n")
    s.lines += grid("model, site", ["float32, encoders trained", "float32, probe", "float16, encoders trained",
                                    "float16, probe"], rows)
    runs = data.get("runs", [])
    if runs:
        s.lines.append("AUROC cost of float16 updates: same-seed pairs, float16 minus float32.\n")
        tasks = list(runs[0]["auroc_difference"])
        s.lines += grid("pair", [f"{t}" for t in tasks] + ["final weights apart (relative L2)", "fine-tuning moved them"],
                        [(p["label"], [f"{p['auroc_difference'][t]:+.4f}" for t in tasks]
                          + [f"{p.get('final_weights_relative_l2_gap', math.nan):.1e}",
                             f"{p.get('fine_tuning_relative_l2_change', math.nan):.1e}"]) for p in runs])


def section_membership(r: Results, s: Section) -> None:
    rows_attack, rows_utility, settings = [], [], []
    for name in s.sources:
        data = r.get(name)
        row_a, row_u = {}, {}
        for st in data.get("settings", []):
            if st["setting"] not in settings:
                settings.append(st["setting"])
            a = st["attack"]
            eps = f"; ledger epsilon {st['achieved_epsilon']:.2f}" if st.get("achieved_epsilon") else ""
            row_a[st["setting"]] = ci({"diff": a["auroc"], "ci95": a.get("auroc_ci95")}, signed=False) + eps
            row_u[st["setting"]] = fmt(st.get("held_out_auroc"), 2)
        rows_attack.append((data.get("data", name), row_a))
        rows_utility.append((data.get("data", name), row_u))
    if not s.sources:
        s.lines.append(f"Attack AUROC without and with DP: {NOT_YET}.\n")
        return
    s.lines.append("Attack AUROC [95% CI] (0.5 is chance; DP bounds TPR ≤ e^ε·FPR + δ):\n")
    s.lines += grid("site", settings, [(d, [row.get(x, "–") for x in settings]) for d, row in rows_attack])
    s.lines.append("Held-out AUROC of the attacked model (what the privacy costs):\n")
    s.lines += grid("site", settings, [(d, [row.get(x, "–") for x in settings]) for d, row in rows_utility])


def section_memory(r: Results, s: Section) -> None:
    data = r.get("memory_rounds.json")
    if data is None:
        s.lines.append(f"RSS per round (server, sites, SuperLink): {NOT_YET}.\n")
        s.target("memory over rounds", NOT_YET, "flat across rounds", None)
        return
    s.lines += grid("process", ["first (MB)", "last (MB)", "second-half slope (MB/round)"],
                    [(role, [v["first_mb"], v["last_mb"], v["second_half_slope_mb_per_round"]])
                     for role, v in data["summary"].items()])
    s.target(f"memory over {data.get('rounds')} rounds", fmt(data.get("flat")), "flat across rounds",
             bool(data.get("flat")))
    s.lines.append(f"Flat: {data.get('flat_rule', '')}.\n")


def section_formats(r: Results, s: Section) -> None:
    data = r.get("formats.json")
    if data is None:
        s.lines.append(f"Records per second per reader: {NOT_YET}.\n")
        return
    s.lines += grid("format", ["records/s", "ms per read", "leads x samples"],
                    [(row["format"], [row["records_per_s"], round(1000 * row["median_s"], 1),
                                      f"{row['leads']} x {row['samples']}"]) for row in data.get("speed", [])])


def section_external(r: Results, s: Section) -> None:
    if not s.sources:
        s.lines.append(f"Leave one source out (external - internal macro AUROC), per recipe: {NOT_YET}.\n")
        return
    s.lines.append("Macro AUROC of the model trained without the held-out source on that source (external) and on fold "
                   "10 of the training sites (internal), seed mean [95% CI]; gap = external - internal. Recipe minus "
                   "recipe columns are paired on the same records.\n")
    for name in s.sources:
        data = r.get(name)
        results, comparisons = data.get("results", {}), data.get("comparison", {})
        sources = list(dict.fromkeys(src for res in results.values() for src in res.get("folds", {})))
        rows = [(f"held out {src}", [_external_fold(res["folds"].get(src)) for res in results.values()]
                 + [ci(c.get(src)) for c in comparisons.values()]) for src in sources]
        rows.append(("mean over held-out sources: external, gap",
                     [f"{fmt(res.get('mean_external'))}, {ci({'diff': res['mean_gap']}) if 'mean_gap' in res else '–'}"
                      for res in results.values()] + ["–"] * len(comparisons)))
        rows.append(("PTB-XL fold 10 (every source trained)", [ci(res.get("fold10"), key="macro_auroc", signed=False)
                                                               for res in results.values()]
                     + [ci(c.get("ptb-xl fold 10")) for c in comparisons.values()]))
        s.lines.append(f"`results/{name}`: {data.get('protocol', '')}\n")
        s.lines += grid("source", [f"{recipe}: external / internal, gap" for recipe in results] + list(comparisons), rows)
        qc = data.get("scale_qc")
        if qc:
            s.lines.append(f"Scale QC on {qc['records']:,} real records: {qc['false_positive_rate_real']:.1%} flagged; "
                           "copies with a wrong gain caught: "
                           + ", ".join(f"{k} {v:.1%}" for k, v in qc.get("caught", {}).items()) + ".\n")
        if data.get("note"):
            s.lines.append(data["note"] + "\n")


def _external_fold(f: dict | None) -> str:
    if not f:
        return "–"
    return (f"{ci(f['external'], key='macro_auroc', signed=False)} / {f['internal']['macro_auroc']:.3f}, "
            f"gap {ci(f['gap'], key='mean')}")


def section_answered(r: Results, s: Section) -> None:
    """Exploratory experiments whose question is answered: one row each, the evidence kept in its file."""
    rows = []
    mv = r.get("model_variants.json")
    if mv:
        v = {k: x.get("vs_reference", {}) for k, x in mv.get("variants", {}).items()}
        best = sorted(v.items(), key=lambda kv: -kv[1].get("100%", 0))[:3]
        rows.append(("Which compact-profile defaults? (PTB-XL fold-9 validation, full fine-tuning, 2 seeds)",
                     "best changes vs the profile, macro AUROC at 100% / 10% labels: " + "; ".join(
                         f"{k} {d.get('100%', 0):+.3f} / {d.get('10%', 0):+.3f}" for k, d in best)
                     + f"; {len(v)} variants in all", "model_variants.json"))
    pv = r.get("pretraining_variants.json")
    if pv:
        rows.append(("Longer pretraining or a smaller KL weight?", pv.get("conclusion", ""), "pretraining_variants.json"))
    amp = r.get("privacy_utility_amplitude.json")
    if amp:
        parts = []
        for arm, run in amp.get("three_seed_runs", {}).items():
            au = {row["target_epsilon"]: row["auroc"] for row in run["settings"]}
            if 1.0 in au:
                parts.append(f"{arm}: " + ", ".join(f"{t} {a:.3f}" for t, a in au[1.0].items()) + " at ε 1")
        rows.append(("Millimetres or standardised leads, under DP? (real cohort, 3 seeds)", "; ".join(parts),
                     "privacy_utility_amplitude.json"))
    fa = r.get("federation_amplitude.json")
    if fa:
        rows.append(("Millimetres or standardised leads in a synthetic federation? (5 sites x 400, no DP, one "
                     "federated run)", "; ".join(f"{k}: {v}" for k, v in fa.get("summary", {}).items()),
                     "federation_amplitude.json"))
    fh = r.get("federation_leads_fused_heads.json")
    if fh:
        nodp, dp8 = fh.get("federated_no_dp", {}).get("auroc", {}), fh.get("federated_dp_eps8", {}).get("auroc", {})
        rows.append(("Federation heads on per-lead + fused means? (reverted)",
                     "without DP " + fmt(nodp) + "; at ε 8 " + fmt(dp8) + ": collapses under DP, fused-mean heads kept",
                     "federation_leads_fused_heads.json"))
    ps = r.get("pretrained_simulation.json")
    if ps:
        rows.append(("Does the shipped pretrained checkpoint carry a real federation? (`simulation/run.py --data real "
                     "--sites 4`, 5 DP rounds, epsilon 8)", "; ".join(
                         f"{run['checkpoint'].get('name') or run['checkpoint'].get('path')}: " + fmt(run["final_auroc"])
                         for run in ps.get("runs", [])), "pretrained_simulation.json"))
    sg = r.get("synthetic_generator.json")
    if sg:
        sep = sg.get("separability", {}).get("auroc", {})
        rows.append(("Are the synthetic labels learnable from ECG features? (logistic regression, 5-fold)", fmt(sep),
                     "synthetic_generator.json"))
    if rows:
        s.command_per_row = True
        s.lines += grid("question", ["answer", "evidence", "made by"],
                        [(q, [a, f"`results/{f}`", f"`{r.command(f)}`" if r.command(f) else "not recorded"])
                         for q, a, f in rows])
    else:
        s.lines.append(f"Exploratory experiments: {NOT_YET}.\n")


#: (title, results files read (names or globs), reader) in the README's order
SECTIONS: list[tuple[str, list[str], Callable[[Results, Section], None]]] = [
    ("Accuracy on real data (PTB-XL subset, 6 limb leads, 5 superclasses, fold 10)",
     ["ptbxl_accuracy.json", "pretrained_card.json"], section_accuracy),
    ("Federated vs pooled training (issue 20)", ["federation.json"], section_federated),
    ("Privacy-utility (federated, FedAvg)", ["privacy_utility.json"], section_privacy),
    ("What private evaluation costs (issue 14)", ["make_run.json", "private_evaluation.json"],
     section_private_evaluation),
    ("Speed on this machine", ["speed.json", "dp_throughput.json"], section_speed),
    ("Scale", ["scale.json"], section_scale),
    ("A deployment round, before and after the round moved into the library (issue 15)", ["deployment_round.json"],
     section_deployment_round),
    ("Communication", ["communication.json"], section_communication),
    ("Membership inference (loss-threshold attack on one site's fine-tuned model)", ["membership_inference*.json"],
     section_membership),
    ("Memory over rounds", ["memory_rounds.json"], section_memory),
    ("Reading hospital formats", ["formats.json"], section_formats),
    ("External validity: leave one source out (PTB-XL sites, LUDB)", ["external.json", "external_*.json"],
     section_external),
    ("Answered questions (exploratory experiments, kept as evidence)",
     ["model_variants.json", "pretraining_variants.json", "privacy_utility_amplitude.json", "federation_amplitude.json",
      "federation_leads_fused_heads.json", "pretrained_simulation.json", "synthetic_generator.json"], section_answered),
]


def flat_summary(data: dict) -> dict[str, Any]:
    """The file's summary as flat {label: value} (one nested level is joined into the label)."""
    out = {}
    for label, value in (data.get("summary") or {}).items():
        if isinstance(value, dict):
            out.update({f"{label} {k}": v for k, v in value.items()})
        else:
            out[label] = value
    return out


# ----------------------------------------------------------------------------- plots and machines

def privacy_plot(r: Results, out_dir: Path) -> str | None:
    """The privacy-utility figure: the benchmark's own PNG if it wrote one, else drawn here from its cohorts."""
    own = out_dir / "privacy_utility_summary.png"
    theirs = r.folder / "privacy_utility.png"
    if theirs.is_file():
        own.unlink(missing_ok=True)
        return os.path.relpath(theirs, out_dir)
    data = r.files.get("privacy_utility.json") or {}
    curves = {}
    for key, c in data.items():
        if isinstance(c, dict) and "settings" in c:
            for t in c.get("tasks", []):
                pts = [(max(row["epsilon"].values()) if row.get("epsilon") else math.inf, row["auroc"][t])
                       for row in c["settings"] if t in row.get("auroc", {})]
                curves[f"{key} {t}"] = sorted(pts)
    curves = {k: v for k, v in curves.items() if len(v) >= 2}
    if not curves:
        own.unlink(missing_ok=True)   # never leave a figure of data that is gone
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, pts) in enumerate(curves.items()):
        finite = [(x, y) for x, y in pts if math.isfinite(x)]
        if finite:
            ax.plot(*zip(*finite), "o-", color=f"C{i}", label=name)
        for x, y in pts:
            if not math.isfinite(x):
                ax.axhline(y, color=f"C{i}", ls="--", lw=1, label=f"{name}, no DP")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (max over sites, ledger)")
    ax.set_ylabel("AUROC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(own, dpi=120)
    plt.close(fig)
    return own.name


MACHINE_FIELDS = {
    "arch": r"\b(x86_64|aarch64|arm64)\b",
    "cores": r"\b(\d+) (?:cores|CPUs)\b|\bcpus (\d+)\b",
    "python": r"\b[Pp]ython (\d+\.\d+\.\d+)\b",
    "torch": r"\btorch (\d+\.\d+\.\d+\+?\w*)",
}


def machine_line(r: Results) -> str:
    """One line for every results file: the fields they agree on (load varies per run and stays in the files)."""
    values: dict[str, set[str]] = {k: set() for k in MACHINE_FIELDS}
    unknown = []
    for name, data in r.files.items():
        m = data.get("machine")
        if not m:
            unknown.append(name)
            continue
        text = m if isinstance(m, str) else ", ".join(f"{k} {v}" for k, v in m.items())
        for key, pattern in MACHINE_FIELDS.items():
            hit = re.search(pattern, text)
            if hit:
                values[key].add(next(g for g in hit.groups() if g))
    parts = {"arch": "{}", "cores": "{} cores shared with other jobs", "python": "Python {}", "torch": "torch {}"}
    line = ", ".join(parts[k].format(" or ".join(sorted(v))) for k, v in values.items() if v)
    if unknown:
        line += f" (not recorded in {', '.join(f'`{n}`' for n in sorted(unknown))})"
    return line or "not recorded"


# ----------------------------------------------------------------------------- README

def render(r: Results, out_dir: Path = BENCH) -> str:
    sections = []
    for title, sources, reader in SECTIONS:
        s = Section(title, r.matching(sources))
        try:
            reader(r, s)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:   # a schema its reader predates
            s.lines = [f"This section could not be read: {type(err).__name__}: {err}. Its results file changed schema; "
                       f"update `{reader.__name__}` in benchmarks/summarise.py.", ""]
            s.targets = []
        sections.append(s)
    pu_plot = privacy_plot(r, out_dir)
    out = ["# Benchmarks", "",
           "Generated by `make benchmarks-summary` (`python -m benchmarks.summarise`) from `benchmarks/results/*.json`; do "
           "not edit by hand. Every benchmark is a module run from the repository root (`python -m benchmarks.<name> "
           "--help`); each section names the commands behind its numbers. Timings come from shared machines: "
           "ratios measured in the same run are the steadier figures.", "",
           f"Machine: {machine_line(r)}.", "", "## Targets", ""]
    rows = [(what, [value, target, verdict(met), f"[{i}](#{anchor(i, s.title)})"])
            for i, s in enumerate(sections, 1) for what, value, target, met in s.targets]
    out += grid("measurement", ["value", "target", "met?", "section"], rows)
    for i, s in enumerate(sections, 1):
        out += [f"## {i}. {s.title}", ""]
        commands = [current(c) for c in s.commands] or [c for f in s.sources if (c := r.command(f))]
        if commands and not s.command_per_row:
            out += ["Command" + ("s" if len(commands) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in commands), ""]
        stale = [f"`results/{f}`: {STALE[f]}" for f in s.sources if f in STALE]
        if stale:
            out += ["**Stale**: " + "; ".join(stale) + ".", ""]
        out += s.lines
        if s.title.startswith("Privacy-utility") and pu_plot:
            out += [f"![privacy-utility]({pu_plot})", ""]
    other = sorted(set(r.files) - r.used)
    if other:
        out += ["Other results files (no section reads them): " + ", ".join(f"`{n}`" for n in other), ""]
    if r.errors:
        out += ["Unreadable results files: " + "; ".join(f"`{k}`: {v}" for k, v in r.errors.items()), ""]
    return "\n".join(out)


def anchor(number: int, title: str) -> str:
    """GitHub's anchor of a ``## {number}. {title}`` heading."""
    text = f"{number}. {title}".lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.summarise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of results JSON (default benchmarks/results)")
    p.add_argument("--out", type=Path, default=BENCH, help="folder for README.md and plots (default benchmarks/)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text(render(Results(args.results), args.out))
    print(f"wrote {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
