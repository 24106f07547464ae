"""Which rows of a cached cohort a command uses: records usable with a model's leads, and the splits.

One cache serves every lead set: a record with a lead that fails QC is kept with that lead masked
(``meta["lead_faults"]``); each consumer leaves out the records it cannot use with its own leads
(:func:`usable_rows`, and the splits' ``leads``), so a 6-lead model keeps what a 12-lead one skips.
:func:`cohort_split` is the entry point a training command calls; the others are its parts.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from lsemvae.data.cache.store import Cohort
from lsemvae.data.preprocess import describe_faults
from lsemvae.errors import ConfigError
from lsemvae.leads import LEADS_12, resolve_lead_set


# ---------------------------------------------------------------------------------------------
# Records a model can use: QC applies to the leads it reads
# ---------------------------------------------------------------------------------------------


def _faults_among(cohort: Cohort, i: int, wanted: set[str]) -> dict[str, tuple[str, str]]:
    return {lead: tuple(f) for lead, f in (cohort.meta[i].get("lead_faults") or {}).items() if lead in wanted}


def lead_fault_skips(cohort: Cohort, leads: str | Sequence[str] = LEADS_12,
                     rows: Sequence[int] | np.ndarray | None = None) -> list[dict]:
    """Records (among ``rows``, default all) with a lead that failed QC among ``leads``, as ``cohort.skipped``
    lists them (``record``, ``path``, ``reason``, ``message``). A failed lead outside ``leads`` is not a reason:
    the cache keeps the record with that lead masked, so a 6-lead model is not refused for a flat V1."""
    names = resolve_lead_set(leads)
    out = []
    for i in range(len(cohort)) if rows is None else map(int, rows):
        faults = _faults_among(cohort, i, set(names))
        if faults:
            reason, message = describe_faults(faults, cohort.config)
            out.append({"record": cohort.record_ids[i], "path": cohort.paths[i], "reason": reason,
                        "message": f"{message} (leads read: {' '.join(names)})"})
    return out


def usable_rows(cohort: Cohort, leads: str | Sequence[str] = LEADS_12,
                rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """``rows`` (default all) without the records that have a lead failing QC among ``leads``."""
    rows = np.arange(len(cohort)) if rows is None else np.asarray(rows, dtype=np.int64)
    wanted = set(resolve_lead_set(leads))
    return rows[[not _faults_among(cohort, int(i), wanted) for i in rows]] if rows.size else rows


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def ptbxl_folds(cohort: Cohort, *, leads: str | Sequence[str] = LEADS_12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official PTB-XL patient-disjoint split: ``strat_fold`` 1-8 train, 9 validation, 10 test.

    Only records usable with ``leads`` (:func:`usable_rows`; default: every lead, strict)."""
    folds = np.array([m.get("strat_fold") or 0 for m in cohort.meta])
    if (folds == 0).any():
        missing = [cohort.record_ids[i] for i in np.flatnonzero(folds == 0)[:5]]
        raise ConfigError(f"records without strat_fold (not PTB-XL?): {missing}; use patient_split")
    rows = usable_rows(cohort, leads)
    return rows[folds[rows] <= 8], rows[folds[rows] == 9], rows[folds[rows] == 10]


