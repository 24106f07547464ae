"""Records crafted from the real shared ECGs, as hospitals' exports get them wrong.

Every copy is a real WFDB record: either the original ``.dat`` with an edited header (a wrong gain)
or the real signal, edited, written back with ``wfdb.wrsamp`` (flat or spiky leads, a shorter record).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

_GAIN = re.compile(r"^([0-9.eE+-]+)(\(.*?\))?(/\S+)?$")


def gain_copy(hea: Path, dest: Path, factor: float, name: str | None = None) -> Path:
    """The record's ``.dat`` unchanged and its header with every gain multiplied by ``factor``: a header gain
    1000x too high (``factor`` 1000) reads the signal 1000x too small, 0.2 reads it 5x too large."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = name or hea.stem
    lines = hea.read_text().splitlines()
    out = [f"{stem} " + lines[0].split(" ", 1)[1]]
    for line in lines[1:]:
        if not line.strip() or line.startswith("#"):
            out.append(line)
            continue
        fields = line.split(" ")
        gain = _GAIN.match(fields[2])
        assert gain, f"unexpected gain field {fields[2]!r} in {hea}"
        fields[0] = f"{stem}.dat"
        fields[2] = f"{float(gain.group(1)) * factor:.10g}{gain.group(2) or ''}{gain.group(3) or ''}"
        out.append(" ".join(fields))
    shutil.copy(hea.with_suffix(".dat"), dest / f"{stem}.dat")
    (dest / f"{stem}.hea").write_text("\n".join(out) + "\n")
    return dest / f"{stem}.hea"


def edited_copy(hea: Path, dest: Path, name: str, edit: Callable[[np.ndarray, list[str], float], np.ndarray]) -> Path:
    """The record read with wfdb, ``edit(signal [T, L] in mV, lead names, fs)`` applied, written back as WFDB."""
    import wfdb

    signal, fields = wfdb.rdsamp(str(hea.with_suffix("")))
    leads = list(fields["sig_name"])
    edited = np.asarray(edit(signal.copy(), leads, float(fields["fs"])), dtype=np.float64)
    dest.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fields["fs"], units=["mV"] * len(leads), sig_name=leads, p_signal=edited,
                fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads),
                write_dir=str(dest))
    return dest / f"{name}.hea"


def precordial_rows(leads: list[str]) -> list[int]:
    return [k for k, lead in enumerate(leads) if lead.upper().startswith("V")]


def flat_precordials(signal: np.ndarray, leads: list[str], fs: float) -> np.ndarray:
    """V1-V6 disconnected: a constant offset (what a flat line is)."""
    signal[:, precordial_rows(leads)] = 0.05
    return signal


def spike_in_v2(signal: np.ndarray, leads: list[str], fs: float) -> np.ndarray:
    """A 25 mV artefact spike in V2 for 30 ms at 4 s (an electrode pop or a pacing artefact)."""
    v2 = [k for k, lead in enumerate(leads) if lead.upper() == "V2"][0]
    start = int(4 * fs)
    signal[start:start + max(1, int(0.03 * fs)), v2] += 25.0
    return signal


def first_seconds(seconds: float) -> Callable[[np.ndarray, list[str], float], np.ndarray]:
    def cut(signal: np.ndarray, leads: list[str], fs: float) -> np.ndarray:
        return signal[: int(round(seconds * fs))]

    return cut
