"""DICOM ECG waveform reader: pydicom's bundled real 12-lead file, writer-built variants, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lsemvae.data.formats import dicom
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12, check_limb_identities

from .spec_writers import quantise, write_dicom_ecg


@pytest.fixture(scope="module")
def real_path() -> Path:
    # Real device file (Mortara ELI 250, 12-lead ECG IOD) shipped inside pydicom's wheel: no download.
    path = get_testdata_file("waveform_ecg.dcm", download=False)
    assert path is not None, "pydicom's bundled waveform_ecg.dcm is missing from the installed package"
    return Path(path)


def test_real_sample_reads_with_names_from_channel_codes(real_path):
    rec = dicom.read(real_path)
    assert dicom.sniff(real_path)
    assert rec.leads == LEADS_12
    assert rec.fs == 1000.0 and rec.n_samples == 10000
    assert rec.meta["dicom_group_label"] == "RHYTHM"  # not the 1.2-s MEDIAN BEAT group
    assert rec.patient_id == "642341"
    # Sensitivity 1.25 uV/LSB: QRS peaks of a resting ECG are ~0.3-3 mV, not volts or microvolts.
    peaks = np.abs(rec.signal).max(axis=1)
    assert np.all(peaks > 0.2) and np.all(peaks < 5.0)
    check = check_limb_identities(rec.signal, rec.leads, tolerance_mv=0.01)
    assert check.ok, check.message


def test_real_sample_group_choice_prefers_original_rhythm(real_path, tmp_path):
    ds = pydicom.dcmread(real_path)
    ds.WaveformSequence = pydicom.sequence.Sequence(list(reversed(ds.WaveformSequence)))  # median first
    path = tmp_path / "median_first.dcm"
    ds.save_as(path)
    rec = dicom.read(path)
    assert rec.n_samples == 10000 and rec.meta["dicom_group"] == 1


@pytest.mark.parametrize("scheme", ["MDC", "SCPECG"])
def test_writer_built_file_round_trips_in_any_channel_order(tmp_path, ecg_mv, reversed_leads, scheme):
    digits = {k: quantise(ecg_mv[k], 2.5) for k in reversed_leads}
    path = write_dicom_ecg(tmp_path / "r.dcm", digits, fs=500.0, sensitivity=2.5, units="uV", scheme=scheme)
    rec = dicom.read(path)
    assert rec.leads == reversed_leads and rec.fs == 500.0 and rec.patient_id == "PAT-7"
    for name in LEADS_12:
        np.testing.assert_allclose(rec.lead(name), ecg_mv[name], atol=0.00126)


def test_unsigned_samples_with_baseline_in_mv(tmp_path, ecg_mv):
    # 16-bit unsigned with ChannelBaseline -3.2768 mV: physical = raw * 0.0001 mV + baseline.
    digits = {k: np.round(ecg_mv[k] / 1e-4).astype(np.int64) + 32768 for k in ("I", "II")}
    path = write_dicom_ecg(tmp_path / "u.dcm", digits, sensitivity=1e-4, units="mV", baseline=-3.2768,
                           interpretation="US")
    rec = dicom.read(path)
    np.testing.assert_allclose(rec.lead("II"), ecg_mv["II"], atol=1e-4)


def _modified(real_path: Path, tmp_path: Path, change) -> Path:
    ds = pydicom.dcmread(real_path)
    change(ds)
    path = tmp_path / "bad.dcm"
    ds.save_as(path)
    return path


def _drop_source(ds):
    del ds.WaveformSequence[0].ChannelDefinitionSequence[4].ChannelSourceSequence


def _unknown_code(ds):
    src = ds.WaveformSequence[0].ChannelDefinitionSequence[2].ChannelSourceSequence[0]
    src.CodeValue, src.CodeMeaning = "5.6.3-9-200", "Lead Q"


def _conflict(ds):
    ds.WaveformSequence[0].ChannelDefinitionSequence[4].ChannelSourceSequence[0].CodeMeaning = "Lead aVF"


def _mulaw(ds):
    ds.WaveformSequence[0].WaveformSampleInterpretation = "MB"


def _truncated(ds):
    ds.WaveformSequence[0].WaveformData = ds.WaveformSequence[0].WaveformData[:1000]


def _pressure_units(ds):
    ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0].CodeValue = "mm[Hg]"


@pytest.mark.parametrize("change, reason, words", [
    (_drop_source, "missing-lead-label", "channel 5"),
    (_unknown_code, "unknown-lead", "channel 3"),
    (_conflict, "lead-conflict", "aVL"),
    (_mulaw, "unsupported-variant", "MB"),
    (_truncated, "sample-count", "expected 240000"),
    (_pressure_units, "units", "mm[Hg]"),
])
def test_bad_dicom_variants_raise_record_error_naming_file(real_path, tmp_path, change, reason, words):
    path = _modified(real_path, tmp_path, change)
    with pytest.raises(RecordError) as info:
        dicom.read(path)
    assert info.value.reason == reason
    assert str(path) in str(info.value) and words in str(info.value)


def test_dicom_image_is_not_an_ecg(tmp_path):
    path = get_testdata_file("CT_small.dcm", download=False)
    assert dicom.sniff(path)
    with pytest.raises(RecordError) as info:
        dicom.read(path)
    assert info.value.reason == "not-ecg"


def test_garbage_after_preamble_is_corrupt(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"x" * 20)
    assert dicom.sniff(path)
    with pytest.raises(RecordError) as info:
        dicom.read(path)
    assert info.value.reason == "corrupt"


def test_compressed_transfer_syntax_is_unsupported(real_path, tmp_path):
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(real_path)
    ds.file_meta.TransferSyntaxUID = RLELossless  # dataset stays explicit little endian, as RLE files are
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(RecordError) as info:
        dicom.read(path)
    assert info.value.reason == "unsupported-variant" and "RLE" in str(info.value)


def test_padding_value_samples_become_nan(tmp_path, ecg_mv):
    digits = {k: quantise(ecg_mv[k], 2.5) for k in ("I", "II")}
    digits["II"][:250] = -32768  # lead II starts half a second late
    rec = dicom.read(write_dicom_ecg(tmp_path / "pad.dcm", digits, padding=-32768))
    assert np.isnan(rec.lead("II")[:250]).all() and not np.isnan(rec.lead("II")[250:]).any()
    assert not np.isnan(rec.lead("I")).any()


# --- WaveformPaddingValue: padding marks samples outside a channel's recording, never mid-signal zeros --------------

def test_padding_zero_keeps_genuine_zero_samples(tmp_path, ecg_mv):
    """A toolkit that declares padding 0: every genuine 0 uV sample inside the signal stays 0.0 mV, not NaN."""
    digits = {k: quantise(ecg_mv[k], 2.5) for k in LEADS_12}
    zeros = {k: int((d[1:-1] == 0).sum()) for k, d in digits.items()}
    assert sum(zeros.values()) > 500  # genuine zeros mid-signal in every lead
    rec = dicom.read(write_dicom_ecg(tmp_path / "pad0.dcm", digits, padding=0))
    assert not np.isnan(rec.signal).any() and rec.n_samples == 5000
    for name in LEADS_12:
        np.testing.assert_array_equal(rec.lead(name) == 0.0, digits[name] == 0)


def test_trailing_padding_of_every_channel_is_cut_with_a_note(tmp_path, ecg_mv):
    digits = {k: np.concatenate([quantise(ecg_mv[k], 2.5), np.zeros(500, dtype=np.int64)]) for k in LEADS_12}
    rec = dicom.read(write_dicom_ecg(tmp_path / "tail.dcm", digits, padding=0))
    assert rec.n_samples == 5000 and not np.isnan(rec.signal).any()
    assert any("last 500 samples (1.000 s) of every lead" in n for n in rec.notes)
    np.testing.assert_allclose(rec.lead("V3"), ecg_mv["V3"], atol=0.00126)


def test_a_lead_stopping_early_is_missing_there_with_a_note(tmp_path, ecg_mv):
    digits = {k: quantise(ecg_mv[k], 2.5) for k in ("I", "II", "V1")}
    digits["V1"][-300:] = -32768
    rec = dicom.read(write_dicom_ecg(tmp_path / "early.dcm", digits, padding=-32768))
    assert np.isnan(rec.lead("V1")[-300:]).all() and not np.isnan(rec.lead("V1")[:-300]).any()
    assert rec.n_samples == 5000 and any("lead V1: 0 leading and 300 trailing" in n for n in rec.notes)


# --- hostile files ----------------------------------------------------------------------------------------------

def _deflate_bomb(path: Path, real_path: Path, gigabytes: int) -> Path:
    """A deflated-transfer-syntax DICOM whose dataset inflates to ``gigabytes`` GB of zeros from ~2 MB."""
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(real_path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    meta = pydicom.filereader.read_file_meta_info(path)
    start = 132 + 12 + meta.FileMetaInformationGroupLength
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = block.compress(bytes(16 << 20)) + block.flush(zlib.Z_FULL_FLUSH)  # 16 MB of zeros, self-contained
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.truncate()
        for _ in range(gigabytes * 64):
            fh.write(chunk)
        fh.write(b"\x03\x00")  # final empty block
    return path


def test_deflate_bomb_is_refused_with_bounded_memory(tmp_path, real_path):
    import tracemalloc

    from lsemvae.data.readers import read_record

    path = _deflate_bomb(tmp_path / "bomb.dcm", real_path, gigabytes=2)
    assert path.stat().st_size < 3 * 2**20
    tracemalloc.start()
    try:
        with pytest.raises(RecordError) as info:
            read_record(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too-large" and "LSEMVAE_MAX_FILE_MB" in str(info.value)
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MB while refusing a 2 GB inflation"


def test_deflated_file_still_reads(tmp_path, real_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(real_path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "dfl.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(dicom.read(tmp_path / "dfl.dcm").signal, dicom.read(real_path).signal)


def test_pydicom_test_files_never_crash():
    """Every DICOM pydicom ships (images, SR, RT, broken files): read or refused with a reason, no traceback."""
    from lsemvae.data.readers import read_record

    outcomes = {}
    for name in sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm")):  # no download
        try:
            outcomes[Path(name).name] = read_record(name).meta["format"]
        except RecordError as err:
            outcomes[Path(name).name] = err.reason
    assert outcomes.pop("waveform_ecg.dcm") == "dicom"
    assert len(outcomes) > 70
    assert set(outcomes.values()) <= {"not-ecg", "corrupt", "unsupported-variant", "unknown-format"}, outcomes
