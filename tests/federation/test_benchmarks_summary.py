"""benchmarks/summarise.py: missing results are "not yet measured" lines and target rows, results become grids with
target verdicts, the command (as it runs today) once per section and one machine line; a broken or re-shaped results
file costs only its own section. Also the harness' paired statistics the federation grid is built from."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import harness, summarise


def _section(readme: str, title: str) -> str:
    start = readme.index(title)
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


def _rows(text: str) -> dict[str, str]:
    return {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}


def test_no_results_gives_a_not_yet_measured_line_per_section_and_target_rows(tmp_path):
    (tmp_path / "results").mkdir()
    assert summarise.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    for title, _, _ in summarise.SECTIONS:
        assert "not yet measured" in _section(readme, f". {title}"), title
    targets = _rows(_section(readme, "## Targets"))
    for what, target in (("federated (no DP) vs pooled, every task", "within 0.02 of pooled"),
                         ("DP / non-DP throughput, site round", "≥ 50% of non-DP"),
                         ("data loading share of training wall time", "< 10% of wall time"),
                         ("10-site simulation framework overhead", "< 25% of round time (10 sites)"),
                         ("compact model bytes sent per site per round", "< 5 MB sent per site"),
                         ("memory over rounds", "flat across rounds"),
                         ("LS-EMVAE full fine-tuning, 100% labels, macro AUROC", "≥ 0.90")):
        assert f"| {what} | not yet measured | {target} |" in targets[what]
    assert "≈ 0.93" in readme                       # the published PTB-XL reference is always there
    assert not (tmp_path / "privacy_utility_summary.png").exists()


def test_results_become_grids_with_verdicts_today_s_command_one_machine_line_and_a_plot(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "speed.json").write_text(json.dumps({
        "summary": {"data loading share, pretraining (%)": 4.2, "DP / non-DP throughput, site round (ratio)": 0.45,
                    "inference batch 1, median (ms/ECG)": 12.5},
        "command": "python benchmarks/speed.py --quick", "machine": {"machine": "x86_64", "cpus": 2}}))
    site = {"round_wall_s": 10.0, "client_compute_parallel_s": 6.9, "server_rss_growth_mb": 1.0}
    (res / "scale.json").write_text(json.dumps({
        "sites": [{"sites": 10, "dp": False, "overhead_share": 0.31, **site},
                  {"sites": 20, "dp": False, "overhead_share": 0.10, **site}],
        "command": "python -m benchmarks.scale", "machine": "x86_64, 2 cores (shared; load 3.0, 2.0, 1.0)"}))
    (res / "privacy_utility.json").write_text(json.dumps({"synthetic": {
        "data": "synthetic", "tasks": ["right_heart"], "rounds": 1, "command": "python -m benchmarks.privacy_utility",
        "settings": [{"setting": "no DP", "target_epsilon": None, "auroc": {"right_heart": 0.85}},
                     {"setting": "epsilon 1", "target_epsilon": 1, "auroc": {"right_heart": 0.7}, "epsilon": {"a": 0.99}},
                     {"setting": "epsilon 8", "target_epsilon": 8, "auroc": {"right_heart": 0.8}, "epsilon": {"a": 7.9}}]}}))
    (res / "broken.json").write_text("{not json")
    summarise.main(["--results", str(res), "--out", str(tmp_path)])
    readme = (tmp_path / "README.md").read_text()
    speed = _section(readme, ". Speed")
    assert "Command: `python -m benchmarks.speed --quick`" in speed and speed.count("Command") == 1
    rows = _rows(speed)
    assert rows["inference batch 1, median (ms/ECG)"].endswith("| 12.500 |")
    targets = _rows(_section(readme, "## Targets"))
    assert "< 10% of wall time | **met**" in targets["data loading share, pretraining (%)"]
    assert "≥ 50% of non-DP | **not met**" in targets["DP / non-DP throughput, site round (ratio)"]
    assert "< 25% of round time (10 sites) | **not met**" in targets["10-site simulation framework overhead (% of round)"]
    assert not any("20 sites" in k for k in targets)                      # the target is about 10 sites
    assert "31.0" in _rows(_section(readme, ". Scale"))["10 sites, simulation"]
    machine = [line for line in readme.splitlines() if line.startswith("Machine: ")]
    assert machine == ["Machine: x86_64, 2 cores shared with other jobs (not recorded in `privacy_utility.json`)."]
    assert "`broken.json`" in readme                                             # reported, not a crash
    pu = _rows(_section(readme, ". Privacy-utility"))
    assert "| 0.700 | 0.990 |" in pu["epsilon 1"]
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
    assert "could not be read: AttributeError" in _section(readme, ". Memory")
    assert "0.800 [0.700, 0.900]" in _section(readme, ". Accuracy")


def test_federation_grid_targets_decomposition_and_stale_flags(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    d = {"diff": -0.031, "ci95": [-0.05, -0.01], "per_seed": [-0.03, -0.032, -0.031], "a": 0.70, "b": 0.731}
    ok = {"diff": 0.004, "ci95": [-0.01, 0.02], "per_seed": [0.0, 0.01, 0.002], "a": 0.96, "b": 0.956}
    (res / "federation.json").write_text(json.dumps({
        "command": "python -m benchmarks.federation --only main", "machine": "x86_64, 2 cores",
        "experiments": {"main": {"rounds": 5, "local_epochs": 1, "records_per_site": 1000, "comparisons": [
            {"label": "synthetic: FedAvg - pooled", "tasks": {"right_heart": ok, "left_atrial": d}}]}},
        "decomposition": [{"factor": "site heterogeneity", "effect": False, "tasks": {
            "left_atrial": {"gap": -0.02, "natural_gap": -0.031, "change": {**ok, "diff": 0.011}}}}]}))
    (res / "scale.json").write_text(json.dumps({"machine": "x86_64, 2 cores", "command": "python -m benchmarks.scale"}))
    summarise.main(["--results", str(res), "--out", str(tmp_path)])
    readme = (tmp_path / "README.md").read_text()
    fed = _section(readme, ". Federated vs pooled")
    row = _rows(fed)["synthetic: FedAvg - pooled (main)"]
    assert "-0.031 [-0.050, -0.010] (0.700 / 0.731)" in row and "+0.004 [-0.010, +0.020]" in row
    assert "+0.011 [-0.010, +0.020] (-0.020)" in _rows(fed)["site heterogeneity"]
    targets = _rows(_section(readme, "## Targets"))
    assert "**not met**" in targets["synthetic: FedAvg - pooled: left_atrial (no DP, 3 seeds)"]
    assert "**met**" in targets["synthetic: FedAvg - pooled: right_heart (no DP, 3 seeds)"]
    assert "**Stale**: `results/scale.json`" in _section(readme, ". Scale")


def test_paired_contrasts_resample_records_and_seeds():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 1)) < 0.3).astype(float)
    good = [y + rng.normal(0, 0.6, y.shape) for _ in range(3)]
    bad = [y + rng.normal(0, 1.5, y.shape) for _ in range(3)]
    d = harness.paired_difference(y, good, bad, n_boot=200)
    assert d["diff"] > 0.05 and d["ci95"][0] > 0 and len(d["per_seed"]) == 3
    assert abs(d["a"] - d["b"] - d["diff"]) < 1e-12
    same = harness.paired_difference(y, good, good, n_boot=50)
    assert same["diff"] == 0 and same["ci95"] == [0.0, 0.0]
    # a difference of differences: (good - bad) - (good - bad) is exactly 0; (good - bad) - (bad - bad) is d
    assert abs(harness.contrast(y, [good, bad], [bad, good], n_boot=50)["diff"]) < 1e-12
    assert abs(harness.contrast(y, [good, bad], [bad, bad], n_boot=200)["diff"] - d["diff"]) < 1e-12


def test_membership_files_found_by_pattern_flagged_stale_and_make_run_beside_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(summarise, "STALE", {"membership_inference_ptbxl.json": "ran before X; rerun `Y`"})
    res = tmp_path / "results"
    res.mkdir()
    attack = {"auroc": 0.78, "auroc_ci95": [0.72, 0.84]}
    for name, data in (("membership_inference.json", "synthetic site"), ("membership_inference_ptbxl.json", "ptbxl")):
        (res / name).write_text(json.dumps({
            "data": data, "command": f"python benchmarks/membership_inference.py --out {name}",
            "settings": [{"setting": "no DP", "attack": attack, "held_out_auroc": {"right_heart": 0.8}}]}))
    (res / "make_run.json").write_text(json.dumps({"command": "python -m benchmarks.make_run --label d", "entries": {
        "d": {"simulation_args": [], "private_auroc": {"right_heart": 0.974}, "exact_auroc": {"right_heart": 0.877},
              "epsilon_max": 7.99}}}))
    summarise.main(["--results", str(res), "--out", str(tmp_path)])
    readme = (tmp_path / "README.md").read_text()
    mia = _section(readme, ". Membership inference")
    attacks = _rows(mia.split("Held-out AUROC")[0])
    assert "0.780 [0.720, 0.840]" in attacks["synthetic site"] and "ptbxl" in attacks
    assert "`python -m benchmarks.membership_inference --out membership_inference_ptbxl.json`" in mia
    assert "**Stale**: `results/membership_inference_ptbxl.json`: ran before X; rerun `Y`." in mia   # found by pattern
    assert "`results/membership_inference.json`:" not in mia
    private = _section(readme, ". What private evaluation costs")
    assert "| 0.974 / 0.877 | 7.990 |" in _rows(private)["d (defaults)"]
    assert "Other results files" not in readme                       # every file has its section


def test_external_validity_grid_per_file_with_paired_recipe_columns(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    fold = {"internal": {"macro_auroc": 0.809}, "external": {"macro_auroc": 0.8, "ci": [0.78, 0.821]},
            "gap": {"mean": -0.009, "ci": [-0.065, 0.058]}}
    recipe = {"folds": {"ludb": fold}, "mean_external": 0.8, "mean_gap": -0.009,
              "fold10": {"macro_auroc": 0.882, "ci": [0.851, 0.91]}}
    for name in ("external.json", "external_recipes_seed0.json"):
        (res / name).write_text(json.dumps({
            "command": f"python benchmarks/external.py --out {name}", "protocol": "leave one source out",
            "results": {"baseline": recipe, "hospital": recipe},
            "comparison": {"hospital - baseline": {"ludb": {"diff": -0.003, "ci": [-0.009, 0.004]}}}}))
    summarise.main(["--results", str(res), "--out", str(tmp_path)])
    ext = _section((tmp_path / "README.md").read_text(), ". External validity")
    assert ext.count("| held out ludb | 0.800 [0.780, 0.821] / 0.809, gap -0.009 [-0.065, +0.058] | 0.800") == 2
    assert "| -0.003 [-0.009, +0.004] |" in _rows(ext)["held out ludb"]
    assert "`python -m benchmarks.external --out external_recipes_seed0.json`" in ext
