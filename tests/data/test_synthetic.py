"""Synthetic cohort: physiology of the phenotypes, site effects, files the real readers load."""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import math
from pathlib import Path

import numpy as np
import pytest
import wfdb
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lsemvae.config import load_toml
from lsemvae.data import readers, sources
from lsemvae.errors import ConfigError
from lsemvae.leads import LEADS_12, LIMB_LEADS, check_limb_identities, lead_index
from lsemvae.data.synth.artefacts import Artefacts
from lsemvae.data.synth.features import beat_features, median_beats
from lsemvae.data.synthetic import (
    LABEL_COLUMNS, CohortSpec, SiteSpec, default_cohort, generate_signals, register_synth, spec_with_overrides,
    write_cohort, write_wfdb,
)

REPO = Path(__file__).resolve().parents[2]
NOISY = Artefacts(noise_mv=0.05, wander_mv=0.3, powerline_hz=50, powerline_mv=0.05, gain_sd=0.05)


def _gen(n=60, seed=7, fs=250, seconds=6.0, **kw):
    return generate_signals(n, np.random.default_rng(seed), fs=fs, seconds=seconds, **kw)


def _features(signals, meta, fs=250):
    beats, times = median_beats(signals, fs, meta["r_peaks"])
    return beat_features(beats, times)


@pytest.fixture(scope="module")
def counterfactual():
    """The same 60 individuals healthy, with severe right-heart disease, and with left-sided disease."""
    healthy = _gen(prevalence=0.0, isolated_left=0.0)
    right = _gen(prevalence=1.0, left_prevalence=0.0, severity=(1.0, 1.0))
    left = _gen(prevalence=0.0, isolated_left=1.0, severity=(1.0, 1.0))
    return {name: (sig, lab, _features(sig, meta)) for name, (sig, lab, meta) in
            {"healthy": healthy, "right": right, "left": left}.items()}


def test_same_seed_same_ecgs_other_seed_other_ecgs():
    a, la, ma = _gen(n=8, artefacts=NOISY)
    b, lb, mb = _gen(n=8, artefacts=NOISY)
    c, _, _ = _gen(n=8, seed=8, artefacts=NOISY)
    assert a.shape == (8, 12, 1500) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    for key in la:
        np.testing.assert_array_equal(la[key], lb[key])
    np.testing.assert_array_equal(ma["age"], mb["age"])
    assert np.abs(a - c).mean() > 0.01


def test_amplitudes_are_physiological():
    sig, _, meta = _gen(n=40, prevalence=0.0, isolated_left=0.0)
    beats, _ = median_beats(sig, 250, meta["r_peaks"])
    qrs_ii = np.ptp(beats[:, lead_index("II")], axis=1)
    assert 0.7 < np.median(qrs_ii) < 2.5  # mV
    assert np.abs(sig).max() < 6.0
    hr = np.array([len(p) for p in meta["r_peaks"]]) / 6.0 * 60
    assert 45 < np.median(hr) < 100


def test_limb_identities_exact_before_noise_and_after_artefacts():
    for art, tol in ((None, 1e-6), (NOISY, 1e-5)):
        sig, _, _ = _gen(n=6, artefacts=art)
        i, ii = sig[:, lead_index("I")], sig[:, lead_index("II")]
        np.testing.assert_allclose(sig[:, lead_index("III")], ii - i, atol=tol)
        np.testing.assert_allclose(sig[:, lead_index("aVR")], -(i + ii) / 2, atol=tol)
        np.testing.assert_allclose(sig[:, lead_index("aVL")], i - ii / 2, atol=tol)
        np.testing.assert_allclose(sig[:, lead_index("aVF")], ii - i / 2, atol=tol)
        assert all(check_limb_identities(s, LEADS_12, tolerance_mv=0.001).ok for s in sig)


def test_right_heart_turns_the_frontal_axis_right(counterfactual):
    healthy = counterfactual["healthy"][2]["qrs_axis_deg"]
    right = counterfactual["right"][2]["qrs_axis_deg"]
    assert np.median(healthy) < 75
    assert np.mean(right > 90) > 0.7  # right axis deviation
    assert np.mean(right - healthy) > 35


def test_right_heart_raises_v1_r_over_s_and_deepens_s_in_v6(counterfactual):
    h, r = counterfactual["healthy"][2], counterfactual["right"][2]
    ratio_h = h["v1_r_mv"] / np.maximum(h["v1_s_mv"], 0.02)
    ratio_r = r["v1_r_mv"] / np.maximum(r["v1_s_mv"], 0.02)
    assert np.mean(ratio_r > ratio_h) > 0.9
    assert np.median(ratio_r) > 1.0 > np.median(ratio_h)
    assert np.mean(r["v6_s_mv"] > h["v6_s_mv"]) > 0.9


