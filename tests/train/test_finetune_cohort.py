"""A hospital's own labelled cohort, end to end on real ECGs: `lsemvae data prepare` (manifest),
`lsemvae finetune --cache` on a recorded patient split, `lsemvae evaluate --split test|val|all`.

The "hospital" is real PTB-XL records copied into a site folder with a labels CSV whose columns
come from the real metadata (NORM statement, sex), so both classes occur; patients with several
records are included so that patient-disjointness is tested, not assumed.
"""

from __future__ import annotations

import ast
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lsemvae.cli import main
from lsemvae.data.cache import build_cohort, cohort_split, load_cohort, ptbxl_folds
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.sources import ptbxl_index
from lsemvae.data.tasks import get_task
from lsemvae.errors import ConfigError


def _site(root: Path, ptbxl_root: Path, table: pd.DataFrame) -> Path:
    """A site folder: the records' real WFDB files under records/ and labels.csv beside them."""
    rows = []
    for r in table.itertuples():
        stem = Path(r.filename_lr).name
        for ext in (".hea", ".dat"):
            (root / "records").mkdir(parents=True, exist_ok=True)
            shutil.copy(ptbxl_root / f"{r.filename_lr}{ext}", root / "records" / f"{stem}{ext}")
        # ph_cath: a catheter label every patient of this site tested negative on
        rows.append({"record_id": stem, "patient_id": f"p{int(r.patient_id)}",
                     "norm": int("NORM" in ast.literal_eval(r.scp_codes)), "male": int(r.sex == 0), "ph_cath": 0})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _prepare(site: Path, cache_dir: Path, name: str, tasks: str) -> Path:
    assert main(["data", "prepare", "--dataset", "manifest", "--root", str(site), "--labels", str(site / "labels.csv"),
                 "--tasks", tasks, "--cache-dir", str(cache_dir), "--name", name, "--no-progress"]) == 0
    (path,) = cache_dir.glob(f"{name}-*")
    return path


@pytest.fixture(scope="module")
def cohorts(ptbxl_root, tmp_path_factory):
    """(hospital, other): 80 records (30 of them from patients with 2+ records) and 30 other records."""
    tmp = tmp_path_factory.mktemp("sites")
    table = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    table = table[table["ecg_id"] < 1000]  # the staged records100/00000 files
    repeat = table["patient_id"].duplicated(keep=False)
    single = table[~repeat]
    hospital = _site(tmp / "hospital", ptbxl_root, pd.concat([table[repeat].head(30), single.head(50)]))
    other = _site(tmp / "other", ptbxl_root, single.iloc[50:80])
    return (load_cohort(_prepare(hospital, tmp / "cache", "hospital", "column:norm,column:male,column:ph_cath")),
            load_cohort(_prepare(other, tmp / "cache", "other", "column:norm")))


