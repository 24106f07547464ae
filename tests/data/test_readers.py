"""WFDB reader and format registry: real PTB-XL/LUDB files, unit handling, bad input, fuzzing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsemvae.data import readers
from lsemvae.data.readers import FORMAT_READERS, find_records, read_record, record_files
from lsemvae.data.record import ECGRecord
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12, check_limb_identities

from .conftest import synthetic_ecg, write_wfdb


# --- real data ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rel, fs, n, first_i", [
    ("records100/00000/00001_lr.hea", 100, 1000, -0.119),
    ("records500/00000/00001_hr.hea", 500, 5000, -0.115),
])
def test_ptbxl_record_reads_with_canonical_leads_and_mv(ptbxl_root, rel, fs, n, first_i):
    rec = read_record(ptbxl_root / rel)
    assert rec.fs == fs and rec.signal.shape == (12, n) and rec.signal.dtype == np.float32
    assert rec.leads == LEADS_12  # "AVR" in the header becomes "aVR"
    assert np.isfinite(rec.signal).all()
    # ecg 1, lead I first sample: the header's initial value (-119 / -115) at 1000 adu/mV
    assert rec.lead("I")[0] == pytest.approx(first_i, abs=1e-6)
    assert check_limb_identities(rec.signal, rec.leads, tolerance_mv=0.01).ok


def test_ptbxl_100_and_500_hz_are_the_same_ecg(ptbxl_root):
    lo = read_record(ptbxl_root / "records100/00000/00001_lr.hea").lead("II")
    hi = read_record(ptbxl_root / "records500/00000/00001_hr.hea").lead("II")[::5]
    assert np.corrcoef(lo, hi)[0, 1] > 0.9


def test_ludb_lower_case_leads_and_per_lead_gains(ludb_root):
    rec = read_record(ludb_root / "data" / "1.hea")
    assert rec.leads == LEADS_12 and rec.fs == 500 and rec.signal.shape == (12, 5000)
    # LUDB stores each lead with its own gain (1716/mV for i, 1206/mV for ii...): physical values must
    # still satisfy Einthoven within LUDB's own residual (under 0.1 mV)
    assert check_limb_identities(rec.signal, rec.leads, tolerance_mv=0.1).ok
    assert rec.meta["sex"] == "F" and rec.meta["age"] == "51"


def test_partial_ptbxl_record_keeps_nan_for_preprocessing(ptbxl_root):
    rec = read_record(ptbxl_root / "records100/01000/01017_lr.hea")
    nan = np.isnan(rec.signal).mean(axis=1)
    assert nan[rec.leads.index("II")] == 0.0
    assert all(nan[i] == pytest.approx(0.75) for i, l in enumerate(rec.leads) if l != "II")


def test_find_records_lists_one_path_per_record(ptbxl_root, ludb_root):
    ludb = find_records(ludb_root)
    assert len(ludb) == 200 and all(p.suffix == ".hea" for p in ludb)
    assert len(find_records(ptbxl_root / "records100")) == 1046
    assert record_files(ludb[0]) == [ludb[0], ludb[0].with_suffix(".dat")]


# --- units and formats --------------------------------------------------------------------------

def test_microvolt_record_is_converted_to_mv(tmp_path):
    sig = synthetic_ecg()
    mv = read_record(write_wfdb(tmp_path, "mv", sig))
    uv = read_record(write_wfdb(tmp_path, "uv", sig, units="uV"))
    assert np.allclose(mv.signal, uv.signal, atol=1e-6)
    assert np.abs(uv.signal).max() < 5  # millivolts, not microvolts


def test_mat_signal_file_is_read(tmp_path):
    """PhysioNet Challenge layout: header names a MATLAB v4 ``.mat`` holding ``val`` [leads, samples]."""
    from scipy.io import savemat

    sig = synthetic_ecg(fs=500)
    digital = np.round(sig * 1000).astype(np.int16)
    savemat(tmp_path / "A0001.mat", {"val": digital}, format="4")
    lines = [f"A0001 12 500 {sig.shape[1]}"] + [
        f"A0001.mat 16+24 1000/mV 16 0 {digital[k, 0]} {int(digital[k].astype(np.int64).sum()) % 65536} 0 {lead}"
        for k, lead in enumerate(LEADS_12)]
    (tmp_path / "A0001.hea").write_text("\n".join(lines) + "\n")
    rec = read_record(tmp_path / "A0001.hea")
    assert np.allclose(rec.signal, digital / 1000.0)
    # the same file without the byte offset (some exporters) is read through scipy
    (tmp_path / "A0001.hea").write_text("\n".join(lines).replace("16+24", "16") + "\n")
    assert np.allclose(read_record(tmp_path / "A0001.hea").signal, digital / 1000.0)


def test_registry_accepts_a_plugged_in_format(tmp_path):
    path = tmp_path / "x.toy"
    path.write_text("TOYECG")

    def read(p):
        return ECGRecord(np.zeros((2, 100), np.float32) + 0.1, 100, ("I", "II"), "toy", "p", str(p))

    FORMAT_READERS.append(("toy", lambda p: Path(p).read_bytes()[:6] == b"TOYECG", read))
    try:
        assert read_record(path).leads == ("I", "II")
        assert path in find_records(tmp_path)
    finally:
        FORMAT_READERS.pop()
    with pytest.raises(RecordError) as err:
        read_record(path)
    assert err.value.reason == "unknown-format" and "x.toy" in str(err.value)


# --- bad input: each case a RecordError naming the record, with a reason --------------------------

def _edit_header(hea: Path, old: str, new: str) -> Path:
    hea.write_text(hea.read_text().replace(old, new))
    return hea


BAD_HEADERS = {
    "missing fs": (lambda h: _edit_header(h, "rec 12 500 5000", "rec 12"), "fs"),
    "wrong fs": (lambda h: _edit_header(h, "rec 12 500 5000", "rec 12 5 5000"), "fs"),
    "unknown units": (lambda h: _edit_header(h, "/mV", "/mmHg"), "units"),
    # Units alone may be missing (millivolts by the WFDB convention: tests/formats/test_wfdb_headers.py); a gain may not.
    "no gain": (lambda h: h.write_text(h.read_text().replace(h.read_text().splitlines()[1], "rec.dat 16", 1)), "units"),
    "unknown lead": (lambda h: _edit_header(h, " V6\n", " Pleth\n"), "unknown-lead"),
    "duplicate lead": (lambda h: _edit_header(h, " V6\n", " V5\n"), "duplicate-lead"),
    "missing signal line": (lambda h: h.write_text("\n".join(h.read_text().splitlines()[:-1]) + "\n"),
                            "corrupt-header"),
    "empty header": (lambda h: h.write_bytes(b""), "empty-file"),
    "non-UTF-8 header": (lambda h: h.write_bytes(h.read_bytes() + "# Größe\n".encode("latin-1")), "header-encoding"),
    "empty signal": (lambda h: h.with_suffix(".dat").write_bytes(b""), "empty-file"),
    "truncated signal": (lambda h: h.with_suffix(".dat").write_bytes(h.with_suffix(".dat").read_bytes()[:4000]),
                         "truncated-signal"),
    "missing signal file": (lambda h: h.with_suffix(".dat").unlink(), "missing-file"),
    "corrupt samples": (lambda h: _flip_dat(h), "checksum"),
}


def _flip_dat(hea: Path) -> None:
    dat = hea.with_suffix(".dat")
    raw = bytearray(dat.read_bytes())
    raw[1001] ^= 0x40
    dat.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_bad_record_gives_record_error_naming_it(wfdb_record, case):
    corrupt, reason = BAD_HEADERS[case]
    corrupt(wfdb_record)
    with pytest.raises(RecordError) as err:
        read_record(wfdb_record)
    assert err.value.reason == reason, str(err.value)
    assert "rec." in err.value.record


def test_nan_and_inf_samples(tmp_path):
    sig = synthetic_ecg()
    sig[3, 100:200] = np.nan  # written as the WFDB "invalid sample" code
    rec = read_record(write_wfdb(tmp_path, "nan", sig))
    assert np.isnan(rec.lead("aVR")[100:200]).all() and np.isfinite(rec.lead("I")).all()
    all_nan = np.full_like(sig, np.nan)
    with pytest.raises(RecordError) as err:
        read_record(write_wfdb(tmp_path, "allnan", all_nan))
    assert err.value.reason == "nan-share"


def test_missing_file_and_folder():
    with pytest.raises(RecordError) as err:
        read_record("/nonexistent/rec.hea")
    assert err.value.reason == "missing-file"


# --- fuzzing: corrupted files are always RecordError, never another exception ----------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_wfdb(tmp_path_factory.mktemp("pristine"), "rec", synthetic_ecg(fs=100, seconds=3), fs=100)


def _copy(pristine: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in pristine.parent.glob("rec.*"):
        shutil.copy(f, dest / f.name)
    return dest / "rec.hea"


def _read_or_record_error(hea: Path) -> None:
    try:
        rec = read_record(hea)
    except RecordError as err:
        assert err.reason and "rec" in err.record
        return
    assert rec.signal.ndim == 2 and not np.isinf(rec.signal).any()


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(pos=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_fuzz_header_byte_flips(pristine, tmp_path, pos, byte):
    hea = _copy(pristine, tmp_path / f"h{pos}_{byte}")
    raw = bytearray(hea.read_bytes())
    raw[pos % len(raw)] = byte
    hea.write_bytes(bytes(raw))
    _read_or_record_error(hea)


@FUZZ
@given(keep=st.floats(0, 1), junk=st.binary(max_size=64))
def test_fuzz_truncated_or_padded_signal(pristine, tmp_path, keep, junk):
    hea = _copy(pristine, tmp_path / f"d{hash((keep, junk)) & 0xffff}")
    dat = hea.with_suffix(".dat")
    raw = dat.read_bytes()
    dat.write_bytes(raw[: int(len(raw) * keep)] + junk)
    _read_or_record_error(hea)


@FUZZ
@given(field=st.integers(0, 8), line=st.integers(0, 12), value=st.sampled_from(
    ["", "0", "-1", "abc", "1e9", "NaN", "16x3", "99999999999", "/mV", "(", "212", "0(0)/uV"]))
def test_fuzz_header_field_values(pristine, tmp_path, field, line, value):
    hea = _copy(pristine, tmp_path / f"f{field}_{line}_{abs(hash(value)) % 997}")
    lines = hea.read_text().splitlines()
    tokens = lines[line].split()
    if field < len(tokens):
        tokens[field] = value
    lines[line] = " ".join(t for t in tokens if t)
    hea.write_text("\n".join(lines) + "\n")
    _read_or_record_error(hea)


def test_readers_module_exports():
    assert {"read_record", "find_records", "FORMAT_READERS"} <= set(dir(readers))


def test_fast_path_matches_wfdb(ptbxl_root, ludb_root, tmp_path):
    """The format-16 fast path must give exactly wfdb.rdsamp's physical values (NaN included)."""
    import wfdb

    paths = (find_records(ptbxl_root / "records100")[::50] + find_records(ptbxl_root / "records500")[::100]
             + find_records(ludb_root)[::40] + [ptbxl_root / "records100/01000/01020_lr.hea"])
    for path in paths:
        expected, fields = wfdb.rdsamp(str(path.with_suffix("")))
        rec = read_record(path)
        assert rec.fs == fields["fs"]
        np.testing.assert_allclose(rec.signal, expected.T, atol=1e-6, equal_nan=True, err_msg=str(path))


