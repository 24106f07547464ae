"""One atomic, private write for the whole project: what a crash leaves, what is synced, who may read."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from lsemvae.fileio import atomic_open, atomic_write, atomic_write_json, dump_toml, private_dir


def test_a_crash_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "ledger.json"
    atomic_write(path, "old\n")
    with pytest.raises(RuntimeError, match="disk vanished"):
        with atomic_open(path) as fh:
            fh.write("half of the new cont")
            raise RuntimeError("disk vanished")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


def test_the_file_and_its_folder_are_synced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", os.path.basename(b))), real_replace(a, b))[1])
    atomic_write_json(tmp_path / "state.json", {"round": 3})
    assert calls == [("fsync", False), ("replace", "state.json"), ("fsync", True)]


def test_site_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        folder = private_dir(tmp_path / "state" / "deeper")
        atomic_write(folder / "ledger.json", "{}")
        shared = atomic_write(tmp_path / "report.md", "# public data", private=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ledger.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644           # outputs meant to be shared keep the umask
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert stat.S_IMODE(private_dir(loose).stat().st_mode) == 0o700   # an existing folder is tightened


def test_dump_toml_round_trips_a_site_config():
    import tomllib

    doc = {"name": "a", "leads": "6L", "epsilon": 8.0, "flag": True, "ids": [1, 2],
           "data": {"root": "/x y/\"q\""}, "tasks": [{"name": "t", "column": "c"}, {"name": "u"}]}
    assert tomllib.loads(dump_toml(doc)) == doc
    assert np.isclose(tomllib.loads(dump_toml({"x": 1e-5}))["x"], 1e-5)
    # keys TOML cannot take bare are quoted, in tables nested two deep too; False stays False
    odd = {"plain-key_1": False, "a.b": 1, "with space": "v",
           "outer": {"in.ner": {"leaf key": 2, "ok": [{"x y": 3}]}}}
    assert tomllib.loads(dump_toml(odd)) == odd
    assert '[outer."in.ner"]' in dump_toml(odd) and "plain-key_1 = false" in dump_toml(odd)
