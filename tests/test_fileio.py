"""One atomic, private write for the whole project: what a crash leaves, what is synced, who may read."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from lsemvae.fileio import append_private, atomic_open, atomic_write, atomic_write_json, dump_toml, private_dir


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
    odd = {"plain-key_1": False, "a.b": 1, "with space": "v", "é": 1, "-": 2,
           "outer": {"in.ner": {"leaf key": 2, "ok": [{"x y": 3}]}}}
    assert tomllib.loads(dump_toml(odd)) == odd
    assert '[outer."in.ner"]' in dump_toml(odd) and "plain-key_1 = false" in dump_toml(odd)
    assert dump_toml({"Name": 1, "é": 2}) == 'Name = 1\n"\\u00e9" = 2\n'            # capitals are bare too


def test_append_private_appends_synced_lines_to_a_private_file(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    log = tmp_path / "state" / "outgoing-messages.jsonl"
    append_private(log, "one\n")
    append_private(log, "two é\n")
    assert log.read_text(encoding="utf-8") == "one\ntwo é\n" and len(synced) == 2
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_json_is_written_sorted_indented_and_without_nan(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"b": [1, 2], "a": "é"})
    assert path.read_text(encoding="utf-8") == '{\n "a": "\\u00e9",\n "b": [\n  1,\n  2\n ]\n}\n'
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "y.json", {"a": float("nan")})
    assert not (tmp_path / "y.json").exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600                     # private unless asked otherwise
    old = os.umask(0o022)
    try:
        shared = atomic_write_json(tmp_path / "z.json", {}, private=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644                   # as the umask says, when asked


def test_atomic_write_takes_bytes_as_they_are(tmp_path):
    path = atomic_write(tmp_path / "blob.bin", b"\x00\xffECG\r\n")
    assert path.read_bytes() == b"\x00\xffECG\r\n"


def test_a_folder_without_the_owners_search_bit_is_still_tightened(tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    os.chmod(odd, 0o655)
    assert stat.S_IMODE(private_dir(odd).stat().st_mode) == 0o700
