"""Cardiac dipole model of the 12-lead ECG, vectorised over records.

The heart is one time-varying current dipole ``D(t)`` (the vectorcardiogram) in body axes
``x`` = patient's left, ``y`` = inferior (feet), ``z`` = anterior. Each beat's dipole is a sum of
Gaussian lobes in time, each with a fixed 3-D direction: two atrial lobes (right then left
atrium) make the P wave, septal / LV free wall / basal / RV lobes make the QRS, two lobes make an
asymmetric T wave. A lead is the projection of ``D`` on its lead vector. Leads I and II are
projected; III, aVR, aVL, aVF are *derived* from them (Einthoven/Goldberger), as electrocardiographs
do, so the identities hold exactly.

Phenotypes change the physiology, never the noise:

* pre-capillary PH (``right_heart``, severity ``s``): the LV lobe's frontal axis rotates rightward
  and a right-anterior RV lobe grows (right axis deviation, tall R in V1, deep S in V5-V6), the
  right-atrial P lobe grows, narrows and turns inferior (P pulmonale), T turns posterior (RV strain);
* left-sided (post-capillary-like) findings (severity ``s_left``): the left-atrial P lobe grows,
  widens, comes later and turns posterior (broad bifid P, negative terminal P in V1), the LV lobe
  grows (LVH voltage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsemvae.leads import LEADS_12, derive_limb_leads

# Lobes of one beat, in this order everywhere: (name, centre s from R peak, width s, amplitude mV).
LOBES: tuple[tuple[str, float, float, float], ...] = (
    ("P_RA", -0.175, 0.018, 0.10),
    ("P_LA", -0.145, 0.018, 0.075),
    ("Q_septal", -0.024, 0.008, 0.22),
    ("R_LV", 0.0, 0.0115, 1.45),
    ("S_basal", 0.026, 0.010, 0.45),
    ("R_RV", 0.010, 0.013, 0.12),  # small and variable in normal hearts; grows with right-heart severity
    ("T_early", 0.200, 0.055, 0.20),
    ("T_late", 0.265, 0.038, 0.24),
)
K = len(LOBES)
_IDX = {name: i for i, (name, *_rest) in enumerate(LOBES)}
_T_LOBES = np.array([name.startswith("T_") for name, *_ in LOBES])
_T_SLICE = slice(int(np.argmax(_T_LOBES)), K)  # T lobes are the last ones
assert _T_LOBES[_T_SLICE].all() and _T_LOBES.sum() == K - _T_SLICE.start

MIN_HR, MAX_HR = 40.0, 150.0

# Measured channels of a digital electrocardiograph: I, II and V1-V6 (the other 4 are derived).
MEASURED = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def direction(alpha_deg: np.ndarray, beta_deg: np.ndarray) -> np.ndarray:
    """Unit vectors from frontal-plane angle ``alpha`` (0 = left, +90 = inferior; the ECG axis
    convention) and elevation ``beta`` towards anterior (+) / posterior (-). Shape ``[..., 3]``."""
    a, b = np.deg2rad(alpha_deg), np.deg2rad(beta_deg)
    return np.stack([np.cos(b) * np.cos(a), np.cos(b) * np.sin(a), np.sin(b)], axis=-1)


def _precordial_vectors() -> np.ndarray:
    """Approximate V1-V6 lead vectors: horizontal angle from the left towards anterior, a small
    inferior tilt for the lateral leads, and gains (V2-V4 sit closest to the heart)."""
    horiz = np.array([120.0, 95.0, 75.0, 50.0, 30.0, 5.0])
    tilt = np.array([0.0, 0.0, 5.0, 10.0, 15.0, 15.0])
    gain = np.array([1.1, 1.8, 1.6, 1.35, 1.3, 1.1])
    h, e = np.deg2rad(horiz), np.deg2rad(tilt)
    vec = np.stack([np.cos(e) * np.cos(h), np.sin(e), np.cos(e) * np.sin(h)], axis=-1)
    return vec * gain[:, None]


#: Lead vectors of the measured channels, ``[8, 3]`` in ``MEASURED`` order.
LEAD_VECTORS = np.concatenate([
    np.array([[1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]]),  # Einthoven I (0 deg), II (+60 deg)
    _precordial_vectors(),
]).astype(np.float32)


@dataclass(frozen=True)
class Population:
    """Per-record labels and physiology (arrays of length ``n``)."""

    right_heart: np.ndarray  # 0/1
    left_sided: np.ndarray  # 0/1 (left atrial abnormality + LVH voltage)
    severity: np.ndarray  # right-heart severity in [0, 1], 0 when not right-sided
    severity_left: np.ndarray  # left-sided severity, 0 when absent
    age: np.ndarray
    female: np.ndarray  # bool
    heart_rate: np.ndarray  # mean bpm of the record
    vectors: np.ndarray  # [n, K, 3] lobe amplitude x direction (mV)
    centres: np.ndarray  # [n, K] s from R peak (at RR = 1 s for T lobes)
    widths: np.ndarray  # [n, K] s


def _lognormal(rng: np.random.Generator, sigma: float, size) -> np.ndarray:
    return np.exp(sigma * rng.standard_normal(size))


def sample_population(
    rng: np.random.Generator,
    patients: np.ndarray,
    *,
    prevalence: float,
    left_prevalence: float,
    isolated_left: float,
    severity_range: tuple[float, float],
) -> Population:
    """Draw labels and physiology. ``patients[i]`` is the patient of record ``i`` (0..P-1): a
    patient's records share labels and anatomy and differ in heart rate and electrode placement.

    Every random number is drawn whatever the labels, so the same seed with another prevalence
    gives the same individuals (counterfactual pairs for tests)."""
    p = int(patients.max()) + 1
    n = len(patients)
    lo, hi = severity_range

    # Labels and severities (patient level).
    right = rng.random(p) < prevalence
    left_draw = rng.random(p)
    left = np.where(right, left_draw < left_prevalence, left_draw < isolated_left)
    s = np.where(right, rng.uniform(lo, hi, p), 0.0)
    s_left = np.where(left, rng.uniform(lo, hi, p), 0.0)

    # Demographics and anatomy (patient level).
    age = np.clip(rng.normal(62, 14, p), 18, 95).round()
    female = rng.random(p) < 0.5
    lv_axis = np.clip(rng.normal(50, 20, p) - 0.25 * (age - 50), -30, 95)
    lv_elev = rng.normal(-25, 7, p)
    p_axis = rng.normal(60, 10, p)
    t_axis_offset = rng.normal(-10, 12, p)
    t_elev = rng.normal(22, 8, p)
    voltage = _lognormal(rng, 0.18, p) * np.where(female, 0.88, 1.0) * (1 - 0.004 * (age - 50))
    t_scale = _lognormal(rng, 0.22, p)
    # Normal variants that resemble the phenotypes (a larger RV or RA lobe) keep the task honest.
    lobe_amp = _lognormal(rng, np.where(np.isin(np.arange(K), [_IDX["P_RA"], _IDX["R_RV"]]), 0.4, 0.15), (p, K))
    lobe_width = _lognormal(rng, 0.08, (p, K))
    lobe_shift = rng.standard_normal((p, K)) * np.array([0.012, 0.012, 0.003, 0.0, 0.003, 0.003, 0.012, 0.012])
    rotation = rng.normal(0, 1, (p, 3)) * np.array([6.0, 10.0, 4.0])  # deg about x, y, z: heart position
    rad_gain = rng.uniform(0.5, 1.3, p)  # how far this patient's axis turns per unit severity
    hr = np.clip(rng.normal(70, 10, p), 50, 105) + 8 * s

    # Record level: heart rate drifts between visits, electrodes are placed slightly differently.
    hr_r = np.clip(hr[patients] * _lognormal(rng, 0.06, n), MIN_HR, MAX_HR)
    placement = rng.normal(0, 2.5, (n, 3))

    s_r, sl_r = s[patients], s_left[patients]
    ix = _IDX
    alpha = np.zeros((p, K))
    beta = np.zeros((p, K))
    amp = np.tile(np.array([lobe[3] for lobe in LOBES]), (p, 1))
    centre = np.tile(np.array([lobe[1] for lobe in LOBES]), (p, 1)) + lobe_shift
    width = np.tile(np.array([lobe[2] for lobe in LOBES]), (p, 1)) * lobe_width

    # Normal heart.
    alpha[:, ix["P_RA"]], beta[:, ix["P_RA"]] = p_axis + 15, 35
    alpha[:, ix["P_LA"]], beta[:, ix["P_LA"]] = p_axis - 20, -20
    alpha[:, ix["Q_septal"]], beta[:, ix["Q_septal"]] = 155, 55
    alpha[:, ix["R_LV"]], beta[:, ix["R_LV"]] = lv_axis, lv_elev
    alpha[:, ix["S_basal"]], beta[:, ix["S_basal"]] = -120, -30
    alpha[:, ix["R_RV"]], beta[:, ix["R_RV"]] = 125, 35
    for name in ("T_early", "T_late"):
        alpha[:, ix[name]], beta[:, ix[name]] = lv_axis + t_axis_offset, t_elev

    # Pre-capillary PH: right axis deviation, RV hypertrophy, P pulmonale, RV strain.
    alpha[:, ix["R_LV"]] += 60 * s * rad_gain
    amp[:, ix["R_LV"]] *= 1 - 0.2 * s
    amp[:, ix["R_RV"]] += 1.1 * s
    amp[:, ix["S_basal"]] *= 1 + 0.8 * s
    amp[:, ix["P_RA"]] *= 1 + 3.5 * s
    width[:, ix["P_RA"]] *= 1 - 0.2 * s
    alpha[:, ix["P_RA"]] += 10 * s
    for name in ("T_early", "T_late"):
        beta[:, ix[name]] -= 45 * s
        alpha[:, ix[name]] += 20 * s

    # Left-sided disease: left atrial abnormality (P mitrale) and LVH voltage.
    amp[:, ix["P_LA"]] *= 1 + 1.3 * s_left
    centre[:, ix["P_LA"]] += 0.035 * s_left
    width[:, ix["P_LA"]] *= 1 + 0.35 * s_left
    beta[:, ix["P_LA"]] -= 30 * s_left
    amp[:, ix["R_LV"]] *= 1 + 0.6 * s_left
    beta[:, ix["R_LV"]] -= 10 * s_left
    alpha[:, ix["R_LV"]] -= 10 * s_left

    amp *= lobe_amp * voltage[:, None]
    amp[:, _T_LOBES] *= t_scale[:, None]
    vec = amp[..., None] * direction(alpha, beta)  # [p, K, 3]
    vec = vec[patients] @ _rotation(rotation[patients] + placement).transpose(0, 2, 1)
    return Population(
        right_heart=right[patients].astype(np.int8),
        left_sided=left[patients].astype(np.int8),
        severity=s_r,
        severity_left=sl_r,
        age=age[patients],
        female=female[patients],
        heart_rate=hr_r,
        vectors=vec.astype(np.float32),
        centres=centre[patients].astype(np.float32),
        widths=width[patients].astype(np.float32),
    )


def _rotation(deg: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[n, 3, 3]`` from angles about x, y, z (degrees)."""
    ax, ay, az = np.deg2rad(deg).T
    c, s = np.cos, np.sin
    one, zero = np.ones_like(ax), np.zeros_like(ax)
    rx = np.stack([one, zero, zero, zero, c(ax), -s(ax), zero, s(ax), c(ax)], -1).reshape(-1, 3, 3)
    ry = np.stack([c(ay), zero, s(ay), zero, one, zero, -s(ay), zero, c(ay)], -1).reshape(-1, 3, 3)
    rz = np.stack([c(az), -s(az), zero, s(az), c(az), zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


@dataclass(frozen=True)
class Rhythm:
    """Beat times ``[n, B]`` (s, R peaks, ascending, first two before t=0) and per-beat factors."""

    beats: np.ndarray  # float64 [n, B]
    qt_stretch: np.ndarray  # float32 [n, B]: sqrt(preceding RR) - 1, shifts the T lobes
    amplitude: np.ndarray  # float32 [n, B]: beat-to-beat amplitude jitter
    resp_hz: np.ndarray  # [n] respiration rate
    resp_phase: np.ndarray  # [n]


def sample_rhythm(rng: np.random.Generator, heart_rate: np.ndarray, seconds: float) -> Rhythm:
    """Sinus rhythm with respiratory sinus arrhythmia and random beat-to-beat RR jitter."""
    n = len(heart_rate)
    rr0 = 60.0 / heart_rate
    resp_hz = rng.uniform(0.18, 0.33, n)
    resp_phase = rng.uniform(0, 2 * np.pi, n)
    rsa = rng.uniform(0.01, 0.05, n)
    # Fixed by the allowed heart-rate range, not by the draws, so the random stream does not
    # depend on the phenotype (counterfactual pairs stay pairs).
    n_beats = int(np.ceil((seconds + 3 * 60 / MIN_HR + 1.0) / (0.88 * 60 / MAX_HR))) + 2
    b = np.arange(n_beats)
    jitter = np.clip(rng.standard_normal((n, n_beats)), -3, 3) * 0.015
    breathing = np.sin(2 * np.pi * resp_hz[:, None] * rr0[:, None] * b + resp_phase[:, None])
    rr = rr0[:, None] * (1 + rsa[:, None] * breathing + jitter)
    first = -rr[:, 0] - rng.uniform(0, 1, n) * rr[:, 1]
    beats = first[:, None] + np.concatenate([np.zeros((n, 1)), np.cumsum(rr[:, :-1], axis=1)], axis=1)
    prev_rr = np.concatenate([rr0[:, None], rr[:, :-1]], axis=1)
    amplitude = 1 + 0.03 * np.clip(rng.standard_normal((n, n_beats)), -3, 3)
    return Rhythm(beats, (np.sqrt(prev_rr) - 1).astype(np.float32), amplitude.astype(np.float32), resp_hz, resp_phase)


# A sample belongs to the last beat whose R peak is at most this far in the future: the P wave
# starts ~0.25 s before R. Each sample sums its beat and the previous one (for long T waves).
_LEAD_IN_S = 0.30


def render_dipole(pop: Population, rhythm: Rhythm, t: np.ndarray) -> np.ndarray:
    """Dipole ``[n, 3, T]`` (float32, mV) at times ``t`` (s)."""
    n, n_beats = rhythm.beats.shape
    offsets = np.arange(n) * (np.ptp(rhythm.beats) + t[-1] + 10.0)
    flat = (rhythm.beats + offsets[:, None]).ravel()
    query = (t[None, :] + _LEAD_IN_S + offsets[:, None]).ravel()
    current = (np.searchsorted(flat, query, side="right") - 1).reshape(n, -1)  # global beat index
    t32 = t.astype(np.float32)
    weights = np.zeros((n, K, len(t)), dtype=np.float32)
    centres = pop.centres[:, :, None]
    inv_2w2 = (0.5 / pop.widths**2)[:, :, None]
    t_coef = (pop.centres * _T_LOBES)[:, :, None]
    # A sample's own beat contributes every lobe; the previous beat reaches it only with its T wave
    # (its QRS is at least RR - 0.3 s, i.e. > 7 lobe widths, away even at 150 bpm).
    for beat, lobes in ((current, slice(None)), (current - 1, _T_SLICE)):
        rel = (t32[None, :] - rhythm.beats.ravel()[beat].astype(np.float32))[:, None, :]
        stretch = rhythm.qt_stretch.ravel()[beat][:, None, :]
        arg = rel - centres[:, lobes] - t_coef[:, lobes] * stretch
        np.square(arg, out=arg)
        arg *= -inv_2w2[:, lobes]
        np.exp(arg, out=arg)
        arg *= rhythm.amplitude.ravel()[beat][:, None, :]
        weights[:, lobes] += arg
    return np.matmul(pop.vectors.transpose(0, 2, 1), weights)


def respiration(dipole: np.ndarray, rhythm: Rhythm, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Breathing moves the heart: the frontal axis wobbles a few degrees and amplitudes swell."""
    n = dipole.shape[0]
    wobble = np.deg2rad(rng.uniform(1, 5, n))[:, None]
    swell = rng.uniform(0.02, 0.08, n)[:, None]
    phase = 2 * np.pi * rhythm.resp_hz[:, None] * t[None, :] + rhythm.resp_phase[:, None]
    angle = (wobble * np.sin(phase)).astype(np.float32)
    gain = (1 + swell * np.cos(phase)).astype(np.float32)
    x, y = dipole[:, 0], dipole[:, 1]
    c, s = np.cos(angle), np.sin(angle)
    out = dipole.copy()
    out[:, 0] = gain * (c * x - s * y)
    out[:, 1] = gain * (s * x + c * y)
    out[:, 2] *= gain
    return out


def measured_channels(dipole: np.ndarray) -> np.ndarray:
    """Project the dipole on the measured channels: ``[n, 8, T]`` in ``MEASURED`` order."""
    return np.matmul(LEAD_VECTORS[None], dipole)


def twelve_leads(measured: np.ndarray) -> np.ndarray:
    """``[n, 8, T]`` measured channels -> ``[n, 12, T]`` in ``LEADS_12`` order, limb leads derived."""
    chan = dict(zip(MEASURED, np.moveaxis(measured, 1, 0)))
    chan.update(derive_limb_leads(chan["I"], chan["II"]))
    return np.stack([chan[name] for name in LEADS_12], axis=1).astype(np.float32, copy=False)


def r_peaks(rhythm: Rhythm, fs: float, n_samples: int) -> list[np.ndarray]:
    """Sample index of every R peak inside the record, per record (ground truth for QA)."""
    idx = np.rint(rhythm.beats * fs).astype(np.int64)
    return [row[(row >= 0) & (row < n_samples)] for row in idx]
