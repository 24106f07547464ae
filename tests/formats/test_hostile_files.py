"""Files that would exhaust a site or reach outside its folder are refused per record, before decoding; the rest
of the folder still loads. Each case sits in a folder beside a real PTB-XL record (../shared/data)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from lsemvae.data.commands import inspect_refs
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.sources import folder_index

from .spec_writers import LEADS_12, quantise, write_muse

RECORD = "records100/00000/00001_lr"


def _traversal(folder: Path, ptbxl_root: Path) -> None:
    """A header naming a signal file outside its folder, which exists there."""
    outside = folder.parent / "outside"
    outside.mkdir()
    shutil.copy(ptbxl_root / f"{RECORD}.dat", outside / "secret-blob.bin")
    (folder / "sub").mkdir()
    text = (ptbxl_root / f"{RECORD}.hea").read_text().replace("00001_lr.dat", "../../outside/secret-blob.bin")
    (folder / "sub" / "evil.hea").write_text(text.replace("00001_lr", "evil", 1))


def _symlink_out(folder: Path, ptbxl_root: Path) -> None:
    outside = folder.parent / "outside"
    outside.mkdir()
    shutil.copy(ptbxl_root / f"{RECORD}.dat", outside / "secret.dat")
    os.symlink(outside / "secret.dat", folder / "linked.dat")
    (folder / "linked.hea").write_text((ptbxl_root / f"{RECORD}.hea").read_text().replace("00001_lr", "linked"))


def _sparse_wfdb(folder: Path, ptbxl_root: Path) -> None:
    """A header declaring 20 million samples over a sparse 480 MB .dat (no disk, no time to make)."""
    text = (ptbxl_root / f"{RECORD}.hea").read_text().replace("00001_lr", "huge")
    lines = text.splitlines()
    lines[0] = "huge 12 100 20000000"
    (folder / "huge.hea").write_text("\n".join(lines) + "\n")
    with open(folder / "huge.dat", "wb") as fh:
        fh.truncate(480_000_000)


def _oversized_xml(folder: Path, ptbxl_root: Path) -> None:
    """A MUSE export that starts right and goes on for 86 MB (sparse): refused by size before parsing."""
    path = folder / "long_muse.xml"
    path.write_bytes(b'<?xml version="1.0"?>\n<RestingECG><PatientDemographics>')
    with open(path, "r+b") as fh:
        fh.truncate(86 * 2**20)


def _declared_samples(folder: Path, ptbxl_root: Path) -> None:
    """8000 s of signal declared per lead (4 million samples at 500 Hz)."""
    path = write_muse(folder / "8000s.xml", {"I": np.zeros(10, dtype=np.int64), "II": np.zeros(10, dtype=np.int64)})
    path.write_text(path.read_text(encoding="iso-8859-1").replace(
        "<LeadSampleCountTotal>10<", "<LeadSampleCountTotal>4000000<"), encoding="iso-8859-1")


def _entities(folder: Path, ptbxl_root: Path) -> None:
    """Entity amplification (billion laughs) in a MUSE export."""
    decls = '<!ENTITY a0 "ECGECGECGECG">' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">' for i in range(1, 9))
    (folder / "laughs.xml").write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE RestingECG [{decls}]>\n<RestingECG><PatientDemographics>'
        "<PatientID>&a8;</PatientID></PatientDemographics></RestingECG>\n")


def _external_entity(folder: Path, ptbxl_root: Path) -> None:
    (folder / "xxe.xml").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE AnnotatedECG [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        '<AnnotatedECG xmlns="urn:hl7-org:v3"><id root="&x;"/></AnnotatedECG>\n')


CASES = {
    "signal file outside the folder": (_traversal, "corrupt-header", "'../../outside/secret-blob.bin' is not a plain "
                                       "file name in the header's folder"),
    "signal file linked from outside": (_symlink_out, "corrupt-header", "'linked.dat' is not a plain file name"),
    "sparse 480 MB .dat": (_sparse_wfdb, "too-large", "the header declares 20,000,000 samples"),
    "86 MB XML": (_oversized_xml, "too-large", "file long_muse.xml is 86.0 MB, over the 64 MB limit"),
    "8000 s declared": (_declared_samples, "too-large", "lead I declares 4,000,000 samples"),
    "entity amplification": (_entities, "corrupt", "declares entities"),
    "external entity": (_external_entity, "corrupt", "declares entities"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_refused_and_the_folder_still_loads(tmp_path, ptbxl_root, case):
    make, reason, words = CASES[case]
    folder = tmp_path / "site"
    folder.mkdir()
    for suffix in (".hea", ".dat"):
        shutil.copy(ptbxl_root / f"{RECORD}{suffix}", folder / f"good{suffix}")
    (folder / "good.hea").write_text((folder / "good.hea").read_text().replace("00001_lr", "good"))
    make(folder, ptbxl_root)
    start = time.perf_counter()
    summary = inspect_refs(folder_index(folder), PreprocessConfig(), progress=False)
    assert time.perf_counter() - start < 10
    assert summary["read_ok"] == 1 and summary["qc_passed"] == 1, summary
    assert summary["read_failures"] == {reason: 1}, summary
    message = summary["examples"][reason][0]
    assert words in message, message


def test_limits_are_settings(tmp_path, ecg_mv, monkeypatch):
    """The message names the setting; raising it lets a genuine long file through."""
    from lsemvae.data.readers import read_record
    from lsemvae.errors import ConfigError, RecordError

    path = write_muse(tmp_path / "m.xml", {k: quantise(ecg_mv[k], 4.88) for k in ("I", "II")})
    monkeypatch.setenv("LSEMVAE_MAX_FILE_MB", "0")
    with pytest.raises(ConfigError) as bad:
        read_record(path)
    assert "LSEMVAE_MAX_FILE_MB" in str(bad.value)
    monkeypatch.setenv("LSEMVAE_MAX_SAMPLES_PER_LEAD", "1000")
    monkeypatch.delenv("LSEMVAE_MAX_FILE_MB")
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert "raise it with LSEMVAE_MAX_SAMPLES_PER_LEAD=<samples>" in str(info.value)
    monkeypatch.setenv("LSEMVAE_MAX_SAMPLES_PER_LEAD", "5000")
    assert read_record(path).leads[:2] == LEADS_12[:2]
