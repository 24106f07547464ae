"""One entry point indexes every dataset layout: ``sources.index(kind, root)``, the kind told by ``detect_kind``."""

from __future__ import annotations

import pytest

from lsemvae.data.sources import detect_kind, index, ludb_index, ptbxl_index
from lsemvae.errors import ConfigError

from .conftest import synthetic_ecg, write_wfdb


def test_each_layout_is_detected_and_indexed_as_its_own_index_does(ptbxl_root, ludb_root, tmp_path):
    assert detect_kind(ptbxl_root) == "ptb-xl"
    assert index("ptb-xl", ptbxl_root, rate=500) == ptbxl_index(ptbxl_root, rate=500)
    assert detect_kind(ludb_root) == "ludb" and index("ludb", ludb_root) == ludb_index(ludb_root)

    site = tmp_path / "site"
    for i in range(2):
        write_wfdb(site / "records", f"r{i}", synthetic_ecg(fs=250, seed=i), fs=250)
    (site / "labels.csv").write_text("record_id,patient_id,cath_ph\nr0,p0,1\nr1,p1,0\n")
    assert detect_kind(site) == "manifest"
    refs = index("manifest", site)  # labels.csv found in the folder, records in its records/ subfolder
    assert [(r.record_id, r.patient_id, r.meta["cath_ph"]) for r in refs] == [("r0", "p0", 1.0), ("r1", "p1", 0.0)]
    assert detect_kind(site / "records") == "folder"
    assert [r.record_id for r in index("folder", site / "records")] == ["r0", "r1"]


def test_unknown_layout_and_missing_labels_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset layout 'csv': one of ptb-xl, ludb, manifest, folder"):
        index("csv", tmp_path)
    with pytest.raises(ConfigError, match="no labels CSV"):
        index("manifest", tmp_path)
