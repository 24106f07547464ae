"""Classification metrics with honest uncertainty, and federated evaluation from aggregates.

Pure numpy (no torch) so the server, the sites and the benchmarks share one implementation.

Conventions
-----------
* ``y_true`` is ``[N]`` or ``[N, C]`` float with ``NaN`` = label not applicable; NaN rows are
  excluded per class. Multi-label and multi-class (one-hot) tasks are scored one-vs-rest;
  ``macro`` is the unweighted mean over classes that have both label values.
* ``y_score`` has the same shape; for thresholds and calibration it must be a probability
  (sigmoid for binary/multi-label, softmax for multi-class).
* Every AUROC here, exact or from histograms, is the Mann-Whitney statistic computed from
  per-group positive/negative counts in ascending score order (:func:`_auc_from_counts`), with
  ties counted half; "groups" are distinct scores (exact) or histogram bins (federated).

Bootstrap
---------
Records are resampled jointly (one index matrix for every class and every method, so macro and
per-class CIs and paired differences come from the same resamples), stratified by label
pattern: records sharing the same label vector form a stratum and are resampled within it, so
each class keeps its positive count. Patterns with fewer than ``min_stratum`` records are pooled
into one stratum (resampling a singleton to itself would understate the variance); that pooled
stratum can occasionally leave a class with one label value, and such resamples are skipped and
counted (``n_skipped``). Percentile intervals.

Thresholds
----------
Chosen per class on the *validation* scores, then applied unchanged to test:
``"youden"`` maximises sensitivity + specificity - 1 (ties: the higher threshold);
``"sensitivity"`` is the highest threshold reaching ``target_sensitivity`` on validation.
If validation has a single label value for a class, 0.5 is used and ``threshold_source``
says ``"fallback-0.5"``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lsemvae.errors import LSEMVAEError

DEFAULT_N_BOOT = 1000
DEFAULT_CAL_BINS = 10
DEFAULT_HIST_BINS = 1000


# ---------------------------------------------------------------------------------------------
# shapes and small helpers
# ---------------------------------------------------------------------------------------------

def _as_2d(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    yt = np.asarray(y_true, dtype=np.float64)
    ys = np.asarray(y_score, dtype=np.float64)
    if yt.ndim == 1:
        yt = yt[:, None]
    if ys.ndim == 1:
        ys = ys[:, None]
    if yt.shape != ys.shape:
        raise LSEMVAEError(f"labels have shape {yt.shape} but scores have shape {ys.shape}: "
                           "pass one score per label ([N] or [N, C]).")
    bad = ~np.isnan(yt) & ~np.isin(yt, (0.0, 1.0))
    if bad.any():
        raise LSEMVAEError(f"labels must be 0, 1 or NaN; found {np.unique(yt[bad])[:5]} "
                           "(multi-class labels must be one-hot).")
    if np.isnan(ys[~np.isnan(yt)]).any():
        raise LSEMVAEError("scores contain NaN for labelled records: the model produced NaN outputs.")
    return yt, ys


def _names(class_names: Sequence[str] | None, n: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(n)]
    names = [str(c) for c in class_names]
    if len(names) != n:
        raise LSEMVAEError(f"{len(names)} class names given for {n} score columns.")
    return names


def _f(x) -> float | None:
    """Plain float for JSON; None for NaN."""
    x = float(x)
    return None if np.isnan(x) else x


def _nanmean(values) -> float:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


# ---------------------------------------------------------------------------------------------
# AUROC / AUPRC from grouped counts (exact and histogram share this)
# ---------------------------------------------------------------------------------------------

def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC from counts per score group, groups in ascending score order.

    ``pos``/``neg`` are ``[..., G]`` (weights allowed). Ties inside a group count half.
    Returns ``[...]``; NaN where a class has no positive or no negative.
    """
    neg_below = np.cumsum(neg, axis=-1) - neg
    n_pos = pos.sum(axis=-1)
    n_neg = neg.sum(axis=-1)
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


