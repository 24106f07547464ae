"""`lsemvae predict` on real PTB-XL files: scores as evaluation gives them, bad records listed with
their reason, lead sets, thresholds from a real evaluation report, and the command's errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from lsemvae.cli import main
from lsemvae.data.cache import CohortDataset, build_cohort
from lsemvae.data.sources import ptbxl_index
from lsemvae.data.tasks import get_task
from lsemvae.leads import LIMB_LEADS
from lsemvae.model.config import TaskHeadSpec, get_profile
from lsemvae.model.lsemvae import build_model
from lsemvae.train.baselines import ResNet1D
from lsemvae.train.checkpoint import save_checkpoint
from lsemvae.train.evaluate import EvalConfig, evaluate, load_classifier, load_split
from lsemvae.train.finetune import predict
from lsemvae.train.interpret import gate_weights
from lsemvae.train.predict_command import head_tasks, input_refs, predict_cohort

CROPS = {"crop_samples": 500, "n_crops": 3}
CLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]


def copy_records(src, dest, numbers):
    dest.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        for ext in ("hea", "dat"):
            shutil.copy(src / f"{n:05d}_lr.{ext}", dest)
    return dest


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def records100(ptbxl_root):
    return ptbxl_root / "records100" / "00000"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def labelled(ptbxl_root, ckpt_path, cache_dir):
    """The same ten records indexed as PTB-XL, with labels: the path evaluation takes."""
    model, ckpt = load_classifier(ckpt_path)
    refs = [r for r in ptbxl_index(ptbxl_root) if r.meta["ecg_id"] <= 10]
    return build_cohort(refs, [get_task("superclass")], model.config.preprocess_config(), cache_dir,
                        name="ptbxl-labelled", progress=False)


def test_scores_a_folder_as_evaluation_scores_it(records100, ckpt_path, cache_dir, labelled, tmp_path, capsys):
    folder = copy_records(records100, tmp_path / "new-ecgs", range(1, 11))
    out = tmp_path / "scores.csv"
    assert main(["predict", "--checkpoint", str(ckpt_path), str(folder), "--out", str(out),
                 "--cache-dir", str(cache_dir), "--no-progress"]) == 0
    assert "scored 10 record(s)" in capsys.readouterr().out
    rows = read_csv(out)
    assert list(rows[0]) == ["record_id", "path", "leads", "qc", *(f"p:superclass:{c}" for c in CLASSES),
                             "gate:limb", "gate:augmented", "gate:septal", "gate:lateral"]
    assert [r["record_id"] for r in rows] == [f"{n:05d}_lr" for n in range(1, 11)]
    assert rows[0]["path"] == str(folder / "00001_lr.hea")
    assert {r["leads"] for r in rows} == {"I II III aVR aVL aVF"}
    p = np.array([[float(r[f"p:superclass:{c}"]) for c in CLASSES] for r in rows])
    assert ((p >= 0) & (p <= 1)).all() and p.std(0).min() > 1e-4  # real scores, not a constant

    model, _ = load_classifier(ckpt_path)
    task = get_task("superclass")
    _, expected = predict(model, CohortDataset(labelled, leads=LIMB_LEADS, tasks=["superclass"]),
                          {"superclass": task}, **CROPS)["superclass"]
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)  # the CSV keeps 6 significant digits
    gates, groups = gate_weights(model, *load_split(labelled, range(10), LIMB_LEADS))
    got = np.array([[float(r[f"gate:{g}"]) for g in groups] for r in rows])
    np.testing.assert_allclose(got, gates, rtol=1e-5, atol=1e-6)
    assert (got[:, 2:] == 0).all() and np.allclose(got.sum(1), 1, atol=1e-5)  # 6 leads: no precordial weight
    assert not (tmp_path / "scores.skipped.csv").exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["new-ecgs", "scores.csv"]  # no temporary file left

    # a prepared cohort (here the labelled one) is scored the same way, its own source files in `path`
    assert main(["predict", "--checkpoint", str(ckpt_path), "--cache", str(labelled.path),
                 "--out", str(tmp_path / "cached.csv"), "--no-progress"]) == 0
    cached = read_csv(tmp_path / "cached.csv")
    assert [r["path"] for r in cached] == labelled.paths and [r["record_id"] for r in cached] == labelled.record_ids
    np.testing.assert_allclose([[float(r[f"p:superclass:{c}"]) for c in CLASSES] for r in cached], p, rtol=1e-5)


def test_bad_records_are_listed_with_their_reason_and_the_rest_scored(records100, ckpt_path, cache_dir, tmp_path,
                                                                      capsys):
    folder = copy_records(records100, tmp_path / "ecgs", [1, 2, 3, 11, 12])
    dat = folder / "00011_lr.dat"
    dat.write_bytes(dat.read_bytes()[:4000])
    hea = folder / "00012_lr.hea"
    hea.write_text(hea.read_text().replace(" V6\n", " Pleth\n"))
    out = tmp_path / "out" / "scores.csv"
    args = ["predict", "--checkpoint", str(ckpt_path), str(folder), "--out", str(out), "--cache-dir", str(cache_dir),
            "--no-progress"]
    assert main(args) == 0
    assert [r["record_id"] for r in read_csv(out)] == ["00001_lr", "00002_lr", "00003_lr"]
    skipped = {r["record_id"]: r for r in read_csv(tmp_path / "out" / "scores.skipped.csv")}
    assert {k: r["reason"] for k, r in skipped.items()} == {"00011_lr": "truncated-signal", "00012_lr": "unknown-lead"}
    assert skipped["00012_lr"]["path"] == str(hea) and "Pleth" in skipped["00012_lr"]["message"]
    summary = capsys.readouterr().out
    assert "skipped 2 (truncated-signal 1, unknown-lead 1; listed in" in summary

    # fixed files: the next run's output has no skipped list beside it (an old one would mislead)
    copy_records(records100, folder, [11, 12])
    assert main(args) == 0
    assert len(read_csv(out)) == 5 and not (tmp_path / "out" / "scores.skipped.csv").exists()


def test_lead_sets_and_a_record_without_any_of_them(records100, ckpt_path, cache_dir, tmp_path):
    import wfdb

    from lsemvae.data.readers import read_record

    folder = copy_records(records100, tmp_path / "ecgs", [1, 2, 3])
    rec = read_record(records100 / "00013_lr.hea")  # a real record reduced to its chest leads
    chest = [i for i, lead in enumerate(rec.leads) if lead.startswith("V")]
    wfdb.wrsamp("chest", fs=rec.fs, units=["mV"] * 6, sig_name=[rec.leads[i] for i in chest],
                p_signal=rec.signal[chest].T.astype(np.float64), fmt=["16"] * 6, adc_gain=[1000.0] * 6,
                baseline=[0] * 6, write_dir=str(folder))
    model, ckpt = load_classifier(ckpt_path)
    cohort = build_cohort(input_refs([folder]), [], model.config.preprocess_config(), cache_dir, name="leads",
                          progress=False)
    tasks = head_tasks(model)

    def score(leads):
        rows, skipped = predict_cohort(model, cohort, tasks, leads=leads, predict_kwargs=CROPS, progress=False)
        return {r["record_id"]: r for r in rows}, {s["record_id"]: s for s in skipped}

    six, skipped = score("6L")
    assert set(six) == {"00001_lr", "00002_lr", "00003_lr"} and set(skipped) == {"chest"}
    assert skipped["chest"]["reason"] == "no-requested-leads" and "V1 V2 V3 V4 V5 V6" in skipped["chest"]["message"]
    assert skipped["chest"]["path"] == str(folder / "chest.hea")

    two, skipped = score("I,II")
    assert {r["leads"] for r in two.values()} == {"I II"} and set(skipped) == {"chest"}
    assert two["00001_lr"]["p:superclass:NORM"] != six["00001_lr"]["p:superclass:NORM"]

    twelve, skipped = score("12L")  # LS-EMVAE scores a record lacking some leads through its lead mask
    assert not skipped and twelve["chest"]["leads"] == "V1 V2 V3 V4 V5 V6"
    assert twelve["00001_lr"]["leads"] == "I II III aVR aVL aVF V1 V2 V3 V4 V5 V6"
    assert twelve["chest"]["gate:limb"] == 0 and twelve["chest"]["gate:augmented"] == 0


def test_a_federated_model_reads_every_lead_a_record_has(records100, ckpt_path, cache_dir, tmp_path):
    """The federation's final-model.pt records no lead set (its sites trained on the leads they had)."""
    from lsemvae.train.checkpoint import load_checkpoint

    model, ckpt = load_classifier(ckpt_path)
    fed = tmp_path / "final-model.pt"
    save_checkpoint(fed, model=model, epoch=3, provenance={"preprocess_config": ckpt["provenance"]["preprocess_config"],
                                                           "federation": {"rounds": 3}})
    assert "leads" not in load_checkpoint(fed)["provenance"]
    folder = copy_records(records100, tmp_path / "ecgs", [1, 2])
    out = tmp_path / "scores.csv"
    assert main(["predict", "--checkpoint", str(fed), str(folder), "--out", str(out), "--cache-dir", str(cache_dir),
                 "--no-progress"]) == 0
    assert {r["leads"] for r in read_csv(out)} == {"I II III aVR aVL aVF V1 V2 V3 V4 V5 V6"}


