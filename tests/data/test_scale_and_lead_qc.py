"""QC that names the true cause, on records crafted from real ones.

* A gain error is a scale problem, not a flat line: WFDB copies of real PTB-XL records whose header gain is 1000x,
  5x or 0.2x the real one are rejected as wrong-scale or flagged implausible-amplitude with the measured amplitude
  and the fix (a gain correction), while real records are never flagged.
* QC applies to the leads used: a copy with flat V1-V6 or a spike in V2 is rejected for a 12-lead reader, kept with
  those leads masked (and a note) for a 6-lead one.
"""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.cli import main
from lsemvae.data.cache import build_cohort, lead_fault_skips, load_cohort, usable_rows
from lsemvae.data.preprocess import PreprocessConfig, preprocess
from lsemvae.data.readers import read_record
from lsemvae.data.sources import folder_index, ludb_index, ptbxl_index, with_gain_correction
from lsemvae.errors import RecordError
from lsemvae.leads import LIMB_LEADS, PRECORDIAL_LEADS
from tests.crafted import edited_copy, flat_precordials, gain_copy, spike_in_v2

CFG = PreprocessConfig(amplitude="millimetres")
LOW, HIGH = CFG.qrs_amplitude_mv


def _verdict(record) -> str:
    """What QC says about a record: pass, implausible-amplitude (kept, flagged) or the rejection reason."""
    try:
        out = preprocess(record, CFG)
    except RecordError as err:
        return err.reason
    return "implausible-amplitude" if any(f.startswith("implausible-amplitude") for f in out.flags) else "pass"


def _scale_of(record) -> float:
    """The median QRS peak-to-peak QC measures (mV), read back from an implausible copy's message or measured."""
    from lsemvae.data.preprocess import measure_scale

    return measure_scale(record.signal.astype(float), record.fs, record.leads, CFG).median_mv


@pytest.fixture(scope="module")
def originals(ptbxl_root):
    """The first 12 full 10-s records at 100 Hz (no choice by amplitude)."""
    return [ptbxl_root / "records100" / "00000" / f"{n:05d}_lr.hea" for n in range(1, 13)]


def test_a_header_gain_1000x_too_high_is_a_wrong_scale_not_a_flat_line(originals, tmp_path):
    for hea in originals:
        copy = read_record(gain_copy(hea, tmp_path, 1000.0))
        assert np.allclose(copy.signal * 1000, read_record(hea).signal, atol=1e-4)  # the same ECG, 1000x too small
        with pytest.raises(RecordError) as err:
            preprocess(copy, CFG)
        msg = str(err.value)
        # before: "flat line (std < 0.005 mV) in leads I, II, ... V6"; the data team would look for electrode faults
        assert err.value.reason == "wrong-scale" and "flat line" not in msg, msg
        assert "shaped like an ECG" in msg and "median QRS peak-to-peak over leads 0.00" in msg and "lead II" in msg
        assert f"plausible: {LOW:g}-{HIGH:g} mV" in msg and "gain correction of about 1000" in msg
    flat = edited_copy(originals[0], tmp_path, "flat", lambda s, leads, fs: 0.0 * s + 0.2)  # electrodes off
    with pytest.raises(RecordError) as err:
        preprocess(read_record(flat), CFG)
    assert err.value.reason == "flat-line"  # a truly flat record stays a flat line


@pytest.mark.parametrize("factor, size", [(5.0, "small"), (0.2, "large")])
def test_a_gain_5x_off_is_flagged_whenever_the_amplitude_leaves_what_real_ecgs_reach(originals, tmp_path, factor,
                                                                                      size):
    """5x too small / too large: never passes silently once outside the plausible range; inside it, nothing can
    tell a gain error from a real low- or high-voltage ECG (the README says so), and QC does not pretend to."""
    flagged = 0
    for hea in originals:
        copy = read_record(gain_copy(hea, tmp_path, factor))
        amplitude = _scale_of(copy)
        verdict = _verdict(copy)
        if LOW <= amplitude <= HIGH:
            assert verdict == "pass", (hea.name, amplitude, verdict)
            continue
        flagged += 1
        # too large, some leads pass 20 mV: rejected for them, the scale named as the likely cause
        assert verdict in (("implausible-amplitude",) if size == "small" else ("implausible-amplitude", "amplitude"))
        if verdict == "implausible-amplitude":
            note = next(f for f in preprocess(copy, CFG).flags if f.startswith("implausible-amplitude"))
            assert f"too {size}" in note and f"{LOW:g}-{HIGH:g} mV" in note and "gain correction" in note
            assert f"{amplitude:.3g} mV" in note
        else:
            with pytest.raises(RecordError, match="implausible-amplitude"):
                preprocess(copy, CFG)
    assert flagged >= 6  # measured on these 12 records: 5x too small 6 flagged, 5x too large 9


def test_real_records_are_never_flagged_for_scale(ptbxl_root, ludb_root):
    """No false positive on a spread of real PTB-XL (100 and 500 Hz) and LUDB records; benchmarks/external.py
    measures every shared record (scale_qc in benchmarks/results/external.json)."""
    refs = ptbxl_index(ptbxl_root)[:1000:9] + ptbxl_index(ptbxl_root, rate=500)[::25] + ludb_index(ludb_root)[::4]
    verdicts = {str(ref.path): _verdict(ref.load()) for ref in refs}
    assert len(verdicts) > 150 and list(verdicts.values()).count("pass") > 0.97 * len(verdicts)
    assert not {"implausible-amplitude", "wrong-scale"} & set(verdicts.values()), \
        {k: v for k, v in verdicts.items() if v != "pass"}