def test_right_heart_p_pulmonale(counterfactual):
    h, r = counterfactual["healthy"][2], counterfactual["right"][2]
    assert np.median(h["p_ii_mv"]) < 0.2
    assert np.mean(r["p_ii_mv"] > h["p_ii_mv"]) > 0.95
    assert np.mean(r["p_ii_mv"] >= 0.25) > 0.5


def test_left_sided_disease_left_atrial_p_and_lvh_voltage(counterfactual):
    h, left = counterfactual["healthy"][2], counterfactual["left"][2]
    assert np.mean(left["p_v1_terminal_mv"] < h["p_v1_terminal_mv"]) > 0.9  # deeper negative terminal P in V1
    sokolow_h = h["v1_s_mv"] + h["v6_r_mv"]
    sokolow_l = left["v1_s_mv"] + left["v6_r_mv"]
    assert np.mean(sokolow_l > sokolow_h) > 0.9
    # Left-sided disease does not mimic the right-heart axis.
    assert np.median(np.abs(left["qrs_axis_deg"] - h["qrs_axis_deg"])) < 15
    assert np.mean(left["qrs_axis_deg"] > 90) <= np.mean(h["qrs_axis_deg"] > 90)


def test_severity_is_graded():
    axes = []
    for s in (0.0, 0.5, 1.0):
        sig, _, meta = _gen(n=40, prevalence=1.0, left_prevalence=0.0, severity=(s, s))
        axes.append(np.median(_features(sig, meta)["qrs_axis_deg"]))
    assert axes[0] + 15 < axes[1] < axes[2] - 15


def test_labels_are_consistent_and_follow_prevalence():
    _, lab, meta = _gen(n=600, fs=100, seconds=3.0, prevalence=0.3, left_prevalence=0.5, isolated_left=0.1)
    right = lab["right_heart"] == 1
    assert 0.24 < right.mean() < 0.36
    assert np.all(np.isnan(lab["phenotype"][~right]))
    assert np.array_equal(lab["phenotype"][right], lab["left_atrial"][right].astype(np.float32))
    assert np.all(lab["severity"][~right] == 0)
    assert np.all((lab["severity"][right] >= 0) & (lab["severity"][right] <= 1))
    assert 0.4 < lab["left_atrial"][right].mean() < 0.6 and lab["left_atrial"][~right].mean() < 0.16
    assert set(np.unique(meta["sex"])) == {"F", "M"} and meta["age"].min() >= 18


def test_records_of_one_patient_share_labels_not_samples():
    patients = np.array([0, 0, 1, 2, 2])
    sig, lab, meta = generate_signals(5, np.random.default_rng(3), fs=100, seconds=4, prevalence=0.5,
                                      patients=patients)
    assert lab["right_heart"][0] == lab["right_heart"][1] and lab["severity"][3] == lab["severity"][4]
    assert meta["age"][0] == meta["age"][1]
    assert not np.allclose(sig[0], sig[1])


def test_artefacts_do_not_depend_on_labels():
    """Same seed, other prevalence: the added artefacts are identical, so noise cannot leak labels."""
    art = Artefacts(noise_mv=0.05, wander_mv=0.3, powerline_hz=50, powerline_mv=0.05, gain_sd=0.0)
    diffs = []
    for prevalence in (0.0, 1.0):
        noisy, _, _ = _gen(n=6, prevalence=prevalence, artefacts=art)
        clean, _, _ = _gen(n=6, prevalence=prevalence)
        diffs.append(noisy - clean)
    np.testing.assert_allclose(diffs[0], diffs[1], atol=1e-5)
    assert np.abs(diffs[0]).mean() > 0.01


def test_powerline_only_where_the_device_can_record_it():
    def mains_share(fs: int, hz: int) -> float:
        art = Artefacts(noise_mv=0.0, wander_mv=0.0, powerline_hz=hz, powerline_mv=0.1, gain_sd=0.0)
        noisy, _, _ = _gen(n=4, fs=fs, seconds=4.0, artefacts=art)
        clean, _, _ = _gen(n=4, fs=fs, seconds=4.0)
        spec = np.abs(np.fft.rfft(noisy - clean, axis=-1)) ** 2
        freqs = np.fft.rfftfreq(noisy.shape[-1], 1 / fs)
        return float(spec[..., np.abs(freqs - hz) < 1].sum() / max(spec.sum(), 1e-12))

    assert mains_share(500, 50) > 0.95 and mains_share(250, 60) > 0.95
    assert mains_share(100, 50) == 0.0  # a 100 Hz device low-passes 50 Hz away