def test_cnn_checkpoint_through_the_command_and_user_errors(records100, ckpt_path, cache_dir, labelled, tmp_path,
                                                            capsys):
    folder = copy_records(records100, tmp_path / "ecgs", [1, 2, 3])
    torch.manual_seed(0)
    cnn = ResNet1D({"superclass": get_task("superclass")}, widths=(8, 16))
    save_checkpoint(tmp_path / "cnn.pt", model=cnn, epoch=0, provenance={"leads": list(LIMB_LEADS)})
    out = tmp_path / "cnn.csv"
    common = ["--cache-dir", str(cache_dir), "--no-progress"]
    assert main(["predict", "--checkpoint", str(tmp_path / "cnn.pt"), str(folder / "00001_lr.hea"),
                 str(folder / "00002_lr.dat"), str(folder), "--out", str(out), "--leads", "I,II,III", *common]) == 0
    rows = read_csv(out)  # the record named twice (file and folder) is scored once
    assert [r["record_id"] for r in rows] == ["00001_lr", "00002_lr", "ecgs/00003_lr"]
    assert list(rows[0])[4:] == [f"p:superclass:{c}" for c in CLASSES]  # no gates in a CNN
    assert {r["leads"] for r in rows} == {"I II III"}
    capsys.readouterr()

    (tmp_path / "empty").mkdir()
    headless = tmp_path / "pretrained.pt"
    save_checkpoint(headless, model=build_model(get_profile("compact")), epoch=0)
    missing = tmp_path / "no-such-folder"
    cases = [
        (["--checkpoint", str(ckpt_path), str(missing)], [str(missing), "no such file or folder"]),
        (["--checkpoint", str(tmp_path / "nope.pt"), str(folder)], [str(tmp_path / "nope.pt"), "checkpoint not found"]),
        (["--checkpoint", str(headless), str(folder)], [str(headless), "no task heads"]),
        (["--checkpoint", str(ckpt_path), str(tmp_path / "empty")], [str(tmp_path / "empty"), "no ECG records found"]),
        (["--checkpoint", str(ckpt_path)], ["INPUT", "--cache"]),
        # the CNN reads standardised signals, this cache holds millimetres (what the LS-EMVAE profile reads)
        (["--checkpoint", str(tmp_path / "cnn.pt"), "--cache", str(labelled.path)],
         [str(labelled.path), "standardised"]),
        (["--checkpoint", str(tmp_path / "cnn.pt"), str(folder), "--leads", "12L"],
         ["reads only I II III aVR aVL aVF"]),
        (["--checkpoint", str(ckpt_path), str(tmp_path / "cnn.pt")], ["no record under", "unknown-format",
                                                                       "lsemvae data inspect"]),
    ]
    for args, expected in cases:
        assert main(["predict", *args, "--out", str(tmp_path / "x.csv"), *common]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert all(part in err for part in expected), (expected, err)
    assert not (tmp_path / "x.csv").exists()


def test_thresholds_from_an_evaluation_report(records100, ckpt_path, cache_dir, labelled, tmp_path, capsys):
    model, ckpt = load_classifier(ckpt_path)
    evaluate(model, labelled, np.arange(10), EvalConfig(leads=LIMB_LEADS, predict_kwargs=CROPS, n_boot=10,
                                                         interpretability=False, progress=False),
             val_indices=np.arange(10), out_dir=tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    thresholds = {c: report["tasks"]["superclass"]["per_class"][c]["threshold"] for c in CLASSES}

    folder = copy_records(records100, tmp_path / "ecgs", range(1, 11))
    out = tmp_path / "scores.csv"
    args = ["predict", "--checkpoint", str(ckpt_path), str(folder), "--out", str(out), "--cache-dir", str(cache_dir),
            "--no-progress", "--thresholds"]
    assert main([*args, str(tmp_path / "eval" / "report.json")]) == 0
    rows = read_csv(out)
    assert list(rows[0])[-5:] == [f"call:superclass:{c}" for c in CLASSES]
    for c in CLASSES:
        p = np.array([float(r[f"p:superclass:{c}"]) for r in rows])
        call = np.array([int(r[f"call:superclass:{c}"]) for r in rows])
        clear = np.abs(p - thresholds[c]) > 1e-5  # the CSV's 6 digits cannot settle a score at the threshold itself
        assert ((p[clear] >= thresholds[c]) == call[clear]).all(), c
    assert {r[f"call:superclass:{c}"] for r in rows for c in CLASSES} <= {"0", "1"}

    del report["tasks"]["superclass"]["per_class"]["HYP"]
    (tmp_path / "partial.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main([*args, str(tmp_path / "partial.json")]) == 2
    err = capsys.readouterr().err
    assert "partial.json" in err and "'HYP'" in err
