"""Other hospitals' ECGs, through the commands, on records crafted from real PTB-XL ones.

* QC applies to the leads the model reads: scoring, fine-tuning and a federated site's data keep a record whose
  precordial leads are flat or V2 spikes when the model reads 6 limb leads, and leave it out for 12.
* External validation of the multi-label superclass head from a hospital's label columns (named like the classes
  or bound to them); a task without labels and an evaluation without its headline metric are errors.
* A 7.3-s record is scored on crops inside its real signal, not on crops padded with zeros.
* Early stopping on a validation part with too few positives says so, in the log and finetune.json.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lsemvae.cli import main
from lsemvae.data.cache import CohortDataset, build_cohort, cohort_split, load_cohort
from lsemvae.data.sources import folder_index
from lsemvae.model.config import TaskHeadSpec, get_profile
from lsemvae.model.lsemvae import build_model
from lsemvae.train.augment import AugmentConfig, augment
from lsemvae.train.finetune import (
    MIN_VALIDATION_CASES, auroc_standard_error, crop_averaged_logits, finetune, FINETUNE_PROFILES, thin_validation,
)
from tests.crafted import edited_copy, first_seconds, flat_precordials, gain_copy, spike_in_v2

CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]
CROPS = {"crop_samples": 500, "n_crops": 3}  # what the ckpt_path model (conftest.py) was fine-tuned with


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def hospital(root: Path, ptbxl_root: Path, ecg_ids, columns=tuple(CLASSES), broken: bool = False) -> Path:
    """A site folder of real PTB-XL records (records/ + labels.csv) whose label columns are the records' real
    diagnostic superclasses, named ``columns``; ``broken`` adds a flat-V1..V6 and a V2-spike copy of the first two."""
    table = pd.read_csv(ptbxl_root / "ptbxl_database.csv").set_index("ecg_id")
    scp = pd.read_csv(ptbxl_root / "scp_statements.csv", index_col=0)
    cls = {c: k for c, k in scp["diagnostic_class"].items() if isinstance(k, str)}
    rows = []
    for k, ecg_id in enumerate(ecg_ids):
        r = table.loc[ecg_id]
        hea = ptbxl_root / f"{r.filename_lr}.hea"
        gain_copy(hea, root / "records", 1.0)
        found = {cls[c] for c in ast.literal_eval(r.scp_codes) if c in cls}
        labels = {col: int(c in found) if found else "" for col, c in zip(columns, CLASSES)}
        rows.append({"record_id": hea.stem, "patient_id": f"p{int(r.patient_id)}", **labels})
        if broken and k < 2:
            name, edit = (f"flat_v_{hea.stem}", flat_precordials) if k == 0 else (f"spike_{hea.stem}", spike_in_v2)
            edited_copy(hea, root / "records", name, edit)
            rows.append({**rows[-1], "record_id": name, "patient_id": f"crafted-{name}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def prepare(site: Path, cache: Path, name: str, *extra: str) -> int:
    return main(["data", "prepare", "--dataset", "manifest", "--root", str(site), "--labels", str(site / "labels.csv"),
                 "--cache-dir", str(cache), "--name", name, "--no-progress", *extra])


# --- item 3: external validation of a multi-label head from a hospital's label columns ------------------------


def test_a_hospital_with_superclass_columns_is_scored_by_a_superclass_model(ptbxl_root, ckpt_path, tmp_path, capsys):
    site = hospital(tmp_path / "site", ptbxl_root, range(1, 41))
    assert prepare(site, tmp_path / "cache", "ext") == 0
    assert "tasks: superclass" in capsys.readouterr().out  # the five columns are the superclass head's labels
    (path,) = (tmp_path / "cache").glob("ext-*")
    cohort = load_cohort(path)
    assert list(cohort.tasks) == ["superclass"] and cohort.tasks["superclass"].classes == tuple(CLASSES)
    # the hospital's columns give PTB-XL's own labels back
    assert np.array_equal(np.asarray(cohort.labels["superclass"]), truth(ptbxl_root, range(1, 41)), equal_nan=True)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt_path), "--cache", str(path), "--split", "all", "--n-boot", "50",
                 "--no-interpret", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["n_test"] == 40 and np.isfinite(report["tasks"]["superclass"]["macro"]["auroc"])
    assert list(read_csv(out / "predictions.csv")[0])[1:3] == ["y:superclass:NORM", "p:superclass:NORM"]


def test_columns_named_otherwise_are_bound_to_the_head(ptbxl_root, ckpt_path, tmp_path, capsys):
    site = hospital(tmp_path / "site", ptbxl_root, range(1, 41), columns=("normal", "infarct", "st_t", "conduction",
                                                                          "hypertrophy"))
    assert prepare(site, tmp_path / "cache", "named", "--tasks", "superclass") == 2  # nothing to read it from
    err = capsys.readouterr().err
    assert err.startswith("error: task 'superclass': none of the 40 records has a label") and err.count("\n") == 1
    assert "label column(s) NORM, MI, STTC, CD, HYP" in err and "normal, infarct, st_t, conduction, hypertrophy" in err
    assert "--tasks superclass=" in err
    assert prepare(site, tmp_path / "cache", "bound", "--tasks", "superclass=normal+infarct+st_t+conduction+hypertrophy") == 0
    (path,) = (tmp_path / "cache").glob("bound-*")
    cohort = load_cohort(path)  # reopened by path: the binding is recorded in the cache
    assert cohort.tasks["superclass"].columns == ("normal", "infarct", "st_t", "conduction", "hypertrophy")
    assert np.array_equal(np.asarray(cohort.labels["superclass"]), truth(ptbxl_root, range(1, 41)), equal_nan=True)
    assert main(["evaluate", "--checkpoint", str(ckpt_path), "--cache", str(path), "--split", "all", "--n-boot", "50",
                 "--no-interpret", "--out", str(tmp_path / "eval")]) == 0


def test_an_evaluation_without_its_headline_metric_exits_non_zero(ptbxl_root, ckpt_path, tmp_path, capsys):
    norm_only = [i for i in range(1, 200) if _classes(ptbxl_root, i) == {"NORM"}][:12]
    site = hospital(tmp_path / "site", ptbxl_root, norm_only)  # every class has a single label value
    assert prepare(site, tmp_path / "cache", "norm") == 0
    (path,) = (tmp_path / "cache").glob("norm-*")
    capsys.readouterr()
    out = tmp_path / "eval"
    # before: "macro AUROC -" and exit 0
    assert main(["evaluate", "--checkpoint", str(ckpt_path), "--cache", str(path), "--split", "all",
                 "--no-interpret", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "task 'superclass'" in err and "no class with both positive and negative labels" in err
    assert "AUROC cannot be computed" in err and not out.exists()


def _classes(ptbxl_root: Path, ecg_id: int) -> set[str]:
    return set(_ptbxl_meta(ptbxl_root)[ecg_id]["diagnostic_classes"])


def truth(ptbxl_root: Path, ecg_ids) -> np.ndarray:
    """PTB-XL's own superclass labels of these records (from its metadata, as the superclass task reads them)."""
    from lsemvae.data.tasks import get_task
    return np.stack([get_task("superclass")(_ptbxl_meta(ptbxl_root)[i]) for i in ecg_ids])