def test_phenotype_is_learnable_but_not_trivial():
    """Logistic regression on a few classic measurements: clearly above chance, not perfect."""
    site = default_cohort().sites[0]
    sig, lab, meta = _gen(n=500, seed=11, fs=100, seconds=8.0, prevalence=0.4, artefacts=site.artefacts)
    feats = _features(sig, meta, fs=100)
    x = np.stack([feats[k] for k in ("qrs_axis_deg", "v1_r_mv", "v6_s_mv", "p_ii_mv")], axis=1)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    prob = cross_val_predict(model, x, lab["right_heart"], cv=StratifiedKFold(5, shuffle=True, random_state=0),
                             method="predict_proba")[:, 1]
    auroc = roc_auc_score(lab["right_heart"], prob)
    assert 0.8 < auroc < 0.97, auroc


# ---------------------------------------------------------------------------------------------
# Specs, files, command line


def _small_spec(records: int = 10, **site_overrides) -> CohortSpec:
    return CohortSpec(seed=5, seconds=4.0, sites=[
        SiteSpec(name="cart500", n_records=records, fs=500, prevalence=0.5, **site_overrides),
        SiteSpec(name="handheld", n_records=records, fs=100, leads="6L", lead_case="upper", repeat_share=0.5,
                 powerline_hz=60),
        SiteSpec(name="reordered", n_records=records, fs=250, lead_case="upper", lead_order="derived_last",
                 units="uV"),
    ])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    dest = tmp_path_factory.mktemp("synth")
    return dest, write_cohort(_small_spec(), dest, progress=False)


