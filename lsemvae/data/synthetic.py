"""Synthetic multi-site ECG cohort: the embedded default data of the project.

A cardiac-dipole generator (:mod:`lsemvae.data.synth.dipole`) makes 12-lead ECGs with graded
pulmonary-hypertension-like and left-sided phenotypes; site effects (:mod:`.synth.artefacts`,
sampling rate, lead subset, lead-name spelling and order, prevalence) make the sites differ as
hospitals do. Sites are written as WFDB records plus a ``labels.csv`` manifest, so they are read by
exactly the code that reads real hospital data::

    DEST/cohort.json                      spec, generator version, per-site summary
    DEST/<site>/records/<record_id>.hea|.dat
    DEST/<site>/labels.csv                record_id, patient_id, right_heart, phenotype,
                                          left_atrial, severity, age, sex

The labels are ECG *patterns* by construction, not haemodynamic diagnoses.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import textwrap
import time
import zlib
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator
from tqdm import tqdm

from lsemvae.config import StrictModel, load_toml, validate
from lsemvae.errors import ConfigError
from lsemvae.leads import LEADS_12, LIMB_LEADS
from lsemvae.data.synth import dipole
from lsemvae.data.synth.artefacts import Artefacts, add_artefacts

__all__ = [
    "GENERATOR_VERSION", "LABEL_COLUMNS", "Artefacts", "SiteSpec", "CohortSpec", "default_cohort", "load_cohort_spec",
    "generate_signals", "write_cohort", "write_wfdb", "spec_with_overrides", "register_synth",
]

#: Bump when the same spec would produce different files.
GENERATOR_VERSION = "2"
LABEL_COLUMNS = ("record_id", "patient_id", "right_heart", "phenotype", "left_atrial", "severity", "age", "sex")
_CHUNK_RECORDS = 256  # records per generation chunk: bounds memory, fixed so output never depends on it
_ADC_GAIN = 1000.0  # digital units per mV (1 uV resolution), 16-bit: +-32 mV range
_UPPER = {"aVR": "AVR", "aVL": "AVL", "aVF": "AVF"}

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class SiteSpec(StrictModel):
    """One synthetic hospital: its devices, its patients, its label prevalence."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description="folder name of the site")]
    n_records: Annotated[int, Field(ge=1, le=1_000_000)]
    fs: Annotated[int, Field(ge=50, le=2000, description="sampling rate of the site's devices (Hz)")] = 500
    leads: Literal["12L", "6L"] = "12L"
    prevalence: Fraction = 0.3  # share of patients with the right-heart (PH-like) pattern
    left_prevalence: Fraction = 0.3  # share of right-heart patients with left-sided findings
    isolated_left: Fraction = 0.08  # share of other patients with left-sided findings
    # Severity range: near 0 a patient is labelled but the ECG is near normal, as often in real PH.
    severity: tuple[Fraction, Fraction] = (0.0, 1.0)
    repeat_share: Fraction = 0.15  # share of patients with two records
    noise_mv: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    wander_mv: Annotated[float, Field(ge=0.0, le=5.0)] = 0.1
    powerline_hz: Literal[0, 50, 60] = 50  # mains frequency; 0: no mains pick-up (TOML has no null)
    powerline_mv: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    gain_sd: Annotated[float, Field(ge=0.0, le=0.3)] = 0.02
    lead_case: Literal["canonical", "upper"] = "canonical"  # "upper" writes AVR, AVL, AVF
    lead_order: Literal["standard", "derived_last"] = "standard"  # derived_last: I II V1..V6 III aVR aVL aVF
    units: Literal["mV", "uV"] = "mV"  # physical unit in the headers (same 1 uV resolution)
    seed_offset: int | None = None  # None: derived from the name, so adding a site changes no other

    @model_validator(mode="after")
    def _check(self) -> SiteSpec:
        if self.severity[0] > self.severity[1]:
            raise ValueError(f"severity range must be (low, high) with low <= high, got {self.severity}")
        return self

    @property
    def artefacts(self) -> Artefacts:
        return Artefacts(noise_mv=self.noise_mv, wander_mv=self.wander_mv, powerline_hz=self.powerline_hz or None,
                         powerline_mv=self.powerline_mv, gain_sd=self.gain_sd)

    @property
    def lead_names(self) -> tuple[str, ...]:
        """Canonical names of the leads written, in file order."""
        if self.leads == "6L":
            return LIMB_LEADS
        if self.lead_order == "derived_last":
            return ("I", "II", *LEADS_12[6:], "III", "aVR", "aVL", "aVF")
        return LEADS_12

    @property
    def file_lead_names(self) -> list[str]:
        """Lead names as the site's devices spell them in the header."""
        if self.lead_case == "upper":
            return [_UPPER.get(name, name) for name in self.lead_names]
        return list(self.lead_names)

    def seed_for(self, cohort_seed: int) -> list[int]:
        """Entropy of this site's random streams within a cohort seeded ``cohort_seed``."""
        offset = self.seed_offset if self.seed_offset is not None else zlib.crc32(self.name.encode())
        return [cohort_seed, offset]


