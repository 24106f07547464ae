"""Dataset indexes: PTB-XL and LUDB metadata on the real files, site manifests and their errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from lsemvae.data.sources import ManifestError, folder_index, ludb_index, manifest_index, ptbxl_index
from lsemvae.errors import ConfigError

from .conftest import synthetic_ecg, write_wfdb


def test_ptbxl_index_100_hz(ptbxl_root):
    refs = ptbxl_index(ptbxl_root)
    assert len(refs) == 1046
    first = refs[0]
    assert first.record_id == "ptb-xl/00001" and first.patient_id == "ptb-xl/15709"
    m = first.meta
    assert m["scp_codes"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    assert m["diagnostic_classes"] == ["NORM"]
    assert (m["strat_fold"], m["site"], m["sex"], m["age"], m["heart_axis"]) == (3, 0, "F", 56.0, None)
    assert m["device"] == "CS-12   E" and m["source"] == "ptb-xl"
    folds = {r.meta["strat_fold"] for r in refs}
    assert folds == set(range(1, 11))
    rec = first.load()
    assert rec.record_id == "ptb-xl/00001" and rec.meta["strat_fold"] == 3 and rec.fs == 100


def test_ptbxl_index_500_hz_only_staged_files(ptbxl_root):
    refs = ptbxl_index(ptbxl_root, rate=500)
    assert len(refs) == 500 and all(r.path.name.endswith("_hr.hea") for r in refs)
    assert refs[-1].meta["ecg_id"] == 500


def test_ptbxl_index_errors(tmp_path, ptbxl_root):
    with pytest.raises(ManifestError, match="ptbxl_database.csv"):
        ptbxl_index(tmp_path)
    with pytest.raises(ConfigError, match="100 or 500"):
        ptbxl_index(ptbxl_root, rate=250)


def test_ludb_index_parses_multiline_cells(ludb_root):
    refs = ludb_index(ludb_root)
    assert len(refs) == 200 and refs[0].record_id == "ludb/1"
    m = refs[0].meta
    assert m["sex"] == "F" and m["age"] == 51.0 and m["heart_axis"] == "LAD"
    assert "Left ventricular hypertrophy" in m["diagnoses"] and m["findings"] == ["LVH", "LVO"]
    assert m["rhythm"] == "Sinus bradycardia"
    ages = [r.meta["age"] for r in refs]
    assert 90.0 in ages and all(a is not None for a in ages)  # ">89" coded as 90
    axes = {r.meta["heart_axis"] for r in refs}
    assert {"RAD", "LAD", "MID"} <= axes


# --- site manifests -------------------------------------------------------------------------------

@pytest.fixture
def site(tmp_path) -> Path:
    records = tmp_path / "records"
    for i in range(4):
        write_wfdb(records, f"r{i}", synthetic_ecg(fs=250, seconds=4, seed=i), fs=250)
    return tmp_path


def _labels(site: Path, text: str) -> Path:
    path = site / "labels.csv"
    path.write_text(text)
    return path


def test_manifest_index_reads_labels_and_extra_columns(site):
    labels = _labels(site, "record_id,patient_id,ph_cath,right_heart,age\nr0,p0,1,0,51\nr1,p0,0,,60\n"
                           "r2,p1,,1,>89\nr3,p2,1,1,\n")
    refs = manifest_index(site / "records", labels, site="clinic")
    assert [r.record_id for r in refs] == ["r0", "r1", "r2", "r3"]
    assert refs[0].meta["ph_cath"] == 1.0 and np.isnan(refs[1].meta["right_heart"])
    assert refs[2].meta["age"] == ">89"  # not binary -> kept as text, not a label
    assert refs[0].meta["label_columns"] == ["ph_cath", "right_heart"]
    assert refs[0].meta["source"] == "clinic" and refs[1].patient_id == "p0"
    assert refs[3].load().fs == 250


def test_manifest_missing_column_lists_found_columns(site):
    labels = _labels(site, "record,patient_id,y\nr0,p0,1\n")
    with pytest.raises(ManifestError) as err:
        manifest_index(site / "records", labels)
    assert "record_id" in str(err.value) and "found columns: record, patient_id, y" in str(err.value)


def test_manifest_bad_value_names_file_line_and_column(site):
    labels = _labels(site, "record_id,patient_id,right_heart\nr0,p0,1\nr1,p1,yes please\nr2,,0\n")
    with pytest.raises(ManifestError) as err:
        manifest_index(site / "records", labels)
    msg = str(err.value)
    assert "labels.csv: line 3, column 'right_heart'" in msg and "'yes please'" in msg
    assert "line 4, column 'patient_id'" in msg


def test_manifest_explicit_label_column_must_be_binary(site):
    labels = _labels(site, "record_id,patient_id,score\nr0,p0,0.7\n")
    with pytest.raises(ManifestError, match="line 2, column 'score'"):
        manifest_index(site / "records", labels, label_columns=["score"])


def test_manifest_unknown_ids_and_unlabelled_records(site, caplog):
    labels = _labels(site, "record_id,patient_id,y\nr0,p0,1\nnope,p9,0\nr1,p1,0\n")
    with pytest.raises(ManifestError) as err:
        manifest_index(site / "records", labels)
    assert "nope (line 3)" in str(err.value)
    with caplog.at_level(logging.WARNING):
        refs = manifest_index(site / "records", labels, strict=False)
    assert [r.record_id for r in refs] == ["r0", "r1"]
    assert refs[0].meta["site"] == site.name  # default site: the folder holding labels.csv
    assert "r2, r3" in caplog.text and "no row" in caplog.text


def test_manifest_duplicate_ids_and_encoding(site):
    labels = _labels(site, "record_id,patient_id,y\nr0,p0,1\nr0,p0,0\n")
    with pytest.raises(ManifestError, match="already on line 2"):
        manifest_index(site / "records", labels)
    (site / "labels.csv").write_bytes("record_id,patient_id,y\nr0,Müller,1\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        manifest_index(site / "records", site / "labels.csv")


def test_manifest_quoted_multiline_cell_line_numbers(site):
    labels = _labels(site, 'record_id,patient_id,note,y\nr0,p0,"two\nlines",1\nr1,p1,x,2\n')
    with pytest.raises(ManifestError, match="line 4, column 'y'"):
        manifest_index(site / "records", labels, label_columns=["y"])


def test_folder_index(site):
    refs = folder_index(site / "records")
    assert [r.record_id for r in refs] == ["r0", "r1", "r2", "r3"]
    (site / "empty").mkdir()
    with pytest.raises(ManifestError, match="no ECG records"):
        folder_index(site / "empty")
