"""What a site's evaluation reply may hold (k-anonymous counts on its own bins) and how the server pools it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsemvae.federation.private_eval import GRID, class_counts, on_grid, pooled, task_histogram
from lsemvae.train.metrics import auroc


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(0, 1), min_size=0, max_size=300), bins=st.sampled_from([10, 20, 25, 50, 100]),
       k=st.integers(1, 30))
def test_every_reported_count_holds_at_least_k_records_and_none_is_lost(scores, bins, k):
    counts = class_counts(np.array(scores), bins=bins, min_cell=k)
    if len(scores) < k:
        assert counts is None        # too few to report at all
        return
    assert min(counts.counts) >= k and sum(counts.counts) == len(scores)
    assert len(counts.counts) <= bins and counts.edges[0] == 0 and counts.edges[-1] == 1
    assert all(lo <= m <= hi for lo, hi, m in zip(counts.edges, counts.edges[1:], counts.means))
    assert all(round(e * bins) == pytest.approx(e * bins) for e in counts.edges)   # cells are unions of the site's bins
    # every record lies in the cell the edges say, and each mean is its cell's (to 3 decimals)
    edges = np.asarray(counts.edges)
    s = np.array(scores)
    cell = np.clip(np.searchsorted(edges, np.clip(s * bins, 0, bins - 1).astype(int) / bins, side="right") - 1,
                   0, len(edges) - 2)
    assert np.bincount(cell, minlength=len(counts.counts)).tolist() == counts.counts
    for i, m in enumerate(counts.means):
        assert abs(m - s[cell == i].mean()) <= 5e-4 + 1e-12


def test_a_record_alone_in_a_bin_is_merged_with_its_neighbours():
    scores = np.array([0.05] * 12 + [0.95])        # one record alone at the top
    counts = class_counts(scores, bins=10, min_cell=10)
    assert counts.counts == [13] and counts.edges == [0.0, 1.0] and counts.means == [round((12 * 0.05 + 0.95) / 13, 3)]
    spread = class_counts(np.r_[np.full(10, 0.05), np.full(10, 0.55), [0.97]], bins=10, min_cell=10)
    assert spread.counts == [10, 11] and spread.edges == [0.0, 0.1, 1.0] and spread.means == [0.05, 0.588]


def test_labels_with_fewer_than_k_records_are_withheld_and_scores_must_be_probabilities():
    y = np.array([[1.0], [0.0], [0.0], [np.nan]] * 5)
    hist = task_histogram(y, np.full((20, 1), 0.3), ["right_heart"], bins=10, min_cell=6)
    assert hist.pos == [None] and sum(hist.neg[0].counts) == 10   # 5 positives < 6: withheld; unlabelled excluded
    for bad in (np.nan, -0.1, 1.2):
        with pytest.raises(ValueError, match=r"^the model produced scores that are not probabilities \(non-finite or outside \[0, 1\]\)$"):
            task_histogram(y, np.full((20, 1), bad), ["right_heart"], bins=10, min_cell=6)


def test_pooled_counts_keep_every_record_and_auroc_stays_close_to_exact():
    rng = np.random.default_rng(0)
    sites, ys, ss = [], [], []
    for n, bins in ((400, 20), (300, 20), (200, 50)):
        y = rng.integers(0, 2, n).astype(float)
        s = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, n))))
        sites.append(task_histogram(y[:, None], s[:, None], ["c"], bins=bins, min_cell=10))
        ys.append(y), ss.append(s)
    pooled_hist = pooled(sites)
    assert len(pooled_hist["edges"]) == GRID + 1 == 1001
    assert sum(pooled_hist["pos"][0]) == pytest.approx(sum(y.sum() for y in ys))
    assert sum(pooled_hist["neg"][0]) == pytest.approx(sum((1 - y).sum() for y in ys))
    from lsemvae.train.metrics import auroc_from_histograms

    exact = float(auroc(np.concatenate(ys), np.concatenate(ss))[0])
    approx = auroc_from_histograms(pooled_hist)["macro"]["auroc"]
    assert abs(approx - exact) < 0.005, (approx, exact)


def test_each_cell_is_spread_with_its_own_mean_inside_its_edges():
    """The server spreads a cell over its edges keeping its mean: never a point, never flat when the mean says not."""
    from lsemvae.federation.messages import ClassCounts

    cell = ClassCounts(edges=[0.0, 0.5, 1.0], counts=[10, 30], means=[0.1, 0.75])
    grid = on_grid(cell)
    centres = (np.arange(GRID) + 0.5) / GRID
    assert grid.sum() == pytest.approx(40)
    low, high = grid[:500], grid[500:]
    assert low.sum() == pytest.approx(10) and high.sum() == pytest.approx(30)
    assert (low * centres[:500]).sum() / 10 == pytest.approx(0.1, abs=1e-6)        # the cell's mean is kept
    assert (high * centres[500:]).sum() / 30 == pytest.approx(0.75, abs=1e-6)     # (0.75: the flat case, exactly)
    assert np.all(np.diff(low) < 0) and np.ptp(high) < 1e-9                    # skewed where the mean is off-centre


def test_sites_whose_classes_disagree_are_refused_not_merged():
    a = task_histogram(np.ones((20, 1)), np.full((20, 1), 0.5), ["right_heart"], bins=10, min_cell=5)
    b = task_histogram(np.ones((20, 1)), np.full((20, 1), 0.5), ["ph"], bins=10, min_cell=5)
    with pytest.raises(ValueError, match="different classes"):
        pooled([a, b])
    assert on_grid(None).sum() == 0


def test_a_cell_whose_mean_is_at_or_next_to_an_end_is_spread_exactly():
    """At an end of its cell (to the grid's resolution) a cell is one bin; just inside, the distribution
    still has the cell's mean: the end cases are decided on the first and last grid point, not their neighbours."""
    from lsemvae.federation.messages import ClassCounts

    centres = (np.arange(GRID) + 0.5) / GRID
    ends = on_grid(ClassCounts(edges=[0.0, 0.5, 1.0], counts=[10, 7], means=[0.0005, 0.9995]))
    assert ends[0] == 10 and ends[-1] == 7 and ends.sum() == 17
    two_points = on_grid(ClassCounts(edges=[0.0, 0.002, 1.0], counts=[10, 7], means=[0.0015, 0.5]))
    assert two_points[:2].tolist() == [0, 10]          # a two-bin cell whose mean is its top bin
    for means in ([0.0009, 0.999], [0.0001, 1.0]):
        grid = on_grid(ClassCounts(edges=[0.0, 0.5, 1.0], counts=[10, 7], means=means))
        low, high = grid[:500], grid[500:]
        assert low.sum() == pytest.approx(10) and high.sum() == pytest.approx(7)
        for part, n, mean, x in ((low, 10, means[0], centres[:500]), (high, 7, means[1], centres[500:])):
            inside = float(np.clip(mean, x[0], x[-1]))
            assert (part * x).sum() / n == pytest.approx(inside, abs=1e-7)


def test_top_bin_scores_stay_in_the_top_bin():
    counts = class_counts(np.r_[np.full(10, 0.85), np.full(10, 0.95)], bins=10, min_cell=10)
    assert counts.edges == [0.0, 0.9, 1.0] and counts.counts == [10, 10] and counts.means == [0.85, 0.95]
    assert class_counts(np.r_[np.full(10, 0.5), np.full(10, 1.0)], bins=10, min_cell=10).counts == [10, 10]


def test_a_rounded_mean_never_leaves_its_cell():
    """Means go out to 3 decimals; with 30 bins an edge is not a multiple of 0.001, and rounding would cross it."""
    above_lo = class_counts(np.r_[np.zeros(10), np.full(10, 0.03334)], bins=30, min_cell=10)
    assert above_lo.edges[1] == pytest.approx(1 / 30) and above_lo.means[1] == above_lo.edges[1]
    below_hi = class_counts(np.r_[np.full(10, 0.06666), np.full(10, 0.9)], bins=30, min_cell=10)
    assert below_hi.edges[1] == pytest.approx(2 / 30) and below_hi.means[0] == below_hi.edges[1]


def test_one_sites_pooled_counts_give_its_calibration_from_the_grid_centres():
    """The pooled histogram is the format the report's calibration reads: score sums are count x grid centre."""
    from lsemvae.train.metrics import calibration_from_histograms

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600).astype(float)
    s = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.15, 600), 0, 1)
    hist = pooled([task_histogram(y[:, None], s[:, None], ["c"], bins=20, min_cell=10)])
    centres = (np.arange(GRID) + 0.5) / GRID
    assert hist["edges"] == np.linspace(0, 1, GRID + 1).tolist()
    np.testing.assert_allclose(hist["pos_sum"][0], np.array(hist["pos"][0]) * centres)
    np.testing.assert_allclose(hist["neg_sum"][0], np.array(hist["neg"][0]) * centres)
    np.testing.assert_allclose(hist["sq_sum"][0], (np.array(hist["pos"][0]) + hist["neg"][0]) * centres**2)
    cal = calibration_from_histograms(hist)["per_class"]["c"]
    assert cal["brier"] == pytest.approx(float(np.mean((s - y) ** 2)), abs=0.01)


def test_a_two_point_cell_whose_mean_is_its_top_puts_everything_at_the_top():
    from lsemvae.federation.private_eval import _maxent_weights

    assert _maxent_weights(np.array([0.1, 0.2]), 0.2).tolist() == [0.0, 1.0]
    assert _maxent_weights(np.array([0.1, 0.2]), 0.1).tolist() == [1.0, 0.0]
