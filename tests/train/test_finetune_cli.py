"""`lsemvae finetune` runs every method of the comparison through one command and folds:
the CNN baseline, a random-encoder probe with a fusion ablation, and `lsemvae evaluate` scores them."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from lsemvae.cli import main


@pytest.fixture(scope="module")
def mini_ptbxl(ptbxl_root, tmp_path_factory):
    """A PTB-XL root with 40 records from each of folds 1, 9 and 10 (the real files, linked)."""
    root = tmp_path_factory.mktemp("mini-ptbxl")
    table = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    table = table[table["ecg_id"] < 1017]  # 1017-1034 are partial records (data README)
    pick = pd.concat([table[table["strat_fold"] == f].head(40) for f in (1, 9, 10)])
    pick.to_csv(root / "ptbxl_database.csv", index=False)
    shutil.copy(ptbxl_root / "scp_statements.csv", root / "scp_statements.csv")
    (root / "records100").symlink_to(ptbxl_root / "records100", target_is_directory=True)
    return root


@pytest.mark.e2e
def test_cnn_baseline_and_fusion_ablation_through_the_finetune_command(mini_ptbxl, tmp_path):
    common = ["--ptbxl", str(mini_ptbxl), "--cache-dir", str(tmp_path / "cache"), "--epochs", "2"]
    assert main(["finetune", "--model", "cnn", *common, "--out", str(tmp_path / "cnn")]) == 0
    cnn = json.loads((tmp_path / "cnn" / "finetune.json").read_text())
    assert len(cnn["history"]) == 2
    assert cnn["best_val_auroc"] == max(h["val_macro_auroc"] for h in cnn["history"])   # the model kept is the best epoch's

    assert main(["finetune", "--mode", "probe", "--fusion", "moe", *common, "--out", str(tmp_path / "moe")]) == 0
    import torch
    ckpt = torch.load(tmp_path / "moe" / "model.pt", weights_only=True)
    assert ckpt["model_config"]["fusion"] == "moe" and ckpt["provenance"]["finetune_config"]["mode"] == "probe"
    split = ckpt["provenance"]["split"]  # PTB-XL keeps its official folds: 9 validates, 10 is held out
    assert split["method"] == "ptbxl-folds" and (len(split["val_ids"]), len(split["test_ids"])) == (40, 40)

    for name in ("cnn", "moe"):
        assert main(["evaluate", "--checkpoint", str(tmp_path / name / "model.pt"), "--ptbxl", str(mini_ptbxl),
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / f"eval-{name}"),
                     "--n-boot", "50", "--no-interpret"]) == 0
        report = json.loads((tmp_path / f"eval-{name}" / "report.json").read_text())
        # fold 10 scored, thresholds from fold 9; the same 6 limb leads the model was fine-tuned on
        assert (report["provenance"]["n_test"], report["provenance"]["n_val"]) == (40, 40)
        assert report["provenance"]["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF"]


def test_cnn_refuses_a_pretrained_checkpoint_or_probe(mini_ptbxl, tmp_path, capsys):
    code = main(["finetune", "--model", "cnn", "--mode", "probe", "--ptbxl", str(mini_ptbxl), "--out", str(tmp_path)])
    assert code == 2 and "--model cnn" in capsys.readouterr().err


@pytest.mark.e2e
def test_pretrain_amplitude_flag_carries_through_the_checkpoint_to_fine_tuning(mini_ptbxl, tmp_path):
    import torch
    common = ["--ptbxl", str(mini_ptbxl), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1"]
    assert main(["pretrain", "--amplitude", "standardised", *common, "--out", str(tmp_path / "pre")]) == 0
    pre = torch.load(tmp_path / "pre" / "best.pt", weights_only=True)
    assert pre["model_config"]["amplitude"] == "standardised"
    assert pre["provenance"]["preprocess_config"]["amplitude"] == "standardised"
    # fine-tuning preprocesses as the checkpoint's model reads (a mismatch would be refused)
    assert main(["finetune", "--checkpoint", str(tmp_path / "pre" / "best.pt"), *common, "--out", str(tmp_path / "ft")]) == 0
    ft = torch.load(tmp_path / "ft" / "model.pt", weights_only=True)
    assert ft["provenance"]["preprocess_config"]["amplitude"] == "standardised"
