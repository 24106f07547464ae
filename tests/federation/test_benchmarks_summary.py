"""benchmarks/summarise.py: missing results are "not yet measured" rows, summary dicts become rows with target
verdicts, curves become a plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import summarise  # noqa: E402


def _section(readme: str, title: str) -> str:
    start = readme.index(f"## {title}")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


def test_no_results_gives_a_not_yet_measured_row_per_section(tmp_path):
    (tmp_path / "results").mkdir()
    assert summarise.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    for title, _ in summarise.SECTIONS:
        assert "not yet measured" in _section(readme, title), title
    targets = _section(readme, "Targets")
    for what, target, _ in summarise.REQUIRED_TARGETS:                  # every issue-5 target has its row
        assert f"| {what} | not yet measured | {target} |" in targets
    assert "≈ 0.93" in readme                       # the published PTB-XL reference is always there
    assert not (tmp_path / "privacy_utility_summary.png").exists()


def test_summary_rows_get_target_verdicts_command_machine_and_curves_a_plot(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "speed.json").write_text(json.dumps({
        "summary": {"data loading share, pretraining (%)": 4.2, "DP / non-DP throughput, site round (ratio)": 0.45,
                    "inference batch 1, median (ms/ECG)": 12.5},
        "command": "python benchmarks/speed.py --quick", "machine": {"machine": "x86_64", "cpus": 2}}))
    (res / "scale.json").write_text(json.dumps({"summary": {"10 sites: framework overhead (% of round)": 31.0,
                                                            "20 sites: framework overhead (% of round)": 10.0},
                                                "command": "python benchmarks/scale.py", "machine": "box"}))
    (res / "privacy_utility.json").write_text(json.dumps({
        "summary": {"AUROC at epsilon 1": 0.7},
        "synthetic": [{"epsilon": e, "auroc": {"right_heart": a}} for e, a in ((1, 0.7), (8, 0.8), (None, 0.85))]}))
    (res / "broken.json").write_text("{not json")
    summarise.main(["--results", str(res), "--out", str(tmp_path)])
    readme = (tmp_path / "README.md").read_text()
    speed = _section(readme, "4. Speed")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in speed.splitlines() if line.startswith("| ")}
    assert "< 10% of wall time: **met**" in rows["data loading share, pretraining (%)"]
    assert "≥ 50% of non-DP: **not met**" in rows["DP / non-DP throughput, site round (ratio)"]
    assert "`python benchmarks/speed.py --quick`" in rows["inference batch 1, median (ms/ECG)"]
    scale = {line.split(" | ")[0].lstrip("| "): line for line in _section(readme, "5. Scale").splitlines()}
    assert "< 25% of round time (10 sites): **not met**" in scale["10 sites: framework overhead (% of round)"]
    assert "met" not in scale["20 sites: framework overhead (% of round)"]     # the target is about 10 sites
    assert "x86_64, cpus 2" in readme and "box" in readme                       # machines listed once, by key
    assert "**not met**" in _section(readme, "Targets")
    assert "`broken.json`" in readme                                             # reported, not a crash
    assert (tmp_path / "privacy_utility_summary.png").stat().st_size > 1000
    assert "![privacy-utility](privacy_utility_summary.png)" in readme


def test_a_results_file_in_an_unknown_schema_costs_only_its_own_section(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "memory_rounds.json").write_text(json.dumps({"summary": ["a list, not a dict"]}))
    (res / "ptbxl_accuracy.json").write_text(json.dumps({"results": [
        {"method": "cnn", "label_fraction": 1.0, "n_train": 10, "test_macro_auroc_mean": 0.8, "test_ci": [0.7, 0.9]}]}))
    summarise.main(["--results", str(res), "--out", str(tmp_path)])
    readme = (tmp_path / "README.md").read_text()
    assert "could not be read: AttributeError" in _section(readme, "8. Memory")
    assert "0.800 [0.700, 0.900]" in _section(readme, "1. Accuracy")