def test_other_storage_formats_go_through_wfdb(tmp_path):
    import wfdb

    sig = synthetic_ecg(fs=250, seconds=3)
    wfdb.wrsamp("f212", fs=250, units=["mV"] * 12, sig_name=list(LEADS_12), p_signal=sig.T, fmt=["212"] * 12,
                adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    rec = read_record(tmp_path / "f212.hea")
    assert rec.fs == 250 and rec.signal.shape == (12, 750)
    assert np.abs(rec.signal - sig).max() <= 0.5 / 200 + 1e-6  # 212 quantises to 1/200 mV


def test_patient_id_comment_is_used(tmp_path):
    """Records converted from hospital formats keep their patient in a header comment."""
    import numpy as np
    import wfdb

    from lsemvae.data.readers import read_record

    sig = np.random.default_rng(0).normal(0, 0.2, (500, 2))
    wfdb.wrsamp("r1", fs=100, units=["mV", "mV"], sig_name=["I", "II"], p_signal=sig, fmt=["16", "16"],
                comments=["patient_id: P42"], write_dir=str(tmp_path))
    assert read_record(tmp_path / "r1.hea").patient_id == "P42"
    wfdb.wrsamp("r2", fs=100, units=["mV", "mV"], sig_name=["I", "II"], p_signal=sig, fmt=["16", "16"],
                write_dir=str(tmp_path))
    assert read_record(tmp_path / "r2.hea").patient_id == "r2"
