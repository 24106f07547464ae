"""Recording artefacts of a site's devices, added where they arise: at the electrodes.

Noise, baseline wander and mains pick-up are potentials on the RA, LA, LL and V1-V6 electrodes;
leads are differences of electrode potentials (I = LA - RA, II = LL - RA, Vi = Ei - Wilson's central
terminal) and each measured channel has its own amplifier gain. The device then derives III, aVR,
aVL, aVF from I and II, so the limb-lead identities hold after artefacts too, as in real digital
ECGs. Nothing here looks at labels: artefacts carry no information about the phenotype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Electrodes -> measured channels (I, II, V1..V6): rows of this matrix act on [RA, LA, LL, V1..V6].
_ELECTRODE_TO_CHANNEL = np.zeros((8, 9), dtype=np.float32)
_ELECTRODE_TO_CHANNEL[0, [0, 1]] = [-1, 1]  # I = LA - RA
_ELECTRODE_TO_CHANNEL[1, [0, 2]] = [-1, 1]  # II = LL - RA
for _v in range(6):
    _ELECTRODE_TO_CHANNEL[2 + _v, [0, 1, 2]] = -1 / 3  # minus Wilson's central terminal
    _ELECTRODE_TO_CHANNEL[2 + _v, 3 + _v] = 1


@dataclass(frozen=True)
class Artefacts:
    """A site's recording conditions (typical values; each record varies around them)."""

    noise_mv: float = 0.01  # white noise SD in lead I
    wander_mv: float = 0.1  # baseline wander amplitude
    powerline_hz: float | None = 50.0  # mains frequency; None = shielded / filtered device
    powerline_mv: float = 0.01
    gain_sd: float = 0.02  # calibration error of each amplifier channel (relative SD)


def add_artefacts(
    measured: np.ndarray, t: np.ndarray, fs: float, art: Artefacts, rng: np.random.Generator,
    resp_hz: np.ndarray,
) -> np.ndarray:
    """Artefacts on ``[n, 8, T]`` measured channels (float32 mV); returns a new array.

    Mains at or above 0.45 fs is left out: a device sampling that slowly low-passes it away.
    """
    n, _, n_t = measured.shape
    # Per-record conditions: some recordings are much cleaner than others.
    noise_sd = art.noise_mv / np.sqrt(2) * np.exp(0.4 * rng.standard_normal(n))
    electrode = rng.standard_normal((n, 9, n_t), dtype=np.float32)
    electrode *= noise_sd[:, None, None].astype(np.float32)

    # Baseline wander (breathing at the record's respiration rate plus slow drifts) and mains are
    # sinusoids shared by all electrodes with electrode-specific amplitude and phase:
    # a sin(wt + p) = a cos(p) sin(wt) + a sin(p) cos(wt), so one matmul mixes a few basis waves.
    freqs = np.concatenate([resp_hz[:, None], rng.uniform(0.05, 0.5, (n, 3)), np.zeros((n, 1))], axis=1)
    amps = np.concatenate([art.wander_mv * rng.uniform(0.1, 0.6, (n, 9, 4)),
                           art.powerline_mv * np.exp(0.5 * rng.standard_normal(n))[:, None, None]
                           * rng.uniform(0.3, 1.0, (n, 9, 1))], axis=2)
    phases = rng.uniform(0, 2 * np.pi, (n, 9, 5))
    phases[:, :, 4] = rng.uniform(0, 2 * np.pi, n)[:, None] + rng.normal(0, 0.3, (n, 9))  # mains: near common-mode
    if art.powerline_hz is not None and art.powerline_hz < 0.45 * fs:
        freqs[:, 4] = art.powerline_hz
    else:
        amps[:, :, 4] = 0.0
    omega_t = (2 * np.pi * freqs[:, :, None] * t[None, None, :]).astype(np.float32)  # [n, 5, T]
    basis = np.concatenate([np.sin(omega_t), np.cos(omega_t)], axis=1)  # [n, 10, T]
    coef = np.concatenate([amps * np.cos(phases), amps * np.sin(phases)], axis=2).astype(np.float32)
    electrode += np.matmul(coef, basis)

    gains = (1 + art.gain_sd * rng.standard_normal((n, 8))).astype(np.float32)
    return (measured + np.matmul(_ELECTRODE_TO_CHANNEL[None], electrode)) * gains[:, :, None]
