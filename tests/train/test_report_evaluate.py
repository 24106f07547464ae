"""End-to-end evaluation on real PTB-XL records: function and `lsemvae evaluate` agree, files written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lsemvae.cli import main
from lsemvae.data.cache import build_cohort, ptbxl_folds
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.sources import ptbxl_index
from lsemvae.data.tasks import get_task
from lsemvae.train.baselines import ResNet1D
from lsemvae.train.checkpoint import save_checkpoint
from lsemvae.train.evaluate import EvalConfig, compare_predictions, evaluate, read_predictions

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort(ptbxl_root, tmp_path_factory):
    refs = ptbxl_index(ptbxl_root)
    pick = [r for r in refs if r.meta["strat_fold"] == 9][:30] + [r for r in refs if r.meta["strat_fold"] == 10][:50]
    return build_cohort(pick, [get_task("superclass")], PreprocessConfig(), tmp_path_factory.mktemp("cache"),
                        name="ptbxl-eval-test", progress=False)


@pytest.mark.e2e
def test_evaluate_function_and_command_agree(cohort, tmp_path):
    torch.manual_seed(0)
    model = ResNet1D({"superclass": get_task("superclass")}, widths=(8, 16)).eval()
    _, val, test = ptbxl_folds(cohort)
    res = evaluate(model, cohort, test, EvalConfig(n_boot=100, ig_steps=4, ig_per_class=2, progress=False),
                   val_indices=val, out_dir=tmp_path / "fn")
    summary = res["tasks"]["superclass"]
    ids, preds = read_predictions(tmp_path / "fn" / "predictions.csv")
    assert ids == [cohort.record_ids[i] for i in test]
    y, p, names = preds["superclass"]
    assert names == ["NORM", "MI", "STTC", "CD", "HYP"]
    ok = ~np.isnan(y[:, 0])
    assert summary["per_class"]["NORM"]["auroc"] == pytest.approx(roc_auc_score(y[ok, 0], p[ok, 0]), abs=1e-5)
    # the ablation's "all leads" score is the reported test score (same scoring path)
    assert res["lead_ablation"]["superclass"]["full"] == pytest.approx(summary["macro"]["auroc"], abs=1e-5)
    assert abs(sum(res["lead_shares"]["superclass"]["overall"]) - 1) < 1e-6
    assert res["provenance"]["cache_key"] == cohort.key and res["provenance"]["pipeline_version"]

    save_checkpoint(tmp_path / "cnn.pt", model=model, epoch=0, provenance={"leads": ["I", "II", "III", "aVR", "aVL", "aVF"]})
    code = main(["evaluate", "--checkpoint", str(tmp_path / "cnn.pt"), "--cache", str(cohort.path),
                 "--out", str(tmp_path / "cli"), "--n-boot", "100", "--no-interpret"])
    assert code == 0
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert cli["tasks"]["superclass"]["macro"] == summary["macro"]
    assert "data:image/png;base64," in (tmp_path / "cli" / "report.html").read_text()
    same = compare_predictions(tmp_path / "fn" / "predictions.csv", tmp_path / "cli" / "predictions.csv", n_boot=50)
    assert same["superclass"]["macro"]["diff"] == 0
    assert main(["compare", str(tmp_path / "fn" / "predictions.csv"), str(tmp_path / "cli" / "predictions.csv"),
                 "--n-boot", "50", "--out", str(tmp_path / "cmp.json")]) == 0
    assert json.loads((tmp_path / "cmp.json").read_text())["tasks"]["superclass"]["macro"]["ci"] == [0.0, 0.0]


@pytest.mark.e2e
def test_evaluate_reports_gates_for_lsemvae(cohort, tmp_path):
    from lsemvae.model.config import TaskHeadSpec, get_profile
    from lsemvae.model.lsemvae import build_model

    torch.manual_seed(0)
    model = build_model(get_profile("compact", tasks={"superclass": TaskHeadSpec(kind="multilabel", n_outputs=5)}))
    _, val, test = ptbxl_folds(cohort)
    res = evaluate(model, cohort, test[:30], EvalConfig(n_boot=50, ig_steps=2, ig_per_class=1, progress=False),
                   val_indices=val)
    gates = res["gates"]["superclass"]
    assert gates["groups"] == ["limb", "augmented", "septal", "lateral"]
    assert gates["mean"][2] == 0 and gates["mean"][3] == 0  # 6-lead input: precordial groups carry no weight
    assert sum(gates["mean"]) == pytest.approx(1, abs=1e-5)
    rec = res["reconstruction"]
    assert rec["target"] == "beat" and rec["input_leads"] == ["I", "II", "III", "aVR", "aVL", "aVF"]
    assert set(rec["per_lead"]) == {"V1", "V2", "V3", "V4", "V5", "V6"}
    assert all(-1 <= v["pearson_r_mean"] <= 1 and v["rmse"] > 0 for v in rec["per_lead"].values())