def test_written_records_read_back_with_wfdb(cohort):
    dest, summary = cohort
    assert json.loads((dest / "cohort.json").read_text())["status"] == "complete"
    expected = {
        "cart500": (500, list(LEADS_12), "mV"),
        "handheld": (100, ["I", "II", "III", "AVR", "AVL", "AVF"], "mV"),
        "reordered": (250, ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6", "III", "AVR", "AVL", "AVF"], "uV"),
    }
    for site in summary["sites"]:
        fs, names, units = expected[site["name"]]
        heads = sorted((dest / site["records_dir"]).glob("*.hea"))
        assert len(heads) == site["n_records"] == 10
        rec = wfdb.rdrecord(str(heads[0].with_suffix("")))
        assert rec.fs == fs and rec.sig_name == names and set(rec.units) == {units}
        assert rec.p_signal.shape == (int(4.0 * fs), len(names))
        assert any(c.startswith("Age: ") for c in rec.comments)
        mv = rec.p_signal.T / (1000.0 if units == "uV" else 1.0)
        assert 0.3 < np.abs(mv).max() < 10
        assert check_limb_identities(mv, [n.replace("AV", "aV") for n in names], tolerance_mv=0.003).ok


def test_labels_csv_is_well_formed(cohort):
    dest, summary = cohort
    for site in summary["sites"]:
        with open(dest / site["labels_csv"], newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert tuple(rows[0].keys()) == LABEL_COLUMNS
        stems = {p.stem for p in (dest / site["records_dir"]).glob("*.hea")}
        assert {r["record_id"] for r in rows} == stems
        for r in rows:
            assert r["right_heart"] in "01" and r["left_atrial"] in "01" and r["sex"] in ("M", "F")
            assert (r["phenotype"] == "") == (r["right_heart"] == "0")
            assert 0.0 <= float(r["severity"]) <= 1.0 and 18 <= int(r["age"]) <= 95
        by_patient = {}
        for r in rows:
            by_patient.setdefault(r["patient_id"], []).append(r)
        assert site["n_patients"] == len(by_patient)
        for recs in by_patient.values():  # a patient's records carry the same labels
            assert len({(r["right_heart"], r["phenotype"], r["severity"], r["age"], r["sex"]) for r in recs}) == 1
    handheld = next(s for s in summary["sites"] if s["name"] == "handheld")
    assert handheld["n_patients"] < handheld["n_records"]  # some patients have two records


def test_written_records_load_through_the_project_readers(cohort):
    dest, summary = cohort
    for site in summary["sites"]:
        refs = sources.manifest_index(dest / site["records_dir"], dest / site["labels_csv"], site=site["name"])
        assert len(refs) == site["n_records"]
        rec = readers.read_record(refs[0].path)
        assert rec.fs == site["fs"] and rec.leads == tuple(site["leads"])
        assert rec.leads == (LIMB_LEADS if site["name"] == "handheld" else rec.leads)
        assert np.abs(rec.signal).max() < 10 and np.abs(rec.signal).max() > 0.3  # mV, not uV
        assert refs[0].patient_id.startswith(site["name"])


def test_write_is_idempotent_and_replaces_another_spec(tmp_path):
    spec = _small_spec(records=3)
    first = write_cohort(spec, tmp_path, progress=False)
    hea = tmp_path / "cart500" / "records" / "cart500_00000.hea"
    stamp = hea.stat().st_mtime_ns
    assert write_cohort(spec, tmp_path, progress=False) == first
    assert hea.stat().st_mtime_ns == stamp
    other = write_cohort(_small_spec(records=2), tmp_path, progress=False)
    assert other["sites"][0]["n_records"] == 2
    assert len(list((tmp_path / "cart500" / "records").glob("*.hea"))) == 2  # no stale records left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    fewer = CohortSpec(seed=5, seconds=4.0, sites=[_small_spec(records=2).sites[0]])
    write_cohort(fewer, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cart500", "cohort.json"]


def test_write_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("not ours")
    with pytest.raises(ConfigError, match="not empty"):
        write_cohort(_small_spec(records=1), tmp_path, progress=False)
    assert (tmp_path / "precious.txt").exists()


@pytest.mark.parametrize("units", ["mV", "uV"])
def test_writer_is_byte_identical_to_wfdb_wrsamp(tmp_path, units):
    sig = (np.random.default_rng(0).standard_normal((6, 700)) * 0.8).astype(np.float32)
    names = ["I", "II", "III", "AVR", "AVL", "AVF"]
    (tmp_path / "ours").mkdir()
    (tmp_path / "wfdb").mkdir()
    write_wfdb(tmp_path / "ours", "r1", sig, fs=250, lead_names=names, comments=["Age: 50", "Sex: Male"], units=units)
    scale, gain = (1.0, 1000.0) if units == "mV" else (1000.0, 1.0)
    wfdb.wrsamp("r1", fs=250, units=[units] * 6, sig_name=names, p_signal=sig.T.astype(np.float64) * scale,
                fmt=["16"] * 6, adc_gain=[gain] * 6, baseline=[0] * 6, comments=["Age: 50", "Sex: Male"],
                write_dir=str(tmp_path / "wfdb"))
    for ext in ("hea", "dat"):
        assert filecmp.cmp(tmp_path / "ours" / f"r1.{ext}", tmp_path / "wfdb" / f"r1.{ext}", shallow=False), ext


def test_default_cohort_matches_the_config_file_and_its_brief():
    spec = default_cohort()
    assert load_toml(REPO / "configs" / "synthetic.toml", CohortSpec) == spec
    total = sum(s.n_records for s in spec.sites)
    assert 1500 <= total <= 2500
    assert {s.leads for s in spec.sites} == {"12L", "6L"} and len({s.fs for s in spec.sites}) >= 3
    assert len({s.prevalence for s in spec.sites}) == len(spec.sites)


def test_public_names_exist():
    import lsemvae.data.synthetic as synthetic

    assert all(hasattr(synthetic, name) for name in synthetic.__all__)


def test_bad_specs_are_refused_with_the_field_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('seed = 1\n[[sites]]\nname = "a"\nn_records = 5\nprevalance = 0.2\n')
    with pytest.raises(ConfigError, match="prevalance"):
        load_toml(bad, CohortSpec)
    with pytest.raises(ValueError, match="unique"):
        CohortSpec(sites=[SiteSpec(name="a", n_records=1), SiteSpec(name="a", n_records=2)])
    with pytest.raises(ValueError, match="severity"):
        SiteSpec(name="a", n_records=1, severity=(0.8, 0.2))
    with pytest.raises(ConfigError, match="sites"):
        spec_with_overrides(default_cohort(), sites=0)


def test_overrides_repeat_sites_with_new_names_and_seeds():
    spec = spec_with_overrides(default_cohort(), sites=6, records=7, seed=3, seconds=5)
    names = [s.name for s in spec.sites]
    assert len(set(names)) == 6 and names[4] == "hospital_a_2"
    assert all(s.n_records == 7 for s in spec.sites) and spec.seed == 3 and spec.seconds == 5
    assert spec.sites[4].seed_for(3) != spec.sites[0].seed_for(3)


def test_synth_command_writes_a_cohort(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lsemvae data")
    register_synth(parser.add_subparsers())
    args = parser.parse_args(["synth", "--dest", str(tmp_path / "c"), "--sites", "2", "--records", "3",
                              "--seconds", "3", "--seed", "4", "--no-progress"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "hospital_a: 3 records" in out and "clinic_c" not in out
    summary = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert summary["spec"]["seed"] == 4 and [s["name"] for s in summary["sites"]] == ["hospital_a", "hospital_b"]
    assert math.isclose(summary["spec"]["seconds"], 3.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--help"])
    assert "--records" in capsys.readouterr().out
