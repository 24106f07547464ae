"""``lsemvae data inspect`` and ``prepare`` through the real CLI entry point."""

from __future__ import annotations

import json
import shutil

import pytest

from lsemvae.cli import main
from lsemvae.data.cache import load_cohort

from .conftest import synthetic_ecg, write_wfdb


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_inspect_ptbxl_root_counts_both_rates_and_labels(ptbxl_root, capsys):
    assert main(["data", "inspect", str(ptbxl_root), "--limit", "20", "--json", "--no-progress"]) == 0
    report = _json(capsys)
    assert report["dataset"] == "ptb-xl"
    lo, hi = report["groups"]["100 Hz files"], report["groups"]["500 Hz files"]
    assert lo["sampling_rates"] == {"100 Hz": 20} and hi["sampling_rates"] == {"500 Hz": 20}
    assert lo["lead_sets"] == {"12L": 20} and lo["durations"] == {"10.0 s": 20} and lo["qc_passed"] == 20
    assert lo["labels"]["superclass"]["NORM"] > 0 and "site" in lo


def test_inspect_text_summary_for_ludb(ludb_root, capsys):
    assert main(["data", "inspect", str(ludb_root), "--limit", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "records: 10 (10 patients)" in out and "500 Hz: 10" in out and "12L: 10" in out
    assert "right_heart:" in out and "QC at 100 Hz" in out


def test_inspect_folder_with_bad_records_never_crashes(tmp_path, ptbxl_root, capsys):
    write_wfdb(tmp_path, "good", synthetic_ecg(fs=500))
    bad = write_wfdb(tmp_path, "badlead", synthetic_ecg(fs=500))
    bad.write_text(bad.read_text().replace(" V6\n", " Pleth\n"))
    trunc = write_wfdb(tmp_path, "trunc", synthetic_ecg(fs=500))
    trunc.with_suffix(".dat").write_bytes(b"\0" * 100)
    for ext in ("hea", "dat"):
        shutil.copy(ptbxl_root / f"records100/01000/01017_lr.{ext}", tmp_path / f"01017_lr.{ext}")
    assert main(["data", "inspect", str(tmp_path), "--json", "--no-progress"]) == 0
    s = _json(capsys)["groups"]["folder"]
    assert s["records"] == 4 and s["read_ok"] == 2 and s["qc_passed"] == 1
    assert s["read_failures"] == {"unknown-lead": 1, "truncated-signal": 1}
    assert s["qc_failures"] == {"nan-share": 1}
    assert any("badlead.hea" in e for e in s["examples"]["unknown-lead"])


def test_prepare_builds_then_reuses_cache(ludb_root, tmp_path, capsys):
    args = ["data", "prepare", "--root", str(ludb_root), "--cache-dir", str(tmp_path), "--limit", "8",
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cohort ludb-100hz: 8 records kept, 0 skipped" in out and "signals (8, 12, 1000)" in out
    (cache,) = [p for p in tmp_path.iterdir() if p.name.startswith("ludb-100hz-")]
    cohort = load_cohort(cache)
    assert set(cohort.labels) == {"right_heart", "right_heart_axis", "phenotype", "left_atrial", "left_atrial_lvh"}
    assert main(args) == 0 and len(list(tmp_path.iterdir())) == 1
    # the default is what the compact model reads; the faithful profile's standardised signals are another cache
    from lsemvae.model.config import get_profile
    assert cohort.config == get_profile("compact").preprocess_config()
    assert main(args + ["--amplitude", "standardised"]) == 0 and len(list(tmp_path.iterdir())) == 2


def test_prepare_manifest_site(tmp_path, capsys):
    site = tmp_path / "site"
    for i in range(3):
        write_wfdb(site / "records", f"r{i}", synthetic_ecg(fs=250, seed=i), fs=250)
    (site / "labels.csv").write_text("record_id,patient_id,cath_ph,age\nr0,p0,1,50\nr1,p1,0,61\nr2,p1,,70\n")
    assert main(["data", "prepare", "--root", str(site), "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 0
    assert "tasks: cath_ph" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "prepare", "--dataset", "ptb-xl", "--root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ptbxl_database.csv" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--tasks"])
