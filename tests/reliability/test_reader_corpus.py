"""Corpus fuzzing of the WFDB reader on corrupted copies of REAL records (PTB-XL 100/500 Hz, LUDB).

tests/data/test_readers.py fuzzes records written by wfdb from synthetic signals; here every
corruption is applied to a copy of a real file from ../shared/data, and the batch path (folder
index -> cohort cache, and ``lsemvae data inspect``) must keep every good record, skip every bad one
with its reason, and lose nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lsemvae.cli import main as lsemvae_main
from lsemvae.data.cache import build_cohort
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.readers import read_record
from lsemvae.data.sources import folder_index
from lsemvae.errors import RecordError

SOURCES = {  # relative to ../shared/data; full-length records that pass QC
    "ptbxl100": "ptb-xl/records100/00000/00001_lr",
    "ptbxl500": "ptb-xl/records500/00000/00001_hr",
    "ludb": "ludb/data/1",
}


def _tokens(line_i: int, tok_i: int, value):
    def corrupt(hea: Path) -> None:
        lines = hea.read_text().splitlines()
        tokens = lines[line_i].split()
        tokens[tok_i] = value(tokens[tok_i]) if callable(value) else value
        lines[line_i] = " ".join(tokens)
        hea.write_text("\n".join(lines) + "\n")
    return corrupt


def _lines(edit):
    def corrupt(hea: Path) -> None:
        hea.write_text("\n".join(edit(hea.read_text().splitlines())) + "\n")
    return corrupt


def _dat(edit):
    def corrupt(hea: Path) -> None:
        dat = hea.with_suffix(".dat")
        dat.write_bytes(edit(bytearray(dat.read_bytes())))
    return corrupt


def _flip(pos: int):
    def edit(raw: bytearray) -> bytes:
        raw[pos % len(raw)] ^= 0xFF
        return bytes(raw)
    return edit


def _zero_gain(tok: str) -> str:  # "1000.0(0)/mV" -> "0(0)/mV"
    return "0" + tok[tok.index("("):] if "(" in tok else "0/mV"


# name -> (corruption, reason the reader must give)
CORRUPTIONS = {
    "fs zero": (_tokens(0, 2, "0"), "fs"),
    "fs negative": (_tokens(0, 2, "-100"), "fs"),
    "fs not a number": (_tokens(0, 2, "abc"), "fs"),           # wfdb alone silently reads this as 250 Hz
    "samples negative": (_tokens(0, 3, "-5"), "corrupt-header"),
    "samples doubled": (_tokens(0, 3, lambda t: str(2 * int(t))), "truncated-signal"),
    "one signal fewer declared": (_tokens(0, 1, "11"), "checksum"),
    "one signal more declared": (_tokens(0, 1, "13"), "corrupt-header"),
    "zero signals declared": (_tokens(0, 1, "0"), "corrupt-header"),
    "gain zero": (_tokens(1, 2, _zero_gain), "units"),
    "unknown storage format": (_tokens(1, 1, "999"), "corrupt"),
    "wrong storage format": (_tokens(1, 1, "212"), "checksum"),
    "signal line missing": (_lines(lambda lines: lines[:12]), "corrupt-header"),
    "non-UTF-8 header": (lambda h: h.write_bytes(h.read_bytes().replace(b"mV", b"\xff\xfe", 1)), "header-encoding"),
    "header byte flipped": (lambda h: h.write_bytes(_flip(5)(bytearray(h.read_bytes()))), "header-encoding"),
    "header is binary junk": (lambda h: h.write_bytes(bytes(range(256)) * 4), "header-encoding"),
    "header empty": (lambda h: h.write_bytes(b""), "empty-file"),
    "signal truncated to half": (_dat(lambda raw: bytes(raw[: len(raw) // 2])), "truncated-signal"),
    "signal one byte short": (_dat(lambda raw: bytes(raw[:-1])), "truncated-signal"),
    "signal empty": (_dat(lambda raw: b""), "empty-file"),
    "signal byte flipped (start)": (_dat(_flip(7)), "checksum"),
    "signal byte flipped (middle)": (_dat(_flip(2000)), "checksum"),
    "signal file missing": (lambda h: h.with_suffix(".dat").unlink(), "missing-file"),
    "signal file renamed in header": (_tokens(1, 0, "other.dat"), "unsupported"),
}


def copy_record(src: Path, dest_dir: Path, name: str | None = None) -> Path:
    """Copy a WFDB record (``.hea`` + ``.dat``), optionally under a new record name (header rewritten)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = name or src.name
    shutil.copy(src.with_suffix(".dat"), dest_dir / f"{name}.dat")
    (dest_dir / f"{name}.hea").write_text(src.with_suffix(".hea").read_text().replace(src.name, name))
    return dest_dir / f"{name}.hea"


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupted_real_record_is_a_record_error_naming_the_file(shared_data, tmp_path, source, case):
    src = shared_data / SOURCES[source]
    assert read_record(src.with_suffix(".hea")).signal.shape[0] == 12      # the pristine copy reads
    hea = copy_record(src, tmp_path)
    corrupt, reason = CORRUPTIONS[case]
    corrupt(hea)
    with pytest.raises(RecordError) as err:
        read_record(hea)
    assert err.value.reason == reason, str(err.value)
    assert str(hea) in err.value.record or str(hea.with_suffix(".dat")) in err.value.record, err.value.record
    assert str(err.value).startswith(err.value.record)


@pytest.fixture(scope="module")
def mixed_folder(shared_data, tmp_path_factory) -> tuple[Path, list[str], dict[str, str]]:
    """20 good real PTB-XL records and 10 corrupted copies of other real records in one folder."""
    folder = tmp_path_factory.mktemp("mixed")
    real = sorted((shared_data / "ptb-xl" / "records100" / "00000").glob("*_lr.hea"))[:30]
    good = [copy_record(p.with_suffix(""), folder).stem for p in real[:20]]
    cases = list(CORRUPTIONS.items())[::2][:10]
    bad = {}
    for p, (case, (corrupt, reason)) in zip(real[20:], cases):
        hea = copy_record(p.with_suffix(""), folder, name=f"bad_{p.stem}")
        corrupt(hea)
        bad[hea.stem] = reason
    return folder, good, bad


def test_batch_keeps_every_good_record_and_skips_each_bad_one_by_reason(mixed_folder, tmp_path):
    folder, good, bad = mixed_folder
    refs = folder_index(folder)
    assert len(refs) == 30
    cohort = build_cohort(refs, [], PreprocessConfig(), tmp_path, name="mixed", progress=False)
    assert sorted(cohort.record_ids) == sorted(good)                     # all 20 good records, nothing else
    skipped = {s["record"]: s["reason"] for s in cohort.skipped}
    assert len(skipped) == 10 and len(cohort) + len(skipped) == len(refs)   # nothing lost or double-counted
    by_name = {next(n for n in bad if n in rec): reason for rec, reason in skipped.items()}
    assert by_name == bad                                                # each skipped for its own reason
    assert sum(cohort.skipped_by_reason().values()) == 10


def test_inspect_counts_the_same_folder(mixed_folder, capsys):
    folder, good, bad = mixed_folder
    assert lsemvae_main(["data", "inspect", str(folder), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)["groups"]["folder"]
    assert summary["records"] == 30 and summary["read_ok"] == 20 and summary["qc_passed"] == 20
    expected: dict[str, int] = {}
    for reason in bad.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert summary["read_failures"] == expected
