"""A hospital folder with several formats goes through read_record/find_records, inspect and convert.

Real files: one PTB-XL WFDB record (../shared/data), pydicom's bundled 12-lead DICOM, the Philips XML and
SCP-ECG files of ../shared/data/formats; the other XML and EDF files are written from their specifications
(see spec_writers)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb
from pydicom.data import get_testdata_file

from lsemvae.cli import main
from lsemvae.data.convert import convert_folder, register_convert
from lsemvae.data.readers import find_records, read_record, scan_folder
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12

from .spec_writers import quantise, write_aecg, write_cardiosoft, write_edf, write_muse

PTBXL_RECORD = "records100/00000/00001_lr"


@pytest.fixture()
def mixed(tmp_path, ptbxl_root, shared_data, ecg_mv) -> Path:
    root = tmp_path / "site"
    (root / "wfdb").mkdir(parents=True)
    for suffix in (".hea", ".dat"):
        src = ptbxl_root / (PTBXL_RECORD + suffix)
        shutil.copy(src, root / "wfdb" / src.name)
    # Extensions deliberately misleading or absent: detection is by content.
    shutil.copy(get_testdata_file("waveform_ecg.dcm", download=False), root / "cart_export")
    write_aecg(root / "aecg.xml", {k: quantise(ecg_mv[k], 5.0) for k in LEADS_12}, fs=500.0)
    write_muse(root / "muse.txt", {k: quantise(ecg_mv[k], 4.88) for k in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")})
    (root / "ukb").mkdir()
    write_cardiosoft(root / "ukb" / "1000001_20205_2_0.xml", {k: quantise(ecg_mv[k], 5.0) for k in LEADS_12})
    write_edf(root / "holter.edf", {k: ecg_mv[k] for k in ("I", "II")})
    shutil.copy(shared_data / "formats" / "philips" / "129DYPRG.XML", root / "pagewriter.XML")
    shutil.copy(shared_data / "formats" / "scp" / "Example.scp", root / "eli250")
    # One bad record of a known format and one unrelated file.
    write_muse(root / "bad_muse.xml", {"I": quantise(ecg_mv["I"], 4.88)}, units="FURLONGS")
    (root / "notes.csv").write_text("record,label\naecg,1\n")
    return root


def test_find_and_read_every_format_by_content(mixed):
    found = {p.relative_to(mixed).as_posix() for p in find_records(mixed)}
    assert found == {"wfdb/00001_lr.hea", "cart_export", "aecg.xml", "muse.txt", "ukb/1000001_20205_2_0.xml",
                     "holter.edf", "bad_muse.xml", "pagewriter.XML", "eli250"}
    formats = {}
    for path in sorted(found - {"bad_muse.xml"}):
        rec = read_record(mixed / path)
        formats[path] = rec.meta.get("format", "wfdb")
        assert set(rec.leads) <= set(LEADS_12) and rec.fs > 0
        assert 0.05 < float(np.nanmax(np.abs(rec.signal))) < 10.0  # millivolts everywhere
    assert formats == {"wfdb/00001_lr.hea": "wfdb", "cart_export": "dicom", "aecg.xml": "hl7-aecg",
                       "muse.txt": "ge-muse", "ukb/1000001_20205_2_0.xml": "cardiosoft", "holter.edf": "edf",
                       "pagewriter.XML": "philips-xml", "eli250": "scp-ecg"}
    with pytest.raises(RecordError) as info:
        read_record(mixed / "bad_muse.xml")
    assert info.value.reason == "units"


def test_convert_folder_writes_wfdb_and_summarises_skips(mixed, tmp_path, ecg_mv):
    dest = tmp_path / "out"
    summary = convert_folder(mixed, dest, progress=False)
    assert len(summary.converted) == 8
    assert summary.skipped_by_reason == {"units": 1} and "bad_muse.xml" in summary.skipped[0]["message"]
    assert summary.ignored == {"notes.csv": "unknown-format"}
    report = summary.report()
    assert "converted 8" in report and "units: 1" in report and "notes.csv" in report

    back = read_record(dest / "ukb" / "1000001_20205_2_0.hea")  # sub-folders kept
    assert back.leads == LEADS_12 and back.fs == 500.0
    np.testing.assert_allclose(back.lead("aVL"), ecg_mv["aVL"], atol=0.003)
    header = wfdb.rdheader(str(dest / "muse"))
    assert header.sig_name == list(LEADS_12) and "patient_id: MRN12345" in header.comments
    dicom_back = read_record(dest / "cart_export.hea")
    original = read_record(mixed / "cart_export")
    np.testing.assert_allclose(dicom_back.signal, original.signal, atol=1e-3)
    philips_header = wfdb.rdheader(str(dest / "pagewriter"))  # the reader's QC notes travel with the record
    assert any(c.startswith("qc_note: calibration: dropped") for c in philips_header.comments)


def test_convert_cli_arguments():
    parser = argparse.ArgumentParser()
    register_convert(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["convert", "in_dir", "--to", "wfdb", "out_dir"])
    assert (str(args.src), args.to, str(args.dest)) == ("in_dir", "wfdb", "out_dir") and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "in_dir", "--to", "scp", "out_dir"])


def test_sniffers_reject_empty_binary_and_foreign_text(tmp_path, ptbxl_root):
    from lsemvae.data.formats import FORMATS

    files = {"empty": b"", "binary": bytes(range(256)) * 4, "html": b"<html><body>ECG</body></html>",
             "hea": (ptbxl_root / (PTBXL_RECORD + ".hea")).read_bytes()}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        claimed = [fmt for fmt, sniff, _read in FORMATS if sniff(tmp_path / name)]
        assert claimed == [], f"{name} claimed by {claimed}"


def test_scan_lists_every_file_it_passes_over_with_its_reason(mixed):
    (mixed / "empty.xml").write_bytes(b"")
    (mixed / "orphan.dat").write_bytes(b"\0" * 100)
    (mixed / ".DS_Store").write_bytes(b"x")
    (mixed / ".cache").mkdir()
    scan = scan_folder(mixed)
    passed = {p.relative_to(mixed).as_posix(): why for p, why in scan.passed_over}
    assert passed == {"notes.csv": "unknown-format", "empty.xml": "empty-file", "orphan.dat": "signal-without-header",
                      ".DS_Store": "hidden", ".cache": "hidden"}
    assert len(scan.records) == 9 and dict(scan.records)[mixed / "eli250"] == "scp-ecg"


def test_inspect_folder_reports_passed_over_files(mixed, capsys):
    (mixed / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    assert main(["data", "inspect", str(mixed), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "records: 9" in out and "passed over 2 file(s)" in out
    assert "unknown-format (no ECG reader recognises its content): 2: notes.csv, photo.jpg" in out
    assert main(["data", "inspect", str(mixed), "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed_over"] == {"notes.csv": "unknown-format", "photo.jpg": "unknown-format"}


def test_exit_status_says_whether_anything_was_read_or_converted(tmp_path, mixed, capsys):
    only_unknown = tmp_path / "unknown"
    only_unknown.mkdir()
    for k in range(3):
        (only_unknown / f"scan{k}.pdf").write_bytes(b"%PDF-1.4 not an ECG")
    assert main(["data", "inspect", str(only_unknown), "--no-progress"]) == 1
    assert "unknown-format" in capsys.readouterr().out
    assert main(["data", "convert", str(only_unknown), str(tmp_path / "out1"), "--no-progress"]) == 1
    assert "converted 0" in capsys.readouterr().out
    assert main(["data", "inspect", str(mixed / "bad_muse.xml"), "--no-progress"]) == 1  # one unreadable file
    assert "units" in capsys.readouterr().out
    assert main(["data", "inspect", str(mixed / "eli250"), "--no-progress"]) == 0
    assert main(["data", "convert", str(mixed), str(tmp_path / "out2"), "--no-progress"]) == 0
