"""Metrics against sklearn and closed forms; federated histogram evaluation against pooled raw scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, matthews_corrcoef, roc_auc_score

from lsemvae.errors import LSEMVAEError
from lsemvae.train import metrics as M


def _sample(n=300, c=3, seed=0, sep=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < np.array([0.5, 0.3, 0.1])[:c]).astype(float)
    logit = sep * (2 * y - 1) + rng.normal(size=(n, c))
    return y, 1 / (1 + np.exp(-logit))


def test_auroc_auprc_match_sklearn_including_ties_and_nan():
    y, s = _sample()
    s = np.round(s, 2)  # many ties
    y[:20, 1] = np.nan
    au, ap = M.auroc(y, s), M.auprc(y, s)
    for c in range(3):
        ok = ~np.isnan(y[:, c])
        assert au[c] == pytest.approx(roc_auc_score(y[ok, c], s[ok, c]), abs=1e-12)
        assert ap[c] == pytest.approx(average_precision_score(y[ok, c], s[ok, c]), abs=1e-12)


def test_closed_forms_perfect_reversed_single_class():
    y = np.array([0, 0, 1, 1.0])
    assert M.auroc(y, [0.1, 0.2, 0.8, 0.9])[0] == 1.0
    assert M.auroc(y, [0.9, 0.8, 0.2, 0.1])[0] == 0.0
    assert M.auroc(y, [0.5, 0.5, 0.5, 0.5])[0] == 0.5
    assert np.isnan(M.auroc([1, 1, 1.0], [0.1, 0.2, 0.3])[0])


def test_bootstrap_ci_contains_point_deterministic_and_counts_skips():
    y, s = _sample(n=200)
    a = M.bootstrap_auroc(y, s, ["a", "b", "c"], n_boot=300, seed=7)
    b = M.bootstrap_auroc(y, s, ["a", "b", "c"], n_boot=300, seed=7)
    assert a == b
    lo, hi = a["macro"]["auroc_ci"]
    assert lo < a["macro"]["auroc"] < hi
    for v in a["per_class"].values():
        assert v["auroc_ci"][0] <= v["auroc"] <= v["auroc_ci"][1]
    assert M.bootstrap_auroc(y, s, n_boot=300, seed=8)["macro"]["auroc_ci"] != [lo, hi]
    # tiny sample with one positive, unstratified: many resamples lose it and are skipped, and counted
    yb = np.array([1, 0, 0, 0, 0, 0, 0, 0.0])
    r = M.bootstrap_auroc(yb, np.linspace(1, 0, 8), n_boot=200, seed=0, stratified=False)
    assert r["bootstrap"]["n_skipped"] > 0
    assert r["bootstrap"]["n_used"] + r["bootstrap"]["n_skipped"] == 200
    # stratified keeps both classes in every resample
    assert M.bootstrap_auroc(yb, np.linspace(1, 0, 8), n_boot=200, seed=0)["bootstrap"]["n_skipped"] == 0


def test_paired_bootstrap_detects_a_better_method_and_null_is_zero():
    y, good = _sample(n=300, sep=1.5, seed=1)
    _, bad = _sample(n=300, sep=0.2, seed=2)
    bad = np.where(np.isnan(bad), 0.5, bad)
    r = M.paired_bootstrap(y, good, bad, n_boot=300)
    assert r["macro"]["diff"] > 0 and r["macro"]["ci"][0] > 0 and r["macro"]["p_value"] < 0.01
    same = M.paired_bootstrap(y, good, good, n_boot=100)
    assert same["macro"]["diff"] == 0 and same["macro"]["ci"] == [0.0, 0.0]


def test_threshold_on_validation_and_confusion_metrics_match_sklearn():
    yv, sv = _sample(n=400, c=1, seed=3)
    yt, st = _sample(n=400, c=1, seed=4)
    thr, src = M.choose_threshold(yv, sv)
    assert src == "youden"
    # Youden threshold maximises J on validation among all candidate thresholds
    def j(t):
        m = M.threshold_metrics(yv, sv, t)
        return m["sensitivity"] + m["specificity"] - 1
    assert all(j(thr) >= j(t) - 1e-12 for t in np.unique(sv))
    thr_s, _ = M.choose_threshold(yv, sv, method="sensitivity", target_sensitivity=0.9)
    assert M.threshold_metrics(yv, sv, thr_s)["sensitivity"] >= 0.9
    m = M.threshold_metrics(yt, st, thr)
    pred = (st[:, 0] >= thr).astype(int)
    assert m["f1"] == pytest.approx(f1_score(yt[:, 0], pred))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(yt[:, 0], pred))
    assert M.choose_threshold([1, 1.0], [0.2, 0.3]) == (0.5, "fallback-0.5")


def test_calibration_closed_forms():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(float)  # perfectly calibrated by construction
    cal = M.calibration(y, p)
    assert cal["ece"] < 0.01
    assert cal["brier"] == pytest.approx(1 / 6, abs=0.005)  # E[p(1-p)] for p ~ U(0,1)
    over = M.calibration(y, np.clip(p + 0.2, 0, 1))
    assert over["ece"] > 0.1
    with pytest.raises(LSEMVAEError, match="probabilities"):
        M.calibration(y[:3], [2.0, 0.1, 0.1])


def test_summarize_is_json_ready_and_complete():
    y, s = _sample(n=200)
    yv, sv = _sample(n=200, seed=5)
    y[:5] = np.nan
    out = M.summarize(y, s, yv, sv, ["NORM", "MI", "CD"], n_boot=100)
    back = json.loads(json.dumps(out))
    assert back["classes"] == ["NORM", "MI", "CD"] and back["n"] == 195
    for key in ("auroc", "auroc_ci", "auprc", "f1", "mcc", "sensitivity", "specificity", "ece", "brier"):
        assert key in back["macro"]
    assert back["per_class"]["MI"]["auroc"] == pytest.approx(roc_auc_score(y[5:, 1], s[5:, 1]))
    mc = M.summarize(np.eye(3)[[0, 1, 2, 0]], np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.05, None, None,
                     n_boot=20, multiclass=True)
    assert mc["top1_accuracy"] == 0.75 and mc["threshold_method"] == "fixed-0.5"


def test_histogram_auroc_matches_pooled_sklearn_within_derived_bound():
    """Three sites' histograms, merged, give the pooled AUROC within 0.5*sum_b P_b N_b/(P N)."""
    sites = [_sample(n=n, seed=k, sep=0.3 + 0.4 * k) for k, n in enumerate((150, 400, 90))]
    hists = [M.score_histograms(y, s, class_names=list("abc")) for y, s in sites]
    pooled = M.auroc_from_histograms(M.merge_histograms(hists))
    y_all = np.concatenate([y for y, _ in sites])
    s_all = np.concatenate([s for _, s in sites])
    for c, name in enumerate("abc"):
        exact = roc_auc_score(y_all[:, c], s_all[:, c])
        got = pooled["per_class"][name]
        assert abs(got["auroc"] - exact) <= got["max_error"] + 1e-12
        # the bound itself is small at 1000 bins: 0.5*h*integral f+ f- with h=0.001
        assert got["max_error"] < 2e-3
    # scores exactly on bin centres (no within-bin ties between classes): exact
    y = np.array([0, 1, 0, 1, 1.0])
    s = np.array([0.1005, 0.7005, 0.3005, 0.2005, 0.9005])
    h = M.score_histograms(y, s)
    assert M.auroc_from_histograms(h)["per_class"]["class_0"]["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-15)


def test_merge_is_associative_and_checks_bins():
    hs = [M.score_histograms(*_sample(n=50 + 10 * k, seed=k)) for k in range(3)]
    left = M.merge_histograms([M.merge_histograms(hs[:2]), hs[2]])
    right = M.merge_histograms([hs[0], M.merge_histograms(hs[1:])])
    flat = M.merge_histograms(hs)
    assert left["pos"] == right["pos"] == flat["pos"] and left["neg"] == right["neg"]
    np.testing.assert_allclose(left["pos_sum"], right["pos_sum"], rtol=1e-12)
    with pytest.raises(LSEMVAEError, match="bin edges"):
        M.merge_histograms([hs[0], M.score_histograms(*_sample(n=20), bins=10)])


def test_calibration_from_histograms_equals_raw():
    sites = [_sample(n=n, seed=k) for k, n in enumerate((120, 300))]
    merged = M.merge_histograms([M.score_histograms(y, s) for y, s in sites])
    cal = M.calibration_from_histograms(merged)
    y_all = np.concatenate([y for y, _ in sites])
    s_all = np.concatenate([s for _, s in sites])
    for c in range(3):
        raw = M.calibration(y_all[:, c], s_all[:, c])
        got = cal["per_class"][f"class_{c}"]
        assert got["ece"] == pytest.approx(raw["ece"], abs=1e-9)
        assert got["brier"] == pytest.approx(raw["brier"], abs=1e-12)
        assert got["reliability"]["count"] == raw["reliability"]["count"]


def test_confusion_and_summary_from_histograms_match_raw():
    sites = [_sample(n=n, seed=k) for k, n in enumerate((100, 250))]
    merged = M.merge_histograms([M.score_histograms(y, s) for y, s in sites])
    y_all = np.concatenate([y for y, _ in sites])
    s_all = np.concatenate([s for _, s in sites])
    out = M.summarize_histograms(merged, thresholds=[0.5, 0.3, 0.7])
    for c, thr in enumerate((0.5, 0.3, 0.7)):
        raw = M.threshold_metrics(y_all[:, c], s_all[:, c], thr)
        got = out["per_class"][f"class_{c}"]
        assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (raw["tp"], raw["fp"], raw["tn"], raw["fn"])
        assert got["threshold"] == pytest.approx(thr)
        assert abs(got["auroc"] - roc_auc_score(y_all[:, c], s_all[:, c])) <= got["max_error"] + 1e-12
    assert set(out["macro"]) >= {"auroc", "ece", "brier", "mcc"}
    json.dumps(out)


def test_bootstrap_chunking_bounds_memory_without_changing_small_results():
    y, s = _sample(n=200)
    whole = np.concatenate(list(M.bootstrap_weights(y, n_boot=50, seed=3)))
    chunks = list(M.bootstrap_weights(y, n_boot=50, seed=3, chunk_cells=200 * 7))
    assert len(chunks) == 8 and all(c.shape[0] <= 7 for c in chunks)
    assert whole.shape == (50, 200) and np.all(whole.sum(1) == 200)