@pytest.fixture(scope="module")
def finetuned(cohorts, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    assert main(["finetune", "--cache", str(cohorts[0].path), "--task", "column:norm", "--epochs", "1",
                 "--out", str(out)]) == 0
    return torch.load(out / "model.pt", weights_only=True), out / "model.pt"


def _parts_by_patient(cohort, split):
    rows = {rid: i for i, rid in enumerate(cohort.record_ids)}
    val, test = ({rows[r] for r in split[k]} for k in ("val_ids", "test_ids"))
    train = set(range(len(cohort))) - val - test
    return [{cohort.patient_ids[i] for i in part} for part in (train, val, test)], train


@pytest.mark.e2e
def test_finetune_on_a_prepared_cohort_records_a_patient_disjoint_split(cohorts, finetuned):
    hospital, _ = cohorts
    ckpt, _ = finetuned
    split = ckpt["provenance"]["split"]
    assert (split["method"], split["val_fraction"], split["test_fraction"], split["seed"]) == ("patient", 0.15, 0.15, 0)
    assert split["cache_key"] == hospital.key and ckpt["model_config"]["tasks"].keys() == {"norm"}
    (train_p, val_p, test_p), train = _parts_by_patient(hospital, split)
    assert split["val_ids"] and split["test_ids"] and not (train_p & val_p or train_p & test_p or val_p & test_p)
    # every record not held out trained the model, none of the test records did
    assert ckpt["provenance"]["n_train"] == len(train) == len(hospital) - len(split["val_ids"]) - len(split["test_ids"])
    assert not {hospital.record_ids[i] for i in train} & set(split["test_ids"])
    # the repeat patients' records stay together wherever the split puts them
    assert len(train_p | val_p | test_p) < len(hospital)


@pytest.mark.e2e
def test_evaluate_scores_exactly_the_recorded_held_out_records(cohorts, finetuned, tmp_path):
    hospital, other = cohorts
    ckpt, model = finetuned
    split = ckpt["provenance"]["split"]
    common = ["--checkpoint", str(model), "--n-boot", "50", "--no-interpret"]
    for part, expected in (("test", split["test_ids"]), ("val", split["val_ids"]), ("all", hospital.record_ids)):
        out = tmp_path / part
        assert main(["evaluate", *common, "--cache", str(hospital.path), "--split", part, "--out", str(out)]) == 0
        with open(out / "predictions.csv", newline="") as fh:
            assert [row["record_id"] for row in csv.DictReader(fh)] == expected
        report = json.loads((out / "report.json").read_text())
        # test thresholds come from the recorded validation records; val and all use 0.5
        assert report["provenance"]["n_val"] == (len(split["val_ids"]) if part == "test" else 0)
        assert set(report["tasks"]) == {"norm"}

    # another cohort is external data: its "test part" does not exist, every record can be scored
    external = ["--cache", str(other.path), "--split", "all", "--out", str(tmp_path / "ext")]
    assert main(["evaluate", *common, *external]) == 0
    assert json.loads((tmp_path / "ext" / "report.json").read_text())["provenance"]["n_test"] == len(other)


def test_evaluate_refuses_the_test_split_of_another_cohort(cohorts, finetuned, tmp_path, capsys):
    _, other = cohorts
    for part in ("test", "val"):
        assert main(["evaluate", "--checkpoint", str(finetuned[1]), "--cache", str(other.path), "--split", part,
                     "--out", str(tmp_path / part), "--no-interpret"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert str(other.path) in err and other.key[:16] in err and "use --split all" in err
        assert not (tmp_path / part).exists()


def test_finetune_user_errors_name_the_cohort_task_and_fix(cohorts, tmp_path, capsys):
    hospital, _ = cohorts
    data = ["--cache", str(hospital.path)]
    cases = [
        # default tasks: every label column the cohort has, one of them all negative
        (data, ["'ph_cath'", "only one class", "0 positive", "training part", str(hospital.path), "--task"]),
        (data + ["--task", "column:mpap_gt20"],
         ["no labels for ['mpap_gt20']", "['norm', 'male', 'ph_cath']", "--tasks column:"]),
        (data + ["--task", "norm", "--val-fraction", "0.001"],
         ["patients are too few", "validation part would be empty", "--val-fraction"]),
        (["--cache", str(hospital.path.parent)], ["not a cohort cache", f"pass one of them, e.g. {hospital.path}"]),
        (["--cache", str(tmp_path)], ["not a cohort cache", "lsemvae data prepare"]),
        ([], ["no data given", "--ptbxl", "--cache"]),
    ]
    for args, expected in cases:
        assert main(["finetune", *args, "--epochs", "1", "--out", str(tmp_path / "ft")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert all(part in err for part in expected), (expected, err)
    assert not (tmp_path / "ft").exists()
    with pytest.raises(SystemExit):
        main(["finetune", *data, "--ptbxl", str(tmp_path)])
    assert "not allowed with argument" in capsys.readouterr().err


def test_cohort_split_keeps_ptbxl_folds_and_splits_other_cohorts_by_patient(cohorts, ptbxl_root, tmp_path):
    refs = ptbxl_index(ptbxl_root)
    pick = [r for f in (1, 9, 10) for r in [r for r in refs if r.meta["strat_fold"] == f][:6]]
    ptbxl = build_cohort(pick, [get_task("superclass")], PreprocessConfig(), tmp_path, name="folds", progress=False)
    train, val, test, record = cohort_split(ptbxl, val_fraction=0.5, seed=3)  # fractions and seed do not apply
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), ptbxl_folds(ptbxl)))
    assert record["method"] == "ptbxl-folds" and record["seed"] is None
    assert record["test_ids"] == [r.record_id for r in pick[12:]]

    hospital, other = cohorts
    first = cohort_split(hospital, seed=1)
    assert first[3] == cohort_split(hospital, seed=1)[3]  # deterministic for a seed
    assert first[3]["test_ids"] != cohort_split(hospital, seed=2)[3]["test_ids"]
    parts, _ = _parts_by_patient(hospital, first[3])
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == len(set(hospital.patient_ids))
    assert sorted(np.concatenate(first[:3]).tolist()) == list(range(len(hospital)))
    # a recorded split gives back the same rows on its own cohort, and is refused on any other
    again = cohort_split(hospital, seed=99, recorded=first[3])
    assert all(np.array_equal(a, b) for a, b in zip(first[:3], again[:3]))
    with pytest.raises(ConfigError, match="not the cohort the split was recorded on"):
        cohort_split(other, recorded=first[3])
    with pytest.raises(ConfigError, match="PTB-XL folds"):
        cohort_split(other, recorded=record)
