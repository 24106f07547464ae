"""Pretrained checkpoints: the shipped one loads by name with its sha256 checked, a tampered file is refused,
export round-trips bit for bit, a .pt keeps loading, the commands show what a checkpoint saw, and fine-tuning
and the simulation start from the shipped weights where real data is involved."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from lsemvae.cli import main
from lsemvae.errors import ConfigError
from lsemvae.model.config import get_profile
from lsemvae.model.lsemvae import build_model
from lsemvae.pretrained import CARD, DEFAULTS, META, WEIGHTS, locate, read_meta, sha256_bytes, shipped
from lsemvae.pretrained.export import export, pretrain_argv
from lsemvae.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

NAME = DEFAULTS["compact"]


def _tiny_pt(path: Path, **provenance) -> Path:
    torch.manual_seed(0)
    model = build_model(get_profile("compact", latent_dim=8, encoder_channels=(8, 8, 8, 8), decoder_hidden=16, gate_hidden=8))
    return save_checkpoint(path, model=model, epoch=3, provenance={"preprocess_config": model.config.preprocess_config()
                                                                   .model_dump(mode="json"), **provenance},
                           state={"best_epoch": 3, "best_val_loss": 1.5, "best_metrics": {"val_r2_mean": float("nan")}})


def test_the_shipped_checkpoint_loads_by_name_with_its_hash_checked():
    assert NAME in shipped()
    folder = locate(NAME)
    meta = read_meta(folder)
    data = (folder / WEIGHTS).read_bytes()
    assert sha256_bytes(data) == meta["weights"]["sha256"] and len(data) == meta["weights"]["bytes"] < 10_000_000
    ckpt = load_checkpoint(NAME)
    model = model_from_checkpoint(ckpt)  # strict: every tensor fits the recorded config
    assert sum(p.numel() for p in model.parameters()) == meta["weights"]["parameters"]
    assert ckpt["source"] == {"name": NAME, "path": str(folder), "sha256": meta["weights"]["sha256"], "shipped": True,
                              "pretrained_on": "ptb-xl (896 records) + ludb (199 records), PTB-XL fold(s) 10 excluded"}
    prov = ckpt["provenance"]
    # the protocol: PTB-XL folds 1-9 + LUDB, fold 10 never seen, 12 leads at 100 Hz in millimetres, seed and threads
    assert prov["excluded_folds"] == [10] and set(prov["data"]) == {"ptb-xl", "ludb"}
    assert (prov["preprocess_config"]["fs"], prov["preprocess_config"]["amplitude"]) == (100, "millimetres")
    assert prov["pretrain_config"]["seed"] == 0 and prov["environment"]["torch_threads"] == 1
    assert not prov["code"]["uncommitted_changes"] and len(prov["code"]["commit"]) == 40
    assert meta["reproduce"] == f"lsemvae pretrained reproduce {NAME} --ptbxl ../shared/data/ptb-xl --ludb ../shared/data/ludb"


def test_a_tampered_weights_file_is_refused_with_the_cause_and_the_fix(tmp_path, capsys):
    folder = shutil.copytree(locate(NAME), tmp_path / "copy")
    raw = bytearray((folder / WEIGHTS).read_bytes())
    raw[-5] ^= 0x01  # one bit of one weight
    (folder / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="damaged or altered, refusing to load them") as err:
        load_checkpoint(folder)
    assert str(folder / WEIGHTS) in str(err.value) and "lsemvae pretrained reproduce" in str(err.value)
    assert main(["pretrained", "verify", str(folder)]) == 2
    out = capsys.readouterr().err
    assert out.startswith("error: ") and out.count("\n") == 1 and "sha256" in out


def test_export_round_trips_bit_for_bit_and_keeps_provenance(tmp_path):
    pt = _tiny_pt(tmp_path / "best.pt", command="lsemvae pretrain --ptbxl /data/ptb-xl --out x",
                  data={"ptb-xl": {"records": 10, "patients": 9}})
    ckpt = load_checkpoint(pt)
    a = export(ckpt, tmp_path / "a", name="tiny-test")
    b = export(load_checkpoint(pt), tmp_path / "b", name="tiny-test")
    assert (a / WEIGHTS).read_bytes() == (b / WEIGHTS).read_bytes()  # same tensors -> same bytes -> same sha256
    back = load_checkpoint(a)
    assert back["model_state"].keys() == ckpt["model_state"].keys()
    assert all(torch.equal(back["model_state"][k], v) for k, v in ckpt["model_state"].items())
    meta = read_meta(a)
    assert meta["provenance"]["command"] == ckpt["provenance"]["command"]
    assert meta["training"]["best_metrics"]["val_r2_mean"] is None  # NaN is not JSON: written as null
    assert meta["reproduce"] == "lsemvae pretrained reproduce tiny-test --ptbxl /data/ptb-xl"
    card = (a / CARD).read_text()
    for section in ("## Intended use", "## Out-of-scope use", "## Training data", "## Input", "## Lead sets",
                    "## Evaluation", "## Limitations", "CC BY 4.0", meta["weights"]["sha256"]):
        assert section in card, section
    # evaluation figures survive a re-export of the same weights only
    write = json.loads((a / META).read_text())
    (a / META).write_text(json.dumps({**write, "evaluation": [{"title": "x", "rows": []}]}))
    assert read_meta(export(ckpt, a, name="tiny-test"))["evaluation"] == [{"title": "x", "rows": []}]
    ckpt["model_state"][next(iter(ckpt["model_state"]))] += 1
    assert read_meta(export(ckpt, a, name="tiny-test"))["evaluation"] == []


def test_export_refuses_a_fine_tuned_model_and_bad_names(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_profile("compact", tasks={"superclass": {"kind": "multilabel", "n_outputs": 5}}))
    pt = save_checkpoint(tmp_path / "ft.pt", model=model, epoch=1)
    with pytest.raises(ConfigError, match="pretraining checkpoint"):
        export(load_checkpoint(pt), tmp_path / "x", name="ft")
    with pytest.raises(ConfigError, match="lower-case letters"):
        export(load_checkpoint(_tiny_pt(tmp_path / "p.pt")), tmp_path / "y", name="../escape")


def test_a_pt_checkpoint_still_loads_and_records_its_source(tmp_path):
    pt = _tiny_pt(tmp_path / "best.pt", data="synthetic pretraining cohort")
    ckpt = load_checkpoint(pt)
    model_from_checkpoint(ckpt)
    assert ckpt["source"]["sha256"] == sha256_bytes(pt.read_bytes()) and ckpt["source"]["path"] == str(pt.resolve())
    assert ckpt["source"]["pretrained_on"].startswith("SYNTHETIC ECGs only")


def test_unknown_names_and_missing_paths_list_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match=f"no shipped checkpoint has this name; shipped: .*{NAME}"):
        load_checkpoint("compact-mimic")
    with pytest.raises(ConfigError, match=f"file not found; give the .pt .* or a shipped name \\(.*{NAME}"):
        load_checkpoint(tmp_path / "best.pt")
    with pytest.raises(ConfigError, match="folder without checkpoint.json"):
        load_checkpoint(tmp_path)


def test_list_show_verify_say_what_a_checkpoint_is(capsys):
    assert main(["pretrained", "list"]) == 0
    listing = capsys.readouterr().out
    sha = read_meta(locate(NAME))["weights"]["sha256"]
    assert NAME in listing and "943,045 parameters" in listing and "ludb (199 records)" in listing
    assert main(["pretrained", "show", NAME]) == 0
    assert capsys.readouterr().out.startswith(f"# Model card: `{NAME}`")
    assert main(["pretrained", "show", NAME, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"]["sha256"] == sha
    assert main(["pretrained", "verify", NAME, "--sha256", sha.upper()]) == 0
    assert f"sha256 {sha} = the expected one" in capsys.readouterr().out
    assert main(["pretrained", "verify", NAME, "--sha256", "0" * 64]) == 2
    assert "is not the expected" in capsys.readouterr().err


def test_reproduce_reruns_the_recorded_command_and_refuses_when_this_code_would_train_differently(tmp_path):
    meta = read_meta(locate(NAME))
    argv = pretrain_argv(meta, {"--ptbxl": ["P"], "--ludb": ["L"]}, tmp_path)
    assert argv[:5] == ["pretrain", "--ptbxl", "P", "--ludb", "L"]
    assert argv[argv.index("--seed") + 1] == "0" and argv[-2:] == ["--threads", "1"]
    assert argv[argv.index("--exclude-folds") + 1] == "10"
    with pytest.raises(ConfigError, match="pass --ludb"):
        pretrain_argv(meta, {"--ptbxl": ["P"]}, tmp_path)
    changed = {**meta, "provenance": {**meta["provenance"],
                                      "pretrain_config": {**meta["provenance"]["pretrain_config"], "weight_decay": 0.5}}}
    with pytest.raises(ConfigError, match="pretraining settings differ .*weight_decay.*check out commit"):
        pretrain_argv(changed, {"--ptbxl": ["P"], "--ludb": ["L"]}, tmp_path)


def test_simulation_starts_real_sites_from_the_shipped_weights_and_warns_about_synthetic_ones(tmp_path, capsys):
    from simulation.run import starting_checkpoint

    args = argparse.Namespace(checkpoint=None, data="real")
    assert starting_checkpoint(args) == NAME
    assert f"starting checkpoint: {NAME}" in capsys.readouterr().out
    synthetic = _tiny_pt(tmp_path / "synth.pt", data="synthetic pretraining cohort", synthetic_data=True)
    assert starting_checkpoint(argparse.Namespace(checkpoint=synthetic, data="real")) == str(synthetic.resolve())
    assert "REAL SITES, SYNTHETIC-PRETRAINED ENCODER" in capsys.readouterr().out
    starting_checkpoint(argparse.Namespace(checkpoint=synthetic, data="synthetic"))
    assert "REAL SITES" not in capsys.readouterr().out


def test_the_federated_report_names_the_starting_checkpoint(tmp_path):
    from server.report import write_report

    source = load_checkpoint(NAME)["source"]
    write_report(tmp_path, [], status="completed", checkpoint=source)
    assert f"Started from the pretrained checkpoint {NAME} (sha256 `{source['sha256']}`)" in \
        (tmp_path / "report" / "report.md").read_text()
    assert json.loads((tmp_path / "report" / "report.json").read_text())["checkpoint"] == source


@pytest.mark.e2e  # ~18 s of CPU (PTB-XL cache, probe, evaluation); 40 s on the shared 2-core machine
def test_the_shipped_weights_reproduce_the_cards_fold10_probe_figure(ptbxl_root, tmp_path, capsys):
    """What the card promises, redone with the user's commands: fine-tuning with no --checkpoint starts from the
    shipped weights, and the fold-10 macro AUROC of a 6-lead probe falls within the card's 95% CI."""
    meta = read_meta(locate(NAME))
    card = next(e for e in meta["evaluation"] if e.get("metric") == "test_macro_auroc")["figures"]["probe"]
    data = ["--ptbxl", str(ptbxl_root), "--cache-dir", str(tmp_path / "cache")]
    assert main(["finetune", *data, "--mode", "probe", "--leads", "6L", "--seed", "0", "--out", str(tmp_path / "ft")]) == 0
    assert f"no --checkpoint given: starting from the shipped pretrained checkpoint {NAME}" in capsys.readouterr().out
    ft = torch.load(tmp_path / "ft" / "model.pt", weights_only=True)
    assert ft["provenance"]["pretrained"]["sha256"] == meta["weights"]["sha256"]
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ft" / "model.pt"), *data, "--split", "test",
                 "--no-interpret", "--n-boot", "50", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    auroc = report["tasks"]["superclass"]["macro"]["auroc"]
    assert report["provenance"]["n_test"] == card["n_test"]
    assert card["ci"][0] <= auroc <= card["ci"][1], (auroc, card)