class CohortSpec(StrictModel):
    """A synthetic federation: sites, seed, record length."""

    sites: Annotated[list[SiteSpec], Field(min_length=1)]
    seed: Annotated[int, Field(ge=0)] = 0
    seconds: Annotated[float, Field(gt=1.0, le=60.0)] = 10.0

    @model_validator(mode="after")
    def _unique_names(self) -> CohortSpec:
        names = [s.name for s in self.sites]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"site names must be unique, repeated: {', '.join(dupes)}")
        return self


def default_cohort() -> CohortSpec:
    """The embedded default (mirrored by ``configs/synthetic.toml``): four sites, 2,000 records.

    Sites differ as hospitals do: a 500 Hz tertiary centre, a 250 Hz hospital on 60 Hz mains whose
    devices write upper-case lead names, derived leads last and microvolts, a 6-lead handheld-device clinic with
    few cases and noisy recordings, a 100 Hz PH referral centre with many (and more severe) cases.
    """
    return CohortSpec(seed=0, seconds=10.0, sites=[
        SiteSpec(name="hospital_a", n_records=700, fs=500, prevalence=0.25, left_prevalence=0.3,
                 noise_mv=0.01, wander_mv=0.1, powerline_hz=50, powerline_mv=0.01),
        SiteSpec(name="hospital_b", n_records=500, fs=250, prevalence=0.2, left_prevalence=0.4,
                 noise_mv=0.015, wander_mv=0.15, powerline_hz=60, powerline_mv=0.02, gain_sd=0.03,
                 lead_case="upper", lead_order="derived_last", units="uV"),
        SiteSpec(name="clinic_c", n_records=400, fs=250, leads="6L", prevalence=0.12, left_prevalence=0.3,
                 noise_mv=0.03, wander_mv=0.25, powerline_hz=50, powerline_mv=0.03, gain_sd=0.05,
                 repeat_share=0.3),
        SiteSpec(name="referral_d", n_records=400, fs=100, prevalence=0.45, left_prevalence=0.5,
                 severity=(0.2, 1.0), noise_mv=0.015, wander_mv=0.1, powerline_hz=0, lead_case="upper"),
    ])


def load_cohort_spec(path: str | Path) -> CohortSpec:
    """Read a cohort spec from TOML (``seed``, ``seconds``, ``[[sites]]`` tables)."""
    return load_toml(path, CohortSpec)