def _ap_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's step-wise definition) from counts in ascending score order."""
    pos_d = pos[..., ::-1]
    neg_d = neg[..., ::-1]
    tp = np.cumsum(pos_d, axis=-1)
    fp = np.cumsum(neg_d, axis=-1)
    n_pos = pos.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        out = (pos_d * precision).sum(axis=-1) / n_pos
    return np.where((n_pos > 0) & (neg.sum(axis=-1) > 0), out, np.nan)


def _groups(y: np.ndarray, s: np.ndarray):
    """Sort one class's labelled records by score and return (order, group_end_positions)."""
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ends = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    return order, ends


def _grouped_counts(y: np.ndarray, s: np.ndarray, weights: np.ndarray | None = None):
    """Positive/negative (weighted) counts per distinct score, ascending. weights: [B, n] or None."""
    order, ends = _groups(y, s)
    ys = y[order]
    w = np.ones((1, len(y))) if weights is None else weights[:, order]
    cp = np.cumsum(w * ys, axis=1)[:, ends]
    cn = np.cumsum(w * (1.0 - ys), axis=1)[:, ends]
    pos = np.diff(cp, axis=1, prepend=0.0)
    neg = np.diff(cn, axis=1, prepend=0.0)
    return pos, neg


def auroc(y_true, y_score) -> np.ndarray:
    """Per-class AUROC ``[C]`` (NaN for a class with a single label value). Equals sklearn's."""
    yt, ys = _as_2d(y_true, y_score)
    out = np.full(yt.shape[1], np.nan)
    for c in range(yt.shape[1]):
        ok = ~np.isnan(yt[:, c])
        if ok.any():
            out[c] = _auc_from_counts(*_grouped_counts(yt[ok, c], ys[ok, c]))[0]
    return out


def auprc(y_true, y_score) -> np.ndarray:
    """Per-class average precision ``[C]``; equals sklearn's ``average_precision_score``."""
    yt, ys = _as_2d(y_true, y_score)
    out = np.full(yt.shape[1], np.nan)
    for c in range(yt.shape[1]):
        ok = ~np.isnan(yt[:, c])
        if ok.any():
            out[c] = _ap_from_counts(*_grouped_counts(yt[ok, c], ys[ok, c]))[0]
    return out


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------

def _strata(yt: np.ndarray, min_stratum: int) -> list[np.ndarray]:
    codes = np.where(np.isnan(yt), 2, yt).astype(np.int8)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    small = counts[inverse] < min_stratum
    strata = [np.nonzero((inverse == k) & ~small)[0] for k in np.nonzero(counts >= min_stratum)[0]]
    if small.any():
        strata.append(np.nonzero(small)[0])
    return strata