def patient_split(cohort: Cohort, val_fraction: float = 0.1, seed: int = 0, *, test_fraction: float = 0.0,
                  leads: str | Sequence[str] = LEADS_12,
                  rows: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random split by patient (no patient in two parts): ``(train, val, test)`` row indices.

    Fractions are of patients; ``test`` is empty when ``test_fraction`` is 0. Only ``rows``
    (default all) usable with ``leads`` (:func:`usable_rows`; default: every lead, strict).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction {val_fraction} + test_fraction {test_fraction} must be in [0, 1)")
    rows = usable_rows(cohort, leads, rows)
    patients = np.array(sorted({cohort.patient_ids[i] for i in rows}))
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_val = int(round(val_fraction * len(patients)))
    n_test = int(round(test_fraction * len(patients)))
    part = {p: 1 for p in patients[:n_val]} | {p: 2 for p in patients[n_val:n_val + n_test]}
    which = np.array([part.get(cohort.patient_ids[i], 0) for i in rows], dtype=int)
    return rows[which == 0], rows[which == 1], rows[which == 2]


PTBXL_FOLDS, PATIENT_SPLIT = "ptbxl-folds", "patient"


def has_ptbxl_folds(cohort: Cohort) -> bool:
    """Every record carries PTB-XL's ``strat_fold`` (a site's text column of that name does not count)."""
    return all(isinstance(m.get("strat_fold"), int) for m in cohort.meta)


def cohort_split(cohort: Cohort, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                 recorded: Mapping[str, Any] | None = None,
                 leads: str | Sequence[str] = LEADS_12) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(train, val, test, record)`` row indices of ``cohort`` and a description of the split.

    Cohorts where every record has a PTB-XL ``strat_fold`` keep the official folds (1-8 / 9 / 10);
    any other cohort gets :func:`patient_split` with these fractions and ``seed``. ``record``
    (method, fractions, seed, the cohort's cache key, validation and test record ids) goes into a
    checkpoint's provenance; given back as ``recorded``, it yields the same parts again: PTB-XL folds
    from any PTB-XL cache (the folds are the records' own), a patient split only from the cohort it
    was drawn from (same cache key), by its record ids. Every part holds only records usable with
    ``leads`` (:func:`usable_rows`: the leads a model reads; default every lead).
    """
    if recorded is None:
        method = PTBXL_FOLDS if has_ptbxl_folds(cohort) else PATIENT_SPLIT
    else:
        method = recorded["method"]
        # PTB-XL's folds are the records' own (any PTB-XL cache has them); a patient split exists only in its cohort
        if not (has_ptbxl_folds(cohort) if method == PTBXL_FOLDS else recorded["cache_key"] == cohort.key):
            origin = "PTB-XL folds" if method == PTBXL_FOLDS else f"cache key {recorded['cache_key'][:16]}"
            raise ConfigError(f"cohort {cohort.path} (cache key {cohort.key[:16]}) is not the cohort the split was "
                              f"recorded on ({origin}): its validation and test records are not defined here")
    if method == PTBXL_FOLDS:
        train, val, test = ptbxl_folds(cohort, leads=leads)
        params: dict[str, Any] = {"method": PTBXL_FOLDS, "val_fraction": None, "test_fraction": None, "seed": None}
    elif recorded is not None:
        row = {rid: i for i, rid in enumerate(cohort.record_ids)}
        val, test = (usable_rows(cohort, leads, [row[r] for r in recorded[k]]) for k in ("val_ids", "test_ids"))
        train = np.setdiff1d(usable_rows(cohort, leads), np.concatenate([val, test]))
        return train, val, test, dict(recorded)
    else:
        train, val, test = patient_split(cohort, val_fraction, seed, test_fraction=test_fraction, leads=leads)
        empty = [part for part, rows in (("training", train), ("validation", val), ("test", test)) if not len(rows)]
        if empty:
            raise ConfigError(f"cohort {cohort.path}: {len(set(cohort.patient_ids))} patients are too few for a "
                              f"validation share of {val_fraction:g} and a test share of {test_fraction:g} (the "
                              f"{' and '.join(empty)} part would be empty): add records or change --val-fraction / "
                              "--test-fraction")
        params = {"method": PATIENT_SPLIT, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    record = {**params, "cache_key": cohort.key, "val_ids": [cohort.record_ids[i] for i in val],
              "test_ids": [cohort.record_ids[i] for i in test]}
    return train, val, test, record


def label_fraction(cohort: Cohort, indices: Sequence[int] | np.ndarray, fraction: float, *,
                   task: str | None = None, seed: int = 0) -> np.ndarray:
    """A seeded, stratified subset keeping ``fraction`` of ``indices`` (e.g. 10% of training labels).

    Strata are the label patterns of ``task`` (default: the cohort's first task; NaN is its own
    value); each stratum keeps its share, rounded by largest remainder so the total is exact.
    Returns sorted indices.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
    task = task or next(iter(cohort.labels))
    y = np.asarray(cohort.labels[task])[indices]
    keys = [tuple(np.where(np.isnan(row), -1, row).tolist()) for row in y]
    strata: dict[tuple, list[int]] = {}
    for pos, k in enumerate(keys):
        strata.setdefault(k, []).append(pos)
    target = int(round(fraction * len(indices)))
    order = sorted(strata)
    exact = np.array([fraction * len(strata[k]) for k in order])
    take = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - take), kind="stable")[: target - int(take.sum())]:
        take[j] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k, n in zip(order, take):
        members = np.array(strata[k])
        chosen.extend(members[rng.permutation(len(members))[:n]].tolist())
    return np.sort(indices[chosen])


def group_indices(cohort: Cohort, key: str) -> dict[Any, np.ndarray]:
    """Row indices per value of ``meta[key]`` (e.g. ``"site"``, ``"device"``): natural federated partitions."""
    groups: dict[Any, list[int]] = {}
    for i, m in enumerate(cohort.meta):
        groups.setdefault(m.get(key), []).append(i)
    return {k: np.asarray(v) for k, v in groups.items()}