@pytest.mark.e2e
def test_no_real_shared_record_is_flagged_for_scale(ptbxl_root, ludb_root):
    refs = ptbxl_index(ptbxl_root) + ptbxl_index(ptbxl_root, rate=500) + ludb_index(ludb_root)
    flagged = [r.record_id for r in refs if _verdict(r.load()) in ("implausible-amplitude", "wrong-scale")]
    assert flagged == []


def test_gain_correction_fixes_the_export_through_data_prepare(originals, tmp_path, capsys):
    for hea in originals[:6]:
        gain_copy(hea, tmp_path / "export", 5.0)
    cache = tmp_path / "cache"
    args = ["data", "prepare", "--dataset", "folder", "--root", str(tmp_path / "export"), "--cache-dir", str(cache),
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "kept with note implausible-amplitude:" in out and "too small" in out and "--gain-correction" in out
    assert main([*args, "--gain-correction", "5", "--name", "fixed"]) == 0
    out = capsys.readouterr().out
    assert "implausible-amplitude" not in out and "kept with note gain-correction: 6" in out
    (fixed,) = cache.glob("fixed-*")
    fixed = load_cohort(fixed)
    real = build_cohort(folder_index(originals[0].parent)[:6], [], CFG, cache, name="real", progress=False)
    assert [m["gain_correction"] for m in fixed.meta] == [5.0] * 6
    assert np.allclose(np.asarray(fixed.signals), np.asarray(real.signals), atol=1e-3)  # mm, the real ECGs again
    # the correction is part of the cache key: the uncorrected cache is another one
    assert len(list(cache.glob("folder-100hz-*"))) == 1 and len(list(cache.glob("fixed-*"))) == 1
    assert with_gain_correction(folder_index(tmp_path / "export"), 5)[0].load().meta["gain_correction"] == 5


# --- QC applies to the leads a model reads -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_leads(ptbxl_root, tmp_path_factory):
    """Folder: 4 real records, a flat-V1..V6 copy of each of the first two and a V2-spike copy of the next two."""
    folder = tmp_path_factory.mktemp("leads")
    src = ptbxl_root / "records100" / "00000"
    for n in range(1, 5):
        gain_copy(src / f"{n:05d}_lr.hea", folder, 1.0)
    edited_copy(src / "00001_lr.hea", folder, "flat_v_00001", flat_precordials)
    edited_copy(src / "00002_lr.hea", folder, "flat_v_00002", flat_precordials)
    edited_copy(src / "00003_lr.hea", folder, "spike_v2_00003", spike_in_v2)
    edited_copy(src / "00004_lr.hea", folder, "spike_v2_00004", spike_in_v2)
    return folder


def test_flat_precordials_and_a_v2_spike_reject_for_12_leads_and_mask_for_6(broken_leads):
    for name, reason, leads in (("flat_v_00001", "flat-line", "V1, V2, V3, V4, V5, V6"),
                                ("spike_v2_00003", "amplitude", "V2")):
        record = read_record(broken_leads / f"{name}.hea")
        with pytest.raises(RecordError) as err:
            preprocess(record, CFG)  # every lead the record has is used: as before
        assert err.value.reason == reason and f"in leads {leads}" in str(err.value)
        out = preprocess(record, CFG, leads=LIMB_LEADS)
        masked = PRECORDIAL_LEADS if reason == "flat-line" else ("V2",)
        assert set(out.lead_faults) == set(masked) and {r for r, _ in out.lead_faults.values()} == {reason}
        assert out.lead_mask.tolist() == [lead not in masked for lead in LIMB_LEADS + PRECORDIAL_LEADS]
        assert any(f.startswith("masked-leads:") and leads in f for f in out.flags)
        # the limb leads are the real record's, untouched by the broken leads (R peaks found on the good leads)
        clean = preprocess(read_record(broken_leads / f"{name[-5:]}_lr.hea"), CFG)
        assert np.allclose(out.signal[:6], clean.signal[:6], atol=1e-3) and out.n_beats == clean.n_beats


def test_the_cache_keeps_them_masked_and_each_lead_set_uses_what_it_can(broken_leads, tmp_path):
    cohort = build_cohort(folder_index(broken_leads), [], CFG, tmp_path, name="leads", progress=False)
    assert len(cohort) == 8 and cohort.skipped == []
    broken = {rid for rid in cohort.record_ids if rid.startswith(("flat", "spike"))}
    six = {cohort.record_ids[i] for i in usable_rows(cohort, "6L")}
    twelve = {cohort.record_ids[i] for i in usable_rows(cohort, "12L")}
    assert six == set(cohort.record_ids) and twelve == set(cohort.record_ids) - broken
    skips = {s["record"]: s for s in lead_fault_skips(cohort, "12L")}
    assert set(skips) == broken and skips["spike_v2_00003"]["reason"] == "amplitude"
    assert "V2" in skips["spike_v2_00003"]["message"] and skips["flat_v_00001"]["reason"] == "flat-line"
    assert lead_fault_skips(cohort, "6L") == []