def bootstrap_weights(y_true, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, stratified: bool = True,
                      min_stratum: int = 5, chunk_cells: int = 4_000_000):
    """Yield resample multiplicities in chunks ``[b, N]`` (how often each record is drawn), seeded.

    Shared by every metric and method evaluated on the same records, which is what makes
    paired comparisons paired. Chunks of at most ``chunk_cells`` entries bound the memory for
    large test sets; the stream, hence every result, depends only on ``seed`` and the data.
    """
    yt = np.asarray(y_true, dtype=np.float64)
    yt = yt[:, None] if yt.ndim == 1 else yt
    n = yt.shape[0]
    rng = np.random.default_rng(seed)
    groups = _strata(yt, min_stratum) if stratified else [np.arange(n)]
    step = max(1, chunk_cells // max(n, 1))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        w = np.zeros((b, n))
        rows = np.arange(b)[:, None]
        for members in groups:
            draw = members[rng.integers(0, len(members), size=(b, len(members)))]
            np.add.at(w, (rows, draw), 1.0)
        yield w


def _boot_class_metrics(yt: np.ndarray, ys: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AP for every resample and class: two ``[B, C]`` arrays (NaN where degenerate)."""
    b, c_n = w.shape[0], yt.shape[1]
    au = np.full((b, c_n), np.nan)
    ap = np.full((b, c_n), np.nan)
    for c in range(c_n):
        ok = ~np.isnan(yt[:, c])
        if ok.any():
            pos, neg = _grouped_counts(yt[ok, c], ys[ok, c], w[:, ok])
            au[:, c] = _auc_from_counts(pos, neg)
            ap[:, c] = _ap_from_counts(pos, neg)
    return au, ap


def _ci(values: np.ndarray, alpha: float) -> list[float | None]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return [None, None]
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def bootstrap_auroc(y_true, y_score, class_names: Sequence[str] | None = None, *,
                    n_boot: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = 0.05,
                    stratified: bool = True) -> dict:
    """Per-class and macro AUROC and AUPRC with bootstrap percentile CIs.

    A resample in which any evaluable class has a single label value is skipped and counted.
    """
    yt, ys = _as_2d(y_true, y_score)
    names = _names(class_names, yt.shape[1])
    point_au, point_ap = auroc(yt, ys), auprc(yt, ys)
    evaluable = np.isfinite(point_au)
    parts = [_boot_class_metrics(yt, ys, w)
             for w in bootstrap_weights(yt, n_boot=n_boot, seed=seed, stratified=stratified)]
    au, ap = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    keep = np.isfinite(au[:, evaluable]).all(axis=1)
    au, ap = au[keep], ap[keep]
    out = {
        "per_class": {
            name: {"auroc": _f(point_au[c]), "auroc_ci": _ci(au[:, c], alpha),
                   "auprc": _f(point_ap[c]), "auprc_ci": _ci(ap[:, c], alpha)}
            for c, name in enumerate(names)
        },
        "macro": {
            "auroc": _f(np.nanmean(point_au)) if evaluable.any() else None,
            "auroc_ci": _ci(au[:, evaluable].mean(axis=1), alpha) if evaluable.any() else [None, None],
            "auprc": _f(np.nanmean(point_ap)) if evaluable.any() else None,
            "auprc_ci": _ci(ap[:, evaluable].mean(axis=1), alpha) if evaluable.any() else [None, None],
        },
        "bootstrap": {"n_boot": int(n_boot), "n_used": int(keep.sum()), "n_skipped": int((~keep).sum()),
                      "seed": int(seed), "stratified": bool(stratified), "alpha": float(alpha)},
    }
    return out


def paired_bootstrap(y_true, score_a, score_b, class_names: Sequence[str] | None = None, *,
                     metric: str = "auroc", n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                     alpha: float = 0.05) -> dict:
    """Difference ``a - b`` of AUROC (or ``metric="auprc"``) between two methods on the same records.

    Both methods are scored on identical resamples. ``p_value`` is the two-sided bootstrap
    p-value: twice the share of resamples on the other side of zero (capped at 1).
    """
    if metric not in ("auroc", "auprc"):
        raise LSEMVAEError(f"paired_bootstrap metric must be 'auroc' or 'auprc', got {metric!r}.")
    yt, sa = _as_2d(y_true, score_a)
    _, sb = _as_2d(y_true, score_b)
    names = _names(class_names, yt.shape[1])
    fn = auroc if metric == "auroc" else auprc
    pa, pb = fn(yt, sa), fn(yt, sb)
    evaluable = np.isfinite(pa)
    k = 0 if metric == "auroc" else 1
    ma, mb = [], []
    for w in bootstrap_weights(yt, n_boot=n_boot, seed=seed):
        ma.append(_boot_class_metrics(yt, sa, w)[k])
        mb.append(_boot_class_metrics(yt, sb, w)[k])
    ma, mb = np.concatenate(ma), np.concatenate(mb)
    keep = np.isfinite(ma[:, evaluable]).all(axis=1)
    diff = ma[keep] - mb[keep]

    def summary(point: float, d: np.ndarray) -> dict:
        d = d[np.isfinite(d)]
        p = min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())) if d.size else float("nan")
        return {"diff": _f(point), "ci": _ci(d, alpha), "p_value": _f(p)}

    return {
        "metric": metric,
        "macro": summary(np.nanmean(pa) - np.nanmean(pb), diff[:, evaluable].mean(axis=1)),
        "per_class": {n: summary(pa[c] - pb[c], diff[:, c]) for c, n in enumerate(names)},
        "bootstrap": {"n_boot": int(n_boot), "n_used": int(keep.sum()), "n_skipped": int((~keep).sum()),
                      "seed": int(seed)},
    }


# ---------------------------------------------------------------------------------------------
# thresholds and confusion-based metrics
# ---------------------------------------------------------------------------------------------

def choose_threshold(y_true, y_score, *, method: str = "youden", target_sensitivity: float = 0.9
                     ) -> tuple[float, str]:
    """Threshold for one class from validation data; returns ``(threshold, source)``.

    Predictions are ``score >= threshold``.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    ok = ~np.isnan(y)
    y, s = y[ok], s[ok]
    n_pos, n_neg = (y == 1).sum(), (y == 0).sum()
    if n_pos == 0 or n_neg == 0:
        return 0.5, "fallback-0.5"
    cand = np.unique(s)[::-1]  # descending: candidate thresholds
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    ends = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tpr = np.cumsum(yy)[ends] / n_pos
    fpr = np.cumsum(1 - yy)[ends] / n_neg
    if method == "youden":
        k = int(np.argmax(tpr - fpr))  # first maximum = highest threshold among ties
    elif method == "sensitivity":
        k = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    else:
        raise LSEMVAEError(f"threshold method must be 'youden' or 'sensitivity', got {method!r}.")
    return float(cand[k]), method


def threshold_metrics(y_true, y_score, threshold: float) -> dict:
    """Accuracy, F1, MCC, sensitivity, specificity, PPV, NPV and the confusion counts (one class)."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    ok = ~np.isnan(y)
    y, pred = y[ok] == 1, s[ok] >= threshold
    tp = int((y & pred).sum()); tn = int((~y & ~pred).sum())
    fp = int((~y & pred).sum()); fn = int((y & ~pred).sum())
    return confusion_metrics(tp=tp, fp=fp, tn=tn, fn=fn)


def confusion_metrics(*, tp: int, fp: int, tn: int, fn: int) -> dict:
    """Metrics from confusion counts (also usable on counts summed across federated sites)."""
    def ratio(a, b):
        return a / b if b else float("nan")

    n = tp + fp + tn + fn
    denom = np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "accuracy": _f(ratio(tp + tn, n)),
        "f1": _f(ratio(2 * tp, 2 * tp + fp + fn)),
        # MCC is 0 by convention when a margin is empty (a constant predictor)
        "mcc": _f((tp * tn - fp * fn) / denom if denom else 0.0),
        "sensitivity": _f(ratio(tp, tp + fn)),
        "specificity": _f(ratio(tn, tn + fp)),
        "ppv": _f(ratio(tp, tp + fp)),
        "npv": _f(ratio(tn, tn + fn)),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------

def _bin_index(s: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each score; out-of-range scores go to the edge bins. Bins are [e_k, e_{k+1})."""
    return np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)


def _check_prob(s: np.ndarray) -> None:
    if s.size and (s.min() < -1e-9 or s.max() > 1 + 1e-9):
        raise LSEMVAEError(f"calibration needs probabilities in [0, 1]; scores span [{s.min():.3g}, {s.max():.3g}]. "
                           "Apply sigmoid/softmax to the logits first.")


def _calibration_from_bins(count: np.ndarray, n_pos: np.ndarray, score_sum: np.ndarray,
                           edges: np.ndarray) -> dict:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = score_sum / count
        frac_pos = n_pos / count
    n = count.sum()
    used = count > 0
    ece = float((count[used] / n * np.abs(mean_pred[used] - frac_pos[used])).sum()) if n else float("nan")
    return {
        "ece": _f(ece),
        "reliability": {
            "edges": [float(e) for e in edges],
            "count": [int(c) for c in count],
            "mean_pred": [_f(x) for x in mean_pred],
            "frac_pos": [_f(x) for x in frac_pos],
        },
    }


def calibration(y_true, y_prob, *, n_bins: int = DEFAULT_CAL_BINS) -> dict:
    """ECE over ``n_bins`` equal-width bins on [0, 1], Brier score and the reliability curve (one class)."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_prob, dtype=np.float64).ravel()
    ok = ~np.isnan(y)
    y, s = y[ok], s[ok]
    _check_prob(s)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = _bin_index(s, edges)
    out = _calibration_from_bins(np.bincount(b, minlength=n_bins).astype(float),
                                 np.bincount(b, weights=y, minlength=n_bins),
                                 np.bincount(b, weights=s, minlength=n_bins), edges)
    out["brier"] = _f(np.mean((s - y) ** 2)) if y.size else None
    return out


# ---------------------------------------------------------------------------------------------
# one call for finetune / evaluate / benchmarks
# ---------------------------------------------------------------------------------------------

def summarize(y_true, y_score, y_true_val, y_score_val, class_names: Sequence[str] | None = None, *,
              threshold_method: str = "youden", target_sensitivity: float = 0.9,
              n_boot: int = DEFAULT_N_BOOT, seed: int = 0, n_bins: int = DEFAULT_CAL_BINS,
              multiclass: bool = False) -> dict:
    """All test metrics of one task, JSON-serialisable (plain floats, None for undefined).

    ``y_score``/``y_score_val`` are probabilities. Thresholds are chosen per class on the
    validation arrays (pass ``None`` for both to use 0.5 everywhere, reported as such).
    ``multiclass=True`` adds top-1 accuracy (argmax) over records with a label.
    """
    yt, ys = _as_2d(y_true, y_score)
    names = _names(class_names, yt.shape[1])
    if y_true_val is not None:
        yv, sv = _as_2d(y_true_val, y_score_val)
        if yv.shape[1] != yt.shape[1]:
            raise LSEMVAEError(f"validation has {yv.shape[1]} classes, test has {yt.shape[1]}.")
    boot = bootstrap_auroc(yt, ys, names, n_boot=n_boot, seed=seed)
    per_class: dict[str, dict] = {}
    for c, name in enumerate(names):
        ok = ~np.isnan(yt[:, c])
        if y_true_val is None:
            thr, source = 0.5, "fixed-0.5"
        else:
            thr, source = choose_threshold(yv[:, c], sv[:, c], method=threshold_method,
                                           target_sensitivity=target_sensitivity)
        entry = {"n": int(ok.sum()), "n_pos": int((yt[ok, c] == 1).sum()), **boot["per_class"][name],
                 "threshold": float(thr), "threshold_source": source}
        entry.update(threshold_metrics(yt[:, c], ys[:, c], thr))
        entry.update(calibration(yt[:, c], ys[:, c], n_bins=n_bins))
        per_class[name] = entry
    macro = dict(boot["macro"])
    for key in ("accuracy", "f1", "mcc", "sensitivity", "specificity", "ece", "brier"):
        macro[key] = _f(_nanmean([per_class[n][key] for n in names]))
    out = {
        "n": int((~np.isnan(yt)).any(axis=1).sum()),
        "classes": names,
        "threshold_method": threshold_method if y_true_val is not None else "fixed-0.5",
        "macro": macro,
        "per_class": per_class,
        "bootstrap": boot["bootstrap"],
    }
    if threshold_method == "sensitivity":
        out["target_sensitivity"] = float(target_sensitivity)
    if multiclass:
        ok = ~np.isnan(yt).any(axis=1)
        out["top1_accuracy"] = _f((ys[ok].argmax(1) == yt[ok].argmax(1)).mean()) if ok.any() else None
    return out


# ---------------------------------------------------------------------------------------------
# federated evaluation from aggregate statistics
# ---------------------------------------------------------------------------------------------
#
# A site sends, per class, counts of its scores in fixed bins for positives and negatives and
# the sums of those scores (for the mean prediction per bin). No per-patient score leaves it.
# Pooled AUROC: pairs in different bins are ordered by their bins; pairs in the same bin count
# half. The error against the exact pooled AUROC is therefore at most
#     0.5 * sum_b P_b N_b / (P N)                                   (returned as "max_error")
# which, for score densities f+ and f- on [0, 1] and bin width h, is about
#     0.5 * h * integral f+(s) f-(s) ds  <=  0.5 * h * max f-.
# With the default 1000 bins (h = 0.001) and densities below 10, that is <= 0.005; in practice
# far less (computed exactly per call). Small counts in a bin can still be identifying: sites
# with few records should send coarser bins or add noise (not done here).

def score_histograms(y_true, y_score, *, bins: int | Sequence[float] = DEFAULT_HIST_BINS,
                     range: tuple[float, float] = (0.0, 1.0),
                     class_names: Sequence[str] | None = None) -> dict:
    """Per-class binned score counts for positives and negatives, plus score sums (JSON-ready).

    ``bins`` is a number of equal-width bins over ``range`` or explicit increasing edges.
    Scores outside the edges land in the edge bins. NaN labels are excluded per class.
    """
    yt, ys = _as_2d(y_true, y_score)
    names = _names(class_names, yt.shape[1])
    edges = (np.linspace(range[0], range[1], int(bins) + 1) if np.isscalar(bins)
             else np.asarray(bins, dtype=np.float64))
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise LSEMVAEError("histogram bins must be a positive count or strictly increasing edges.")
    nb = len(edges) - 1
    pos, neg, pos_sum, neg_sum, sq_sum = [], [], [], [], []
    for c in np.arange(yt.shape[1]):
        ok = ~np.isnan(yt[:, c])
        y, s = yt[ok, c], ys[ok, c]
        b = _bin_index(s, edges)
        pos.append(np.bincount(b[y == 1], minlength=nb).tolist())
        neg.append(np.bincount(b[y == 0], minlength=nb).tolist())
        pos_sum.append(np.bincount(b[y == 1], weights=s[y == 1], minlength=nb).tolist())
        neg_sum.append(np.bincount(b[y == 0], weights=s[y == 0], minlength=nb).tolist())
        sq_sum.append(np.bincount(b, weights=s * s, minlength=nb).tolist())
    return {"edges": edges.tolist(), "classes": names, "pos": pos, "neg": neg,
            "pos_sum": pos_sum, "neg_sum": neg_sum, "sq_sum": sq_sum}


def merge_histograms(histograms: Sequence[dict]) -> dict:
    """Sum histograms from several sites (same edges and classes required). Associative."""
    if not histograms:
        raise LSEMVAEError("merge_histograms needs at least one histogram.")
    first = histograms[0]
    for i, h in enumerate(histograms[1:], start=1):
        if h["classes"] != first["classes"] or len(h["edges"]) != len(first["edges"]) \
                or not np.allclose(h["edges"], first["edges"], rtol=0, atol=1e-12):
            raise LSEMVAEError(f"histogram {i} has different classes or bin edges from histogram 0: "
                               "all sites must use the server's bins and class order.")
    out = {"edges": list(first["edges"]), "classes": list(first["classes"])}
    for key, cast in (("pos", int), ("neg", int), ("pos_sum", float), ("neg_sum", float),
                      ("sq_sum", float)):
        total = np.sum([np.asarray(h[key], dtype=np.float64) for h in histograms], axis=0)
        out[key] = [[cast(v) for v in row] for row in total]
    return out


def auroc_from_histograms(hist: dict) -> dict:
    """Pooled per-class and macro AUROC (and AUPRC) from (merged) histograms, with error bounds."""
    pos = np.asarray(hist["pos"], dtype=np.float64)
    neg = np.asarray(hist["neg"], dtype=np.float64)
    au = _auc_from_counts(pos, neg)
    ap = _ap_from_counts(pos, neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = 0.5 * (pos * neg).sum(-1) / (pos.sum(-1) * neg.sum(-1))
    per_class = {
        name: {"auroc": _f(au[c]), "auprc": _f(ap[c]), "max_error": _f(bound[c]),
               "n_pos": int(pos[c].sum()), "n_neg": int(neg[c].sum())}
        for c, name in enumerate(hist["classes"])
    }
    ok = np.isfinite(au)
    return {"per_class": per_class,
            "macro": {"auroc": _f(au[ok].mean()) if ok.any() else None,
                      "auprc": _f(ap[ok].mean()) if ok.any() else None,
                      "max_error": _f(bound[ok].mean()) if ok.any() else None}}


def calibration_from_histograms(hist: dict, *, n_bins: int = DEFAULT_CAL_BINS) -> dict:
    """Pooled per-class ECE, Brier score and reliability curve from (merged) histograms.

    The histogram bins must tile ``n_bins`` equal-width bins on [0, 1] (e.g. 1000 -> 10); the
    ECE then equals the one computed on the pooled raw scores.
    """
    edges = np.asarray(hist["edges"], dtype=np.float64)
    fine = len(edges) - 1
    target = np.linspace(0.0, 1.0, n_bins + 1)
    if fine % n_bins or not np.allclose(edges[:: fine // n_bins], target, atol=1e-9):
        raise LSEMVAEError(f"histogram has {fine} bins on [{edges[0]}, {edges[-1]}]; calibration needs them to "
                           f"tile {n_bins} equal bins on [0, 1] (use score_histograms(bins=1000) on probabilities).")
    k = fine // n_bins

    def coarse(key):
        return np.asarray(hist[key], dtype=np.float64).reshape(len(hist["classes"]), n_bins, k).sum(-1)

    pos, neg, ps, ns, sq = (coarse(k) for k in ("pos", "neg", "pos_sum", "neg_sum", "sq_sum"))
    per_class = {}
    for c, name in enumerate(hist["classes"]):
        per_class[name] = _calibration_from_bins(pos[c] + neg[c], pos[c], ps[c] + ns[c], target)
        n = (pos[c] + neg[c]).sum()
        # sum (s - y)^2 = sum s^2 - 2 sum_{positives} s + n_pos
        per_class[name]["brier"] = _f((sq[c].sum() - 2 * ps[c].sum() + pos[c].sum()) / n) if n else None
    return {"per_class": per_class,
            "macro": {key: _f(_nanmean([v[key] for v in per_class.values()])) for key in ("ece", "brier")}}


def confusion_from_histograms(hist: dict, thresholds: Sequence[float] | float) -> dict:
    """Pooled confusion counts and metrics per class at ``score >= threshold``, from histograms.

    Exact when each threshold is a bin edge (a record's side of the threshold is then known
    from its bin); otherwise the threshold is moved to the nearest edge, reported as ``threshold``.
    """
    edges = np.asarray(hist["edges"], dtype=np.float64)
    pos = np.asarray(hist["pos"], dtype=np.int64)
    neg = np.asarray(hist["neg"], dtype=np.int64)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(hist["classes"]),))
    out = {}
    for c, name in enumerate(hist["classes"]):
        k = int(np.clip(np.argmin(np.abs(edges - thr[c])), 0, len(edges) - 2))
        tp, fp = int(pos[c, k:].sum()), int(neg[c, k:].sum())
        out[name] = {"threshold": float(edges[k]),
                     **confusion_metrics(tp=tp, fp=fp, tn=int(neg[c, :k].sum()), fn=int(pos[c, :k].sum()))}
    return out


def summarize_histograms(hist: dict, *, n_bins: int = DEFAULT_CAL_BINS,
                         thresholds: Sequence[float] | float | None = None) -> dict:
    """Server-side pooled evaluation: AUROC, AUPRC, ECE, Brier (and confusion metrics at ``thresholds``)."""
    disc = auroc_from_histograms(hist)
    cal = calibration_from_histograms(hist, n_bins=n_bins)
    conf = confusion_from_histograms(hist, thresholds) if thresholds is not None else {}
    per_class = {name: {**disc["per_class"][name], **cal["per_class"][name], **conf.get(name, {})}
                 for name in hist["classes"]}
    macro = {**disc["macro"], **cal["macro"]}
    for key in ("sensitivity", "specificity", "f1", "mcc") if conf else ():
        macro[key] = _f(_nanmean([per_class[n][key] for n in hist["classes"]]))
    return {"per_class": per_class, "macro": macro}
