"""The federated report as a reader meets it: what it says when a figure has nothing to show, gates by lead
set, epsilon drops flagged, the checkpoint named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lsemvae.federation.private_eval import pooled, task_histogram
from server.report import _gates, _nothing_to_score, write_report


def _row(r: int, *, auroc: float | None) -> dict:
    rng = np.random.default_rng(r)
    y = rng.integers(0, 2, 200).astype(float)
    hist = pooled([task_histogram(y[:, None], rng.uniform(size=(200, 1)), ["right_heart"], bins=20, min_cell=10)])
    return {"round": r, "seconds": 10.0, "sites_trained": 3, "eval_loss": 0.6, "epsilon_max": 1.0 * r,
            "auroc": {"right_heart": auroc}, "pooled_histograms": {"right_heart": hist},
            "site_histograms": {"right_heart": {"a": hist}},
            "train": {s: {"epsilon": 1.0 * r, "epsilon_budget": 8.0, "num_examples": 100} for s in "abc"},
            "epsilon": {s: 1.0 * r for s in "abc"},
            "eval": {"a": {"gates": {"limb": 0.25, "augmented": 0.25, "septal": 0.25, "lateral": 0.25}, "leads": 12,
                           "num_examples": 50, "auroc": {}},
                     "b": {"gates": {"limb": 0.3, "augmented": 0.2, "septal": 0.3, "lateral": 0.2}, "leads": 12,
                           "num_examples": 50, "auroc": {}},
                     "c": {"gates": {"limb": 0.5, "augmented": 0.5, "septal": 0.0, "lateral": 0.0}, "leads": 6,
                           "num_examples": 50, "auroc": {}}},
            "failures": []}


def test_a_figure_with_nothing_to_show_says_why():
    assert "no site could evaluate" in _nothing_to_score(None)
    only_negatives = {"pos": [[0.0] * 10], "neg": [[3.0] * 10]}
    assert "0 positives and 30 negatives" in _nothing_to_score(only_negatives)
    assert _nothing_to_score({"pos": [[1.0] * 10], "neg": [[3.0] * 10]}) is None


def test_gates_are_never_averaged_across_lead_sets():
    gates = _gates(_row(1, auroc=0.7))
    assert set(gates) == {"a", "b", "c", "all 12-lead sites"}        # one 6-lead site: no 6-lead mean to draw
    assert gates["all 12-lead sites"]["limb"] == pytest.approx(0.275) and gates["all 12-lead sites"]["septal"] > 0


def test_the_report_names_its_checkpoint_flags_a_falling_epsilon_and_draws_every_figure(tmp_path):
    rows = [_row(1, auroc=0.6), _row(2, auroc=0.7)]
    rows[1]["epsilon_decreased"] = {"c": {"before": 2.5, "now": 0.3}}
    md = write_report(tmp_path, rows, status="completed",
                      checkpoint={"name": "compact-ptbxl-ludb", "sha256": "ab" * 32, "pretrained_on": "PTB-XL + LUDB"})
    text = md.read_text()
    assert "Started from the pretrained checkpoint compact-ptbxl-ludb" in text and "went DOWN" in text
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["epsilon_decreased"] == {"2": {"c": {"before": 2.5, "now": 0.3}}}
    assert summary["gates"]["all 12-lead sites"]["limb"] == pytest.approx(0.275)
    for figure in ("loss", "auroc", "epsilon", "roc_right_heart", "calibration_right_heart", "gates"):
        assert (tmp_path / "report" / f"{figure}.png").stat().st_size > 5000, figure
        assert f"({figure}.png)" in text
