"""WFDB headers as PhysioNet databases write them: units left out of the gain field, patient ids in comments.

Every case starts from a real PTB-XL record in ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lsemvae.data.commands import inspect_refs
from lsemvae.data.preprocess import PreprocessConfig
from lsemvae.data.readers import read_record
from lsemvae.data.sources import folder_index

RECORD = "records500/00000/00001_hr"


def _copy(ptbxl_root: Path, folder: Path, name: str, record: str = RECORD) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    src = ptbxl_root / record
    header = src.with_suffix(".hea").read_text().replace(src.name, name)
    shutil.copy(src.with_suffix(".dat"), folder / f"{name}.dat")
    (folder / f"{name}.hea").write_text(header)
    return folder / f"{name}.hea"


def test_gain_without_units_reads_as_millivolts_with_a_note(tmp_path, ptbxl_root):
    """PTB Diagnostic / MIT-BIH style '1000.0(0)' (no '/mV'): millivolts by the WFDB convention, as wfdb reads it."""
    import wfdb

    hea = _copy(ptbxl_root, tmp_path, "nounits")
    hea.write_text(hea.read_text().replace("/mV", ""))
    rec = read_record(hea)
    original = read_record(ptbxl_root / f"{RECORD}.hea")
    np.testing.assert_array_equal(rec.signal, original.signal)
    np.testing.assert_allclose(rec.signal.T, wfdb.rdrecord(str(hea.with_suffix(""))).p_signal, atol=1e-6)
    assert len(rec.notes) == 1 and rec.notes[0].startswith("units-assumed:") and "I, II, III" in rec.notes[0]


@pytest.mark.parametrize("comment", ["# Patient ID: 4711", "#patient_id: 4711", "# PatientID: 4711",
                                     "#<Patient ID>: 4711", "# patient id:4711"])
def test_patient_id_comment_becomes_the_patient(tmp_path, ptbxl_root, comment):
    hea = _copy(ptbxl_root, tmp_path, "p")
    hea.write_text(hea.read_text() + comment + "\n# Age: 56\n")
    rec = read_record(hea)
    assert rec.patient_id == "4711" and rec.meta["age"] == "56"


def test_folder_route_counts_patients_from_headers(tmp_path, ptbxl_root):
    """CODE-15%-style headers: three exams of two patients are two patients, so a patient split cannot leak."""
    folder = tmp_path / "code15"
    for name, patient in (("exam1", "P-1"), ("exam2", "P-1"), ("exam3", "P-2")):
        hea = _copy(ptbxl_root, folder, name)
        hea.write_text(hea.read_text() + f"# Patient ID: {patient}\n")
    _copy(ptbxl_root, folder, "exam4")  # no comment: its own patient, as before
    refs = folder_index(folder)
    assert {r.record_id: r.patient_id for r in refs} == {"exam1": "P-1", "exam2": "P-1", "exam3": "P-2",
                                                         "exam4": "exam4"}
    summary = inspect_refs(refs, PreprocessConfig(), progress=False)
    assert summary["patients"] == 3 and summary["read_ok"] == 4
    assert {r.load().patient_id for r in refs} == {"P-1", "P-2", "exam4"}