def generate_signals(
    n: int,
    rng: np.random.Generator,
    *,
    fs: float = 500.0,
    seconds: float = 10.0,
    prevalence: float = 0.3,
    left_prevalence: float = 0.3,
    isolated_left: float = 0.08,
    severity: tuple[float, float] = (0.0, 1.0),
    artefacts: Artefacts | None = None,
    patients: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, object]]:
    """Generate ``n`` 12-lead ECGs.

    Args:
        fs, seconds: sampling rate (Hz) and duration; the waveform is sampled directly at ``fs``.
        prevalence, left_prevalence, isolated_left, severity: phenotype mix (see :class:`SiteSpec`).
        artefacts: site recording conditions; ``None`` gives the clean physiological signal.
        patients: patient index of each record (``0..P-1``); records of one patient share labels
            and anatomy. Default: one record per patient.

    Returns:
        ``signals`` float32 ``[n, 12, T]`` in mV, ``LEADS_12`` order; ``labels`` with
        ``right_heart`` (0/1), ``phenotype`` (0 right-only, 1 right+left, NaN if not right-sided),
        ``left_atrial`` (0/1), ``severity`` (right-heart severity, 0 if not right-sided);
        ``meta`` with ``patient``, ``age``, ``sex`` ("M"/"F"), ``heart_rate``, ``severity_left``
        and ``r_peaks`` (sample indices per record: ground truth for beat detection checks).

    Deterministic given ``rng``'s state. Draw order does not depend on labels: the same seed with
    another prevalence gives the same individuals and the same noise.
    """
    patients = np.arange(n) if patients is None else np.asarray(patients)
    if patients.shape != (n,):
        raise ValueError(f"patients must have shape ({n},), got {patients.shape}")
    n_samples = int(round(seconds * fs))
    t = np.arange(n_samples) / fs
    pop = dipole.sample_population(rng, patients, prevalence=prevalence, left_prevalence=left_prevalence,
                                   isolated_left=isolated_left, severity_range=severity)
    rhythm = dipole.sample_rhythm(rng, pop.heart_rate, seconds)
    heart = dipole.respiration(dipole.render_dipole(pop, rhythm, t), rhythm, t, rng)
    measured = dipole.measured_channels(heart)
    if artefacts is not None:
        measured = add_artefacts(measured, t, fs, artefacts, rng, rhythm.resp_hz)
    right = pop.right_heart
    labels = {
        "right_heart": right,
        "phenotype": np.where(right == 1, pop.left_sided, np.nan).astype(np.float32),
        "left_atrial": pop.left_sided,
        "severity": pop.severity.astype(np.float32),
    }
    meta = {
        "patient": patients,
        "age": pop.age.astype(int),
        "sex": np.where(pop.female, "F", "M"),
        "heart_rate": pop.heart_rate,
        "severity_left": pop.severity_left,
        "r_peaks": dipole.r_peaks(rhythm, fs, n_samples),
    }
    return dipole.twelve_leads(measured), labels, meta


# ----------------------------------------------------------------------------------------------
# Writing a cohort


def _assign_patients(n_records: int, repeat_share: float, rng: np.random.Generator) -> np.ndarray:
    """Patient index per record, records of a patient adjacent; ``repeat_share`` of patients have 2."""
    n_patients = int(np.ceil(n_records / (1 + repeat_share)))
    per = np.ones(n_patients, dtype=int)
    per[rng.permutation(n_patients)[: n_records - n_patients]] = 2
    return np.repeat(np.arange(n_patients), per)


def _chunks(patients: np.ndarray) -> list[slice]:
    """Record slices of about ``_CHUNK_RECORDS`` that never split a patient."""
    bounds, start = [], 0
    while start < len(patients):
        stop = min(start + _CHUNK_RECORDS, len(patients))
        while stop < len(patients) and patients[stop] == patients[stop - 1]:
            stop += 1
        bounds.append(slice(start, stop))
        start = stop
    return bounds


def write_wfdb(folder: Path, record_id: str, signal_mv: np.ndarray, *, fs: int, lead_names: list[str],
               comments: list[str], units: str = "mV") -> None:
    """Write one WFDB record (format 16, 1 uV per digital unit, header in ``units`` "mV" or "uV"),
    byte for byte what ``wfdb.wrsamp`` writes.

    ``wfdb.wrsamp`` spends ~60 ms per record building its header through pandas lookups, which
    makes the default cohort take minutes; a test pins this writer's bytes to ``wfdb.wrsamp``'s.
    ``signal_mv`` is ``[leads, samples]`` within +-32.767 mV.
    """
    digital = np.round(signal_mv.T.astype(np.float64) * _ADC_GAIN).astype(np.int64)  # [T, L] frames
    digital.astype("<i2").tofile(folder / f"{record_id}.dat")
    checksums = digital.sum(axis=0) % 65536
    lines = [f"{record_id} {len(lead_names)} {fs} {digital.shape[0]}"]
    gain = _ADC_GAIN if units == "mV" else 1.0  # digital units per physical unit
    lines += [f"{record_id}.dat 16 {gain}(0)/{units} 16 0 {first} {cs} 0 {name}"
              for first, cs, name in zip(digital[0], checksums, lead_names)]
    lines += [f"# {c}" for c in comments]
    (folder / f"{record_id}.hea").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else f"{value:g}"


