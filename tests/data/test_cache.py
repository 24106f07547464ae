"""Cohort cache on a real PTB-XL subset: build, memmap reload, keys, dataset items, splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from lsemvae.data.cache import (
    CacheError, CohortDataset, build_cohort, group_indices, label_fraction, lead_fault_skips, load_cohort,
    patient_split, ptbxl_folds, usable_rows,
)
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.sources import ptbxl_index
from lsemvae.data.tasks import column_task
from lsemvae.errors import ConfigError
from lsemvae.leads import LEADS_12

TASKS = ["superclass", "right_heart", "phenotype"]


@pytest.fixture(scope="module")
def subset(ptbxl_root):
    """36 full records spread over the folds plus 4 partial ones (ecg_id 1017-1020)."""
    refs = ptbxl_index(ptbxl_root)
    return refs[:999:28] + [r for r in refs if 1017 <= r.meta["ecg_id"] <= 1020]


@pytest.fixture(scope="module")
def cohort(subset, tmp_path_factory):
    return build_cohort(subset, TASKS, PreprocessConfig(), tmp_path_factory.mktemp("cache"), name="ptbxl",
                        progress=False)


def test_partial_records_keep_their_good_lead_and_every_consumer_of_a_failed_lead_leaves_them_out(cohort, subset):
    """QC applies to the leads a model reads: the cache masks failed leads, consumers skip by their own leads."""
    partial = {f"ptb-xl/0{i}" for i in range(1017, 1021)}  # every lead but II is 75% NaN
    assert len(subset) == 40 and len(cohort) == 40 and cohort.skipped == []
    rows = [cohort.record_ids.index(r) for r in sorted(partial)]
    assert np.asarray(cohort.lead_mask)[rows].tolist() == [[False, True] + [False] * 10] * 4
    assert all(set(cohort.meta[i]["lead_faults"]) == set(LEADS_12) - {"II"} for i in rows)
    assert all(any(f.startswith("masked-leads: missing samples (NaN)") for f in cohort.meta[i]["qc_flags"])
               for i in rows)
    for leads in ("12L", "6L"):
        skips = lead_fault_skips(cohort, leads)
        assert {s["record"] for s in skips} == partial and {s["reason"] for s in skips} == {"nan-share"}
        assert all("leads I 75%, III 75%" in s["message"] and " II 75%" not in s["message"] for s in skips)
        assert len(usable_rows(cohort, leads)) == 36 and not set(usable_rows(cohort, leads)) & set(rows)
    assert set(rows) <= set(usable_rows(cohort, ["II"]))  # a lead-II reader can use them
    st = cohort.stats
    assert st["records_in"] == 40 and st["records_per_second"] == pytest.approx(40 / st["build_seconds"], rel=0.05)


def test_arrays_shapes_and_reload_is_read_only_memmap(cohort):
    assert cohort.signals.shape == (40, 12, 1000) and cohort.beats.shape == (40, 12, 80)
    assert cohort.lead_mask.shape == (40, 12) and cohort.sample_mask.shape == (40, 1000)
    assert cohort.labels["superclass"].shape == (40, 5) and cohort.labels["right_heart"].shape == (40, 1)
    for arr in (cohort.signals, cohort.beats, cohort.lead_mask, cohort.labels["superclass"]):
        assert isinstance(arr, np.memmap) and not arr.flags.writeable
    again = load_cohort(cohort.path)
    assert again.key == cohort.key and again.record_ids == cohort.record_ids
    assert np.array_equal(np.asarray(again.signals[5]), np.asarray(cohort.signals[5]))
    assert cohort.meta[0]["strat_fold"] in range(1, 11) and "heart_rate_bpm" in cohort.meta[0]
    # labels follow the rules: record 1 is NORM only
    i = cohort.record_ids.index("ptb-xl/00001")
    assert cohort.labels["superclass"][i].tolist() == [1, 0, 0, 0, 0]
    assert np.isnan(cohort.labels["phenotype"][i, 0])


def test_same_inputs_reuse_the_cache_and_changes_rebuild(cohort, subset):
    mtime = os.stat(cohort.path / "signals.npy").st_mtime_ns
    same = build_cohort(subset, TASKS, PreprocessConfig(), cohort.path.parent, name="ptbxl", progress=False)
    assert same.path == cohort.path and os.stat(same.path / "signals.npy").st_mtime_ns == mtime
    other = build_cohort(subset[:6], TASKS, PreprocessConfig(lowpass_hz=30), cohort.path.parent, name="ptbxl",
                         progress=False)
    assert other.key != cohort.key and other.path != cohort.path and len(other) == 6
    assert not any(p.name.startswith(".tmp") for p in cohort.path.parent.iterdir())


def test_key_changes_with_labels_and_pipeline_inputs(subset, tmp_path):
    from lsemvae.data.cache import cohort_key
    from lsemvae.data.tasks import resolve_tasks

    tasks = resolve_tasks(["right_heart"])
    base = cohort_key(subset[:3], tasks, PreprocessConfig())
    relabelled = [subset[0].__class__(r.record_id, r.patient_id, r.path, {**r.meta, "right_heart": 1.0})
                  for r in subset[:3]]
    assert cohort_key(relabelled, tasks, PreprocessConfig()) != base
    assert cohort_key(subset[:3], resolve_tasks(["phenotype"]), PreprocessConfig()) != base
    assert cohort_key(subset[:3], tasks, PreprocessConfig(fs=250)) != base


def test_dataset_items_mask_requested_leads(cohort):
    ds = CohortDataset(cohort, [0, 1, 2], leads="6L", tasks=["right_heart"])
    item = ds[1]
    assert item["x"].shape == (12, 1000) and item["x"].dtype == torch.float32
    assert item["lead_mask"].tolist() == [True] * 6 + [False] * 6
    assert (item["x"][6:] == 0).all() and (item["x"][:6] != 0).any()
    assert item["beat"].shape == (12, 80) and item["sample_mask"].all()
    assert item["beat_mask"].all() and (item["beat"][6:] != 0).any()  # 12-lead target from a 6-lead input
    assert set(item["y"]) == {"right_heart"} and item["y"]["right_heart"].shape == (1,)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["x"].shape == (2, 12, 1000) and batch["y"]["right_heart"].shape == (2, 1)
    with pytest.raises(ConfigError, match="not in cohort"):
        CohortDataset(cohort, None, tasks=["left_atrial"])


def test_splits(cohort):
    train, val, test = ptbxl_folds(cohort)
    folds = np.array([m["strat_fold"] for m in cohort.meta])
    assert set(folds[train]) <= set(range(1, 9)) and set(folds[val]) <= {9} and set(folds[test]) <= {10}
    assert len(train) + len(val) + len(test) == len(usable_rows(cohort)) == 36  # the 4 partial records left out
    assert len(np.concatenate(ptbxl_folds(cohort, leads=["II"]))) == 40
    tr, va, te = patient_split(cohort, 0.25, seed=1, test_fraction=0.25)
    pats = [{cohort.patient_ids[i] for i in part} for part in (tr, va, te)]
    assert not (pats[0] & pats[1] or pats[0] & pats[2] or pats[1] & pats[2])
    assert len(tr) + len(va) + len(te) == 36 and len(va) > 0 and len(te) > 0
    assert np.array_equal(patient_split(cohort, 0.25, seed=1)[1], patient_split(cohort, 0.25, seed=1)[1])


def test_label_fraction_is_stratified_seeded_and_exact(cohort):
    idx = usable_rows(cohort)
    sub = label_fraction(cohort, idx, 0.5, task="superclass", seed=3)
    assert len(sub) == 18 and len(set(sub)) == 18
    assert np.array_equal(sub, label_fraction(cohort, idx, 0.5, task="superclass", seed=3))
    y = np.nan_to_num(np.asarray(cohort.labels["superclass"]), nan=-1)
    norm_all, norm_sub = (y[idx, 0] == 1).mean(), (y[sub, 0] == 1).mean()
    assert abs(norm_all - norm_sub) < 0.1
    with pytest.raises(ConfigError):
        label_fraction(cohort, idx, 0.0)


def test_group_indices_by_site(cohort):
    groups = group_indices(cohort, "site")
    assert sum(len(v) for v in groups.values()) == len(cohort)
    assert all(cohort.meta[i]["site"] == site for site, ix in groups.items() for i in ix)


def test_column_task_survives_reload_by_path(subset, tmp_path):
    import dataclasses

    refs = [dataclasses.replace(r, meta={**r.meta, "cath": float(i % 2)}) for i, r in enumerate(subset[:4])]
    head = dataclasses.replace(column_task("cath"), name="ph")
    built = build_cohort(refs, {"ph": head}, None, tmp_path, name="site", progress=False)
    reloaded = load_cohort(built.path)
    assert reloaded.tasks["ph"].column == "cath"
    assert reloaded.labels["ph"][:, 0].tolist() == [0, 1, 0, 1]


def test_parallel_build_matches_serial(subset, tmp_path):
    cfg = PreprocessConfig()
    serial = build_cohort(subset[:8], ["right_heart"], cfg, tmp_path / "a", name="s", progress=False)
    parallel = build_cohort(subset[:8], ["right_heart"], cfg, tmp_path / "b", name="s", progress=False, workers=2)
    assert serial.key == parallel.key
    assert np.array_equal(np.asarray(serial.signals), np.asarray(parallel.signals))


def test_corrupt_cache_errors_clearly(cohort, tmp_path):
    with pytest.raises(CacheError, match="not a cohort cache"):
        load_cohort(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.json").write_text(json.dumps({"format": 999}))
    with pytest.raises(CacheError, match="rebuild"):
        load_cohort(bad)


def test_empty_cohort_and_duplicate_ids(subset, tmp_path):
    from lsemvae.errors import RecordError

    too_short = PreprocessConfig(seconds=20, min_seconds=15)  # every record lasts 10 s
    with pytest.raises(RecordError, match="every record was rejected"):
        build_cohort(subset[:3], [], too_short, tmp_path, name="x", progress=False)
    assert not list(tmp_path.iterdir())  # the temporary build was removed
    with pytest.raises(ConfigError, match="duplicate"):
        build_cohort(subset[:2] + subset[:1], [], None, tmp_path, name="x", progress=False)


def test_pickling_sends_the_path_not_the_arrays(cohort):
    import pickle

    blob = pickle.dumps(CohortDataset(cohort, [0, 1], leads="6L"))
    assert len(blob) < cohort.signals.nbytes / 10
    ds = pickle.loads(blob)
    assert isinstance(ds.cohort.signals, np.memmap) and ds[1]["lead_mask"].sum() == 6  # what spawn workers get


def test_stale_temporary_builds_are_removed(subset, tmp_path):
    stale, fresh = tmp_path / ".tmp-s-dead", tmp_path / ".tmp-s-live"
    stale.mkdir()
    fresh.mkdir()
    old = os.stat(stale).st_mtime - 7 * 3600
    os.utime(stale, (old, old))
    build_cohort(subset[:2], [], None, tmp_path, name="s", progress=False)
    assert not stale.exists() and fresh.exists()