_META: dict = {}


def _ptbxl_meta(ptbxl_root: Path) -> dict:
    from lsemvae.data.sources import ptbxl_index
    if not _META:
        _META.update({r.meta["ecg_id"]: r.meta for r in ptbxl_index(ptbxl_root)})
    return _META


# --- item 2: QC applies to the leads the model reads --------------------------------------------------------------


def test_a_6_lead_model_scores_records_with_broken_precordial_leads(ptbxl_root, ckpt_path, tmp_path):
    src = ptbxl_root / "records100" / "00000"
    folder = tmp_path / "ecgs"
    for n in (1, 2):
        gain_copy(src / f"{n:05d}_lr.hea", folder, 1.0)
    edited_copy(src / "00001_lr.hea", folder, "flat_v", flat_precordials)
    edited_copy(src / "00002_lr.hea", folder, "spike_v2", spike_in_v2)
    out = tmp_path / "scores.csv"
    common = ["--checkpoint", str(ckpt_path), str(folder), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(["predict", *common, "--out", str(out)]) == 0  # 6 limb leads, as fine-tuned
    rows = {r["record_id"]: r for r in read_csv(out)}
    assert set(rows) == {"00001_lr", "00002_lr", "flat_v", "spike_v2"} and not out.with_name("scores.skipped.csv").exists()
    assert "masked-leads: flat line" in rows["flat_v"]["qc"] and "V1, V2, V3, V4, V5, V6" in rows["flat_v"]["qc"]
    assert "masked-leads: amplitude above 20.0 mV in leads V2" in rows["spike_v2"]["qc"] and rows["00001_lr"]["qc"] == ""
    # the limb leads are the real record's: the same scores as the clean original
    for broken, clean in (("flat_v", "00001_lr"), ("spike_v2", "00002_lr")):
        assert float(rows[broken]["p:superclass:NORM"]) == pytest.approx(float(rows[clean]["p:superclass:NORM"]),
                                                                         abs=1e-3)
    # a 12-lead reading of the same files refuses them, naming the leads and the reason
    assert main(["predict", *common, "--out", str(out), "--leads", "12L"]) == 0
    skipped = {r["record_id"]: r for r in read_csv(out.with_name("scores.skipped.csv"))}
    assert {k: v["reason"] for k, v in skipped.items()} == {"flat_v": "flat-line", "spike_v2": "amplitude"}
    assert "in leads V2" in skipped["spike_v2"]["message"] and {r["record_id"] for r in read_csv(out)} == {
        "00001_lr", "00002_lr"}


def test_fine_tuning_on_6_leads_keeps_them_and_warns_about_thin_validation(ptbxl_root, tmp_path, capsys, caplog):
    site = hospital(tmp_path / "site", ptbxl_root, range(1, 41), broken=True)
    assert prepare(site, tmp_path / "cache", "site") == 0
    (path,) = (tmp_path / "cache").glob("site-*")
    cohort = load_cohort(path)
    crafted = {"flat_v_00001_lr", "spike_00002_lr"}
    assert crafted <= set(cohort.record_ids) and len(cohort) == 42
    out = tmp_path / "ft"
    with caplog.at_level(logging.WARNING, logger="lsemvae.train.finetune"):
        assert main(["finetune", "--cache", str(path), "--epochs", "1", "--val-fraction", "0.3", "--test-fraction",
                     "0.1", "--out", str(out)]) == 0
    ckpt = torch.load(out / "model.pt", weights_only=True)
    split = ckpt["provenance"]["split"]
    used = ckpt["provenance"]["n_train"] + len(split["val_ids"]) + len(split["test_ids"])
    assert used == 42  # the crafted records are in (6 limb leads fine-tuned); before, QC had refused both
    twelve = cohort_split(cohort, val_fraction=0.3, test_fraction=0.1, leads="12L")
    assert sum(map(len, twelve[:3])) == 40 and not crafted & {cohort.record_ids[i] for p in twelve[:3] for i in p}
    # item 7: 12 validation patients cannot choose an epoch; said in the log and the saved metrics
    saved = json.loads((out / "finetune.json").read_text())["warnings"]
    assert saved and all("early stopping on little evidence" in w and f"fewer than {MIN_VALIDATION_CASES}" in w
                         for w in saved)
    assert any("superclass:HYP" in w for w in saved) and [r.getMessage() for r in caplog.records] == saved
    assert ckpt["state"]["warnings"] == saved


def test_a_6_lead_federated_site_trains_on_them_with_its_own_label_columns(ptbxl_root, tmp_path):
    from lsemvae.federation.runtime import load_site_data
    from lsemvae.site import SiteConfig

    columns = ["normal", "infarct", "st_t", "conduction", "hypertrophy"]
    site = hospital(tmp_path / "site", ptbxl_root, range(1, 31), columns=tuple(columns), broken=True)
    pre = get_profile("compact").preprocess_config().model_dump_json()
    used = {}
    for leads in ("6L", "12L"):
        cfg = SiteConfig.model_validate({
            "name": f"site{leads.lower()}", "leads": leads, "state_dir": str(tmp_path / f"state{leads}"),
            "anchor_dir": str(tmp_path / "anchors"),
            "data": {"format": "manifest", "root": str(site / "records"), "labels": str(site / "labels.csv")},
            "tasks": [{"name": "superclass", "columns": columns}], "privacy": {"epsilon": 8.0},
            "connection": {"superlink": "127.0.0.1:8000"}})
        data = load_site_data(cfg, pre)
        used[leads] = {data.cohort.record_ids[i] for i in np.concatenate([data.train_idx, data.eval_idx])}
        originals = [data.cohort.record_ids.index(f"{n:05d}_lr") for n in range(1, 31)]
        assert np.array_equal(np.asarray(data.cohort.labels["superclass"])[originals], truth(ptbxl_root, range(1, 31)),
                              equal_nan=True)  # the site's columns bound to the superclass head
    crafted = {"flat_v_00001_lr", "spike_00002_lr"}
    assert crafted <= used["6L"] and not crafted & used["12L"] and used["6L"] - used["12L"] == crafted


# --- item 5: padding is not scored as signal ------------------------------------------------------------------------


def test_a_short_record_is_scored_on_crops_inside_its_real_signal(ptbxl_root, ckpt_path, tmp_path):
    from lsemvae.train.evaluate import load_classifier

    short = edited_copy(ptbxl_root / "records100" / "00000" / "00001_lr.hea", tmp_path / "ecgs", "short_7s3",
                        first_seconds(7.3))
    model, _ = load_classifier(ckpt_path)
    cohort = build_cohort(folder_index(short.parent), [], model.config.preprocess_config(), tmp_path / "cache",
                          name="short", progress=False)
    item = CohortDataset(cohort, leads="6L", tasks=[])[0]
    x, mask, real = item["x"][None], item["lead_mask"][None], item["sample_mask"][None]
    assert int(real.sum()) == 730 and (x[..., 730:] == 0).all()
    with torch.no_grad():
        scored = crop_averaged_logits(model, x, mask, sample_mask=real, **CROPS)["superclass"]
        inside = torch.stack([model.forward_logits(x[..., s:s + 500], mask)["superclass"] for s in (0, 115, 230)]).mean(0)
        padded = torch.stack([model.forward_logits(x[..., s:s + 500], mask)["superclass"] for s in (0, 250, 500)]).mean(0)
        old = crop_averaged_logits(model, x, mask, **CROPS)["superclass"]  # no mask: what scoring did before
    assert torch.allclose(scored, inside, atol=1e-6) and torch.allclose(old, padded, atol=1e-6)
    assert (scored - padded).abs().max() > 1e-3  # the last old crop was 54% zeros
    # lsemvae predict scores it the same way
    out = tmp_path / "scores.csv"
    assert main(["predict", "--checkpoint", str(ckpt_path), str(short.parent), "--out", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--no-progress"]) == 0
    p = [float(read_csv(out)[0][f"p:superclass:{c}"]) for c in CLASSES]
    assert np.allclose(p, torch.sigmoid(inside)[0].numpy(), atol=1e-5)
    # a record shorter than a crop is scored on its real samples alone
    with torch.no_grad():
        three = torch.zeros_like(real)
        three[..., :300] = True
        alone = model.forward_logits(x[..., :300], mask)["superclass"]
        assert torch.allclose(crop_averaged_logits(model, x, mask, sample_mask=three, **CROPS)["superclass"], alone,
                              atol=1e-6)
    # training crops stay inside the real samples too
    starts = set()
    for seed in range(40):
        crop = augment(x, AugmentConfig(crop_samples=500), torch.Generator().manual_seed(seed), sample_mask=real)
        starts.add(int(torch.nonzero((x[0, 0].unfold(0, 500, 1) == crop[0, 0]).all(1))[0]))
    assert max(starts) <= 230 and len(starts) > 10


# --- item 7: early stopping on nothing -------------------------------------------------------------------------------


def test_thin_validation_threshold_and_its_reason():
    assert auroc_standard_error(0.8, MIN_VALIDATION_CASES, 1000) == pytest.approx(0.05, abs=0.002)
    assert auroc_standard_error(0.8, 13, 1000) == pytest.approx(0.074, abs=0.002)
    y = np.array([[1.0, 0.0]] * 13 + [[0.0, 1.0]] * 40 + [[0.0, 0.0]] * 40)
    warnings = thin_validation({"t": (y, y)}, {"t": type("T", (), {"classes": ("a", "b")})()}, 1, 1.0)
    assert len(warnings) == 1 and "only 13 positive label(s) for t:a" in warnings[0] and "epoch 1 (1.000)" in warnings[0]
    assert thin_validation({"t": (y[:, 1:], y[:, 1:])}, {}, 3, 0.9) == []


def test_finetune_result_carries_the_warning(ptbxl_root, tmp_path):
    """The library call (what benchmarks and the CLI use) returns the warnings with its result."""
    from lsemvae.data.sources import ptbxl_index
    from lsemvae.data.tasks import get_task

    refs = ptbxl_index(ptbxl_root)[:60]
    cohort = build_cohort(refs, ["superclass"], get_profile("compact").preprocess_config(), tmp_path, name="thin",
                          progress=False)
    task = get_task("superclass")
    model = build_model(get_profile("compact", tasks={"superclass": TaskHeadSpec(kind="multilabel", n_outputs=5)}))
    cfg = FINETUNE_PROFILES["compact"].model_copy(update={"epochs": 1})
    result = finetune(model, CohortDataset(cohort, range(40), leads="6L"), CohortDataset(cohort, range(40, 60),
                      leads="6L"), {"superclass": task}, cfg, progress=False)
    assert len(result["warnings"]) == 5  # 20 validation records: every class is thin
