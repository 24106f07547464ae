"""The report writes JSON, Markdown and a self-contained HTML with its figures embedded."""

from __future__ import annotations

import json

import numpy as np

from lsemvae.train import metrics, report


def _results(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.4).astype(float)
    p = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(size=y.shape))))
    summary = metrics.summarize(y, p, y, p, ["NORM", "MI", "CD"], n_boot=50)
    results = {
        "title": "test report",
        "tasks": {"superclass": summary},
        "provenance": {"cache_key": "abc123", "pipeline_version": "pp-1"},
        "config": {"leads": "6L"},
        "gates": {"superclass": {"groups": ["limb", "augmented"], "mean": [0.6, 0.4],
                                 "per_class": {"NORM": [0.7, 0.3], "MI": [0.5, 0.5]}}},
        "lead_shares": {"superclass": {"leads": ["I", "II"], "overall": [0.3, 0.7], "per_class": {"MI": [0.2, 0.8]}}},
        "lead_ablation": {"superclass": {"full": 0.8, "drop": {"I": {"macro_auroc": 0.78, "delta": -0.02}}}},
    }
    return results, {"superclass": (y, p)}


def test_report_writes_all_files_and_embeds_images(tmp_path):
    results, preds = _results(tmp_path)
    paths = report.write_report(tmp_path / "rep", results, predictions=preds)
    html = paths["html"].read_text()
    pngs = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert {p.stem for p in pngs} == {"roc_superclass", "calibration_superclass", "gates_superclass",
                                      "lead_shares_superclass", "lead_ablation_superclass"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert html.count("data:image/png;base64,") == len(pngs)
    assert "abc123" in html and "pp-1" in paths["md"].read_text()
    md = paths["md"].read_text()
    assert "| **macro** |" in md and "figures/roc_superclass.png" in md
    assert "| MI (n=?) | 0.200 | 0.800 |" in md and "| NORM positives | 0.700 | 0.300 |" in md
    assert json.loads(paths["json"].read_text())["tasks"]["superclass"]["classes"] == ["NORM", "MI", "CD"]


def test_plot_helpers_write_pngs(tmp_path):
    s = report.plot_series({"site-a": ([1, 2, 3], [0.7, 0.75, None]), "site-b": ([1, 2, 3], [0.6, 0.7, 0.8])},
                           tmp_path / "auroc.png", title="AUROC over rounds", ylabel="AUROC")
    b = report.plot_bar({"limb": 0.7, "augmented": 0.3}, tmp_path / "g.png", title="gates")
    assert s.stat().st_size > 1000 and b.stat().st_size > 1000