def _write_site(site: SiteSpec, spec: CohortSpec, folder: Path, bar: tqdm) -> dict:
    records = folder / "records"
    records.mkdir(parents=True)
    seed = site.seed_for(spec.seed)  # stream 0 lays out patients, stream k+1 generates chunk k
    patients = _assign_patients(site.n_records, site.repeat_share, np.random.default_rng([*seed, 0]))
    rows_idx = [LEADS_12.index(name) for name in site.lead_names]
    names = site.file_lead_names
    rows, counts = [], {"right_heart": 0, "left_atrial": 0}
    for k, part in enumerate(_chunks(patients)):
        rng = np.random.default_rng([*seed, k + 1])
        first = patients[part][0]
        signals, labels, meta = generate_signals(
            part.stop - part.start, rng, fs=site.fs, seconds=spec.seconds, prevalence=site.prevalence,
            left_prevalence=site.left_prevalence, isolated_left=site.isolated_left, severity=site.severity,
            artefacts=site.artefacts, patients=patients[part] - first)
        signals = np.clip(signals[:, rows_idx], -32.0, 32.0)  # 16-bit range at 1 uV per unit
        for i in range(len(signals)):
            j = part.start + i
            record_id = f"{site.name}_{j:05d}"
            patient_id = f"{site.name}-p{patients[j]:05d}"
            age, sex = int(meta["age"][i]), str(meta["sex"][i])
            comments = [f"Age: {age}", f"Sex: {'Female' if sex == 'F' else 'Male'}", "Synthetic ECG (lsemvae)"]
            write_wfdb(records, record_id, signals[i], fs=site.fs, lead_names=names,
                       comments=comments, units=site.units)
            rows.append([record_id, patient_id, int(labels["right_heart"][i]), _fmt(labels["phenotype"][i]),
                         int(labels["left_atrial"][i]), f"{labels['severity'][i]:.3f}", age, sex])
            counts["right_heart"] += int(labels["right_heart"][i])
            counts["left_atrial"] += int(labels["left_atrial"][i])
            bar.update(1)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    return {
        "name": site.name, "records_dir": f"{site.name}/records", "labels_csv": f"{site.name}/labels.csv",
        "n_records": site.n_records, "n_patients": int(patients[-1]) + 1, "fs": site.fs,
        "leads": list(site.lead_names), "lead_names_in_files": names, "units": site.units,
        "right_heart": counts["right_heart"], "left_atrial": counts["left_atrial"],
    }


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_cohort(spec: CohortSpec, dest: str | Path, *, progress: bool = True) -> dict:
    """Write every site of ``spec`` under ``dest``; returns the summary also saved as ``cohort.json``.

    Idempotent: if ``dest/cohort.json`` records a complete cohort of the same spec and generator
    version, nothing is written and that summary is returned. A cohort from another spec is
    replaced site by site (sites it no longer has are removed); a non-empty ``dest`` that is not a
    synthetic cohort is refused.
    """
    dest = Path(dest)
    manifest_path = dest / "cohort.json"
    wanted = {"generator": "lsemvae.data.synthetic", "generator_version": GENERATOR_VERSION,
              "spec": spec.model_dump(mode="json")}
    existing = _read_manifest(manifest_path)
    if existing is not None and existing.get("status") == "complete" and all(
            existing.get(k) == v for k, v in wanted.items()):
        return existing
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest}: exists and is not a folder; choose a folder for the synthetic cohort")
    if dest.is_dir() and any(dest.iterdir()) and existing is None:
        raise ConfigError(f"{dest}: folder is not empty and holds no synthetic cohort (no readable cohort.json); "
                          "choose an empty or new folder")
    dest.mkdir(parents=True, exist_ok=True)
    if existing is not None:  # sites of the previous spec that the new one drops
        keep = {site.name for site in spec.sites}
        for old in existing.get("spec", {}).get("sites", []):
            folder = dest / str(old.get("name", ""))
            if old.get("name") and old["name"] not in keep and folder.parent == dest and folder.is_dir():
                shutil.rmtree(folder)
    started = time.perf_counter()
    _atomic_json(manifest_path, {**wanted, "status": "writing"})
    sites = []
    total = sum(s.n_records for s in spec.sites)
    with tqdm(total=total, desc="synthetic ECGs", unit="rec", disable=not progress) as bar:
        for site in spec.sites:
            tmp = Path(tempfile.mkdtemp(prefix=f".{site.name}.", dir=dest))
            try:
                summary = _write_site(site, spec, tmp / "site", bar)
                final = dest / site.name
                if final.exists():
                    shutil.rmtree(final)
                (tmp / "site").rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            sites.append(summary)
    result = {**wanted, "status": "complete", "sites": sites, "n_records": total,
              "seconds_to_write": round(time.perf_counter() - started, 2)}
    _atomic_json(manifest_path, result)
    return result


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Command line: `lsemvae data synth`


