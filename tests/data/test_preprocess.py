"""Preprocessing: QC reasons, invariants (hypothesis), R peaks against LUDB's cardiologist annotations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lsemvae.data.preprocess import (
    PIPELINE_VERSION, PreprocessConfig, bandpass, detect_r_peaks, fix_length, interpolate_nan, preprocess, resample,
    standardise,
)
from lsemvae.data.readers import read_record
from lsemvae.data.record import ECGRecord
from lsemvae.data.sources import ludb_index, ptbxl_index
from lsemvae.errors import ConfigError, RecordError
from lsemvae.config import validate
from lsemvae.leads import LEADS_12, LIMB_LEADS

from .conftest import synthetic_ecg


def _record(signal, fs=500.0, leads=LEADS_12) -> ECGRecord:
    return ECGRecord(signal.astype(np.float32), fs, tuple(leads), "r", "p", "test-record")


def test_config_derived_sizes_and_hash():
    cfg = PreprocessConfig()
    assert (cfg.n_samples, cfg.beat_samples, cfg.beat_offset) == (1000, 80, 30)
    assert PreprocessConfig(fs=500).beat_samples == 400
    assert cfg.hash() == PreprocessConfig().hash() != PreprocessConfig(lowpass_hz=30).hash()
    assert PIPELINE_VERSION
    with pytest.raises(ConfigError, match="beat_window_s"):
        validate(PreprocessConfig, {"beat_window_s": (0.1, 0.5)}, source="test.toml")
    with pytest.raises(ConfigError, match="fss"):
        validate(PreprocessConfig, {"fss": 100}, source="test.toml")


def test_clean_record_output_contract():
    out = preprocess(_record(synthetic_ecg(fs=500)))
    assert out.signal.shape == (12, 1000) and out.signal.dtype == np.float32
    assert out.beat.shape == (12, 80) and out.lead_mask.all() and out.sample_mask.all()
    assert np.allclose(out.signal.mean(axis=1), 0, atol=1e-4) and np.allclose(out.signal.std(axis=1), 1, atol=1e-3)
    assert out.heart_rate_bpm == pytest.approx(72, abs=2) and out.n_beats >= 9
    # the median beat peaks at the R position (30 samples after the window start)
    assert abs(int(np.argmax(out.beat[1])) - 30) <= 2
    assert out.flags == ()


def test_millimetres_keep_voltages_and_relative_lead_sizes():
    """Standardising each lead erases the voltage criteria of hypertrophy and the axis; millimetres keep them."""
    sig = synthetic_ecg(fs=500)
    mm_cfg = PreprocessConfig(amplitude="millimetres")
    assert mm_cfg.hash() != PreprocessConfig().hash()
    plain, mm = preprocess(_record(sig)), preprocess(_record(sig), mm_cfg)
    doubled = preprocess(_record(sig * 2.0), mm_cfg)
    # lead II's R wave is 1.2 mV above its baseline in the synthetic ECG: about 12 mm (band-pass shaves a little)
    assert 9.0 < mm.beat[1].max() < 13.0
    assert np.allclose(doubled.signal, 2 * mm.signal, atol=1e-3) and np.allclose(doubled.beat, 2 * mm.beat, atol=1e-3)
    # the R peaks and beats found are the same: detection always runs on the standardised leads
    assert mm.n_beats == plain.n_beats and abs(int(np.argmax(mm.beat[1])) - int(np.argmax(plain.beat[1]))) <= 1
    # relative sizes survive: lead II is taller than lead I in millimetres, equal once standardised
    assert mm.signal[1].std() / mm.signal[0].std() == pytest.approx(1.5, rel=0.05)
    assert plain.signal[1].std() == pytest.approx(plain.signal[0].std(), rel=1e-3)


def test_six_lead_record_is_masked_not_rejected():
    sig = synthetic_ecg(fs=250)[:6]
    out = preprocess(_record(sig, fs=250, leads=LIMB_LEADS))
    assert out.lead_mask.tolist() == [True] * 6 + [False] * 6
    assert (out.signal[6:] == 0).all() and (out.beat[6:] == 0).all()


def test_short_record_is_padded_with_mask():
    out = preprocess(_record(synthetic_ecg(fs=500, seconds=4)))
    assert out.sample_mask.sum() == 400 and not out.sample_mask[400:].any()
    assert (out.signal[:, 400:] == 0).all()
    long = preprocess(_record(synthetic_ecg(fs=500, seconds=14)))
    assert long.sample_mask.all() and long.signal.shape == (12, 1000)


@pytest.mark.parametrize("damage, reason, names", [
    (lambda s: s.__setitem__((slice(2, 5), slice(0, 3000)), np.nan), "nan-share", "III"),
    (lambda s: s.__setitem__((7, slice(None)), 0.3), "flat-line", "V2"),
    (lambda s: s.__setitem__(8, np.clip(s[8], -0.2, 0.2)), "saturation", "V3"),
    (lambda s: s.__setitem__(9, s[9] * 1000), "amplitude", "V4"),
])
def test_quality_rejections_name_reason_and_leads(damage, reason, names):
    sig = synthetic_ecg(fs=500)
    damage(sig)
    with pytest.raises(RecordError) as err:
        preprocess(_record(sig))
    assert err.value.reason == reason and names in str(err.value) and "test-record" in str(err.value)


def test_too_short_and_no_beats():
    with pytest.raises(RecordError) as err:
        preprocess(_record(synthetic_ecg(fs=500, seconds=1)))
    assert err.value.reason == "too-short"
    noise = np.random.default_rng(0).standard_normal((12, 5000)) * 0.05
    with pytest.raises(RecordError) as err:
        preprocess(_record(noise), PreprocessConfig(identity_action="off"))
    assert err.value.reason == "no-beats" and "noise" in str(err.value)


def test_swapped_limb_leads_are_flagged_or_rejected():
    sig = synthetic_ecg(fs=500)
    sig[[4, 5]] = sig[[5, 4]]  # aVL <-> aVF
    out = preprocess(_record(sig))
    assert out.flags and out.flags[0].startswith("limb-identity")
    with pytest.raises(RecordError) as err:
        preprocess(_record(sig), PreprocessConfig(identity_action="reject"))
    assert err.value.reason == "limb-identity"


def test_nan_gaps_are_interpolated():
    sig = synthetic_ecg(fs=500)
    sig[0, 1000:1040] = np.nan
    out = preprocess(_record(sig))
    assert np.isfinite(out.signal).all()
    x = np.array([[1.0, np.nan, 3.0, np.nan]])
    assert interpolate_nan(x).tolist() == [[1.0, 2.0, 3.0, 3.0]]


def test_resample_and_fix_length_units():
    x = np.sin(2 * np.pi * 5 * np.arange(5000) / 500)[None]
    y = resample(x, 500, 100)
    assert y.shape == (1, 1000) and np.corrcoef(y[0], x[0, ::5])[0, 1] > 0.99
    assert resample(x, 257, 100).shape[1] == round(5000 * 100 / 257)
    cropped, mask = fix_length(np.arange(10.0)[None], 4)
    assert cropped.tolist() == [[3.0, 4.0, 5.0, 6.0]] and mask.all()


def test_bandpass_removes_baseline_and_mains():
    fs = 500
    t = np.arange(5000) / fs
    cfg = PreprocessConfig(fs=fs, lowpass_hz=100)
    drift = bandpass((2.0 * np.sin(2 * np.pi * 0.1 * t))[None], cfg)[0]
    assert np.abs(drift[1000:-1000]).max() < 0.05  # 2 mV of wander -> under 0.05 mV
    mains = 0.5 * np.sin(2 * np.pi * 50 * t) + np.sin(2 * np.pi * 10 * t)
    spec_in = np.abs(np.fft.rfft(mains))
    spec_out = np.abs(np.fft.rfft(bandpass(mains[None], cfg)[0]))
    k50, k10 = 50 * 10, 10 * 10  # 0.1 Hz bins
    assert spec_out[k50] < spec_in[k50] / 100  # notch
    assert spec_out[k10] == pytest.approx(spec_in[k10], rel=0.02)  # in-band signal kept


# --- property tests -------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(
    fs=st.sampled_from([100.0, 128.0, 250.0, 257.0, 360.0, 500.0, 1000.0]),
    seconds=st.floats(2.5, 14.0),
    hr=st.floats(40, 160),
    n_leads=st.sampled_from([6, 12]),
    target_fs=st.sampled_from([100, 250]),
    seed=st.integers(0, 2**16),
)
def test_preprocess_invariants(fs, seconds, hr, n_leads, target_fs, seed):
    assume(seconds * hr / 60 >= 3)  # a strip with fewer than 2 complete beats is rightly rejected (2.5 s at 40 bpm)
    sig = synthetic_ecg(fs=fs, seconds=seconds, hr_bpm=hr, seed=seed)[:n_leads]
    cfg = PreprocessConfig(fs=target_fs)
    out = preprocess(_record(sig, fs=fs, leads=LEADS_12[:n_leads]), cfg)
    assert out.signal.shape == (12, cfg.n_samples) and out.beat.shape == (12, cfg.beat_samples)
    assert np.isfinite(out.signal).all() and np.isfinite(out.beat).all()
    assert out.lead_mask.sum() == n_leads
    n_real = int(out.sample_mask.sum())
    assert abs(n_real - min(cfg.n_samples, round(seconds * target_fs))) <= 2
    assert out.sample_mask[:n_real].all() and not out.sample_mask[n_real:].any()  # padding at the end only
    present = out.signal[out.lead_mask][:, out.sample_mask]
    assert np.allclose(present.mean(axis=1), 0, atol=1e-3) and np.allclose(present.std(axis=1), 1, atol=1e-2)
    assert (out.signal[~out.lead_mask] == 0).all() and (out.signal[:, ~out.sample_mask] == 0).all()
    again = preprocess(_record(sig, fs=fs, leads=LEADS_12[:n_leads]), cfg)
    assert np.array_equal(out.signal, again.signal) and np.array_equal(out.beat, again.beat)  # deterministic


@settings(max_examples=40, deadline=None)
@given(edits=st.lists(st.tuples(
    st.integers(0, 11), st.integers(0, 2999), st.integers(1, 3000),
    st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e6, -3.0, 1e-7]),
), max_size=6), scale=st.sampled_from([1e-4, 1.0, 50.0]))
def test_preprocess_on_damaged_signals_is_output_or_record_error(edits, scale):
    sig = synthetic_ecg(fs=300, seconds=10) * scale
    for lead, start, length, value in edits:
        sig[lead, start:start + length] = value
    try:
        out = preprocess(_record(sig, fs=300))
    except RecordError as err:
        assert err.reason and "test-record" in str(err)
        return
    assert np.isfinite(out.signal).all() and np.isfinite(out.beat).all()


# --- real data ------------------------------------------------------------------------------------

def test_partial_ptbxl_records_are_rejected_with_named_leads(ptbxl_root):
    refs = [r for r in ptbxl_index(ptbxl_root) if 1017 <= r.meta["ecg_id"] <= 1034]
    assert len(refs) == 18
    for ref in refs:
        with pytest.raises(RecordError) as err:
            preprocess(ref.load())
        assert err.value.reason == "nan-share" and "V6 75%" in str(err.value) and " II " not in str(err.value)


def test_real_records_pass_and_keep_einthoven(ptbxl_root, ludb_root):
    refs = ptbxl_index(ptbxl_root)[:1000:25] + ludb_index(ludb_root)[::10]
    for ref in refs:
        out = preprocess(ref.load())
        assert out.flags == () and out.lead_mask.all() and 30 < out.heart_rate_bpm < 200, ref.record_id


def test_r_peaks_agree_with_ludb_annotations(ludb_root):
    """LUDB cardiologists marked each QRS peak (symbol N) in lead II; most must be found within 50 ms."""
    import wfdb

    cfg = PreprocessConfig()
    sensitivities = []
    for ref in ludb_index(ludb_root)[::8]:
        rec = read_record(ref.path)
        ann = wfdb.rdann(str(ref.path.with_suffix("")), "ii")
        truth = np.array([s for s, sym in zip(ann.sample, ann.symbol) if sym == "N"]) * cfg.fs / rec.fs
        x, mask = fix_length(bandpass(resample(rec.signal.astype(float), rec.fs, cfg.fs), cfg), cfg.n_samples)
        peaks = detect_r_peaks(standardise(x, mask), cfg.fs, mask)
        dist = np.abs(truth[:, None] - peaks[None, :]).min(axis=1)
        sensitivities.append(float((dist <= 0.05 * cfg.fs).mean()))
    assert np.mean(sensitivities) > 0.9 and np.median(sensitivities) == 1.0