def register_synth(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``synth`` to the ``lsemvae data`` sub-commands."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic multi-site ECG cohort (WFDB + labels.csv per site)",
        description=textwrap.fill("Generate a synthetic federated ECG cohort from a cardiac-dipole model with graded "
        "pulmonary-hypertension-like (right axis deviation, RV hypertrophy, P pulmonale) and left-sided "
        "(left atrial abnormality, LVH voltage) patterns, and site effects (noise, baseline wander, mains, "
        "gain, sampling rate, 6-lead devices, lead-name spelling, prevalence). Each site is written as "
        "DEST/<site>/records/*.hea|.dat (WFDB, mV) and DEST/<site>/labels.csv (record_id, patient_id, "
        "right_heart, phenotype, left_atrial, severity, age, sex); DEST/cohort.json records the spec. "
        "Re-running with the same spec reuses the files. Labels are ECG patterns by construction, not "
        "haemodynamic diagnoses.", width=100, break_on_hyphens=False),
        epilog="Examples: lsemvae data synth --dest runs/synthetic   (default 4 sites, 2,000 records, ~10 s)\n"
        "          lsemvae data synth --dest /tmp/tiny --sites 2 --records 20 --seconds 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dest", required=True, type=Path, help="output folder (created; must be empty or a "
                        "previous synthetic cohort)")
    parser.add_argument("--config", type=Path, default=None, help="cohort spec TOML (seed, seconds, [[sites]]); "
                        "default: the embedded default, same as configs/synthetic.toml")
    parser.add_argument("--sites", type=int, default=None, metavar="N",
                        help="use only the first N sites of the spec (N larger than the spec: sites are repeated "
                        "with new names and seeds)")
    parser.add_argument("--records", type=int, default=None, metavar="N", help="records per site (overrides the spec)")
    parser.add_argument("--seed", type=int, default=None, help="cohort seed (overrides the spec)")
    parser.add_argument("--seconds", type=float, default=None, help="record length in seconds (overrides the spec)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_synth)
    return parser


def spec_with_overrides(spec: CohortSpec, *, sites: int | None = None, records: int | None = None,
                        seed: int | None = None, seconds: float | None = None) -> CohortSpec:
    """The command line's overrides applied to a spec (validated again)."""
    data = spec.model_dump()
    if sites is not None:
        if sites < 1:
            raise ConfigError(f"--sites must be at least 1, got {sites}")
        base = data["sites"]
        data["sites"] = [dict(base[i % len(base)]) for i in range(sites)]
        for i in range(len(base), sites):
            data["sites"][i].update(name=f"{base[i % len(base)]['name']}_{i // len(base) + 1}", seed_offset=None)
    if records is not None:
        for site in data["sites"]:
            site["n_records"] = records
    if seed is not None:
        data["seed"] = seed
    if seconds is not None:
        data["seconds"] = seconds
    return validate(CohortSpec, data, source="command line overrides")


def _run_synth(args: argparse.Namespace) -> int:
    spec = load_cohort_spec(args.config) if args.config else default_cohort()
    spec = spec_with_overrides(spec, sites=args.sites, records=args.records, seed=args.seed, seconds=args.seconds)
    summary = write_cohort(spec, args.dest, progress=not args.no_progress)
    for site in summary["sites"]:
        print(f"{site['name']}: {site['n_records']} records ({site['n_patients']} patients), {site['fs']} Hz, "
              f"{len(site['leads'])} leads, right_heart {site['right_heart']}, left_atrial {site['left_atrial']}")
    print(f"cohort: {summary['n_records']} records in {Path(args.dest) / 'cohort.json'}")
    return 0
