"""Calibration pulses at either end of a record: found, dropped, and said in the record's notes.

Carts and exports (Philips XML and aECG among them) append or prepend a calibration segment: a
square pulse, typically 1 mV for about 200 ms, on every lead at once. Kept, it is read as ECG: QC
passes it (it is neither flat nor clipped) and the model sees a 1 mV box.

A segment at an end of the record is taken for calibration only if all of these hold there:

- it consists of flat stretches (every lead moves less than :data:`FLAT_MV` per sample) and of
  steps that every stored lead takes together, by the same amount (within 15 %) and within
  :data:`EDGE_S`; nothing else;
- it holds a pulse: a step of :data:`STEP_MV` (0.5-2.5 mV) whose plateau lasts 40-600 ms;
- where leads I, II and III are all stored, Einthoven's II = I + III fails on the plateau (each
  lead rose by the same amount, so I + III rose twice as much as II); a genuine ECG never does this.

Leads the reader computed (``meta["derived_leads"]``) are left out of the test. The whole segment
(the pulse and the flat stretches around it, at most :data:`SEARCH_S` at each end) is dropped.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lsemvae.data.record import ECGRecord

SEARCH_S = 2.0  # how far from each end a calibration segment may reach
FLAT_MV = 0.02  # per-sample movement of every lead on a flat stretch
EDGE_S = 0.012  # longest rise or fall of one step
STEP_MV = (0.5, 2.5)  # step size of a calibration pulse
PLATEAU_S = (0.04, 0.6)  # how long the pulse stays up


def _segment_from_end(x: np.ndarray, fs: float, leads: tuple[str, ...]) -> int:
    """Length (samples) of the calibration segment at the end of ``x`` [leads, T]; 0 if there is none."""
    window = min(int(round(SEARCH_S * fs)), x.shape[1] // 3)
    if window < 3 or x.shape[0] < 2:
        return 0
    tail = x[:, -window:]
    if not np.isfinite(tail).all():
        return 0
    d = np.diff(tail, axis=1)
    moving = np.abs(d).max(axis=0) > FLAT_MV
    max_edge = max(1, int(round(EDGE_S * fs)))
    # Walk back from the end over flat samples and common steps; stop at anything else.
    steps: list[tuple[int, np.ndarray]] = []  # (index in tail where the step ends, per-lead change)
    i = d.shape[1] - 1
    while i >= 0:
        if not moving[i]:
            i -= 1
            continue
        j = i
        while j >= 0 and moving[j] and i - j < max_edge:
            j -= 1
        if j >= 0 and moving[j]:
            break  # a movement longer than an edge: ECG
        change = d[:, j + 1:i + 1].sum(axis=1)
        median = float(np.median(change))
        if abs(median) < STEP_MV[0] / 2 or np.abs(change - median).max() > 0.15 * abs(median):
            break  # not the same step on every lead
        steps.append((i + 1, change))
        i = j
    start = i + 1  # first sample of the tail in the segment
    if not steps:
        return 0
    steps.reverse()  # time order
    for (up_end, up), (down_end, _down) in zip(steps, steps[1:] + [(tail.shape[1], None)]):
        size = float(np.median(up))
        plateau_s = (down_end - up_end) / fs
        if not (STEP_MV[0] <= abs(size) <= STEP_MV[1] and PLATEAU_S[0] <= plateau_s <= PLATEAU_S[1]):
            continue
        if {"I", "II", "III"} <= set(leads):
            rise = dict(zip(leads, up))
            if abs(rise["I"] + rise["III"] - rise["II"]) < 0.5 * abs(rise["II"]):
                continue  # the limb leads stay consistent: not a pulse fed to every lead
        return tail.shape[1] - start
    return 0


def drop_calibration(rec: ECGRecord) -> ECGRecord:
    """``rec`` without calibration segments at its ends, each noted in ``rec.notes``; else ``rec`` itself."""
    derived = set(rec.meta.get("derived_leads") or ())
    stored = [k for k, name in enumerate(rec.leads) if name not in derived]
    x = rec.signal[stored].astype(np.float64)
    names = tuple(rec.leads[k] for k in stored)
    cut_end = _segment_from_end(x, rec.fs, names)
    cut_start = _segment_from_end(x[:, : x.shape[1] - cut_end][:, ::-1], rec.fs, names)
    if not cut_end and not cut_start:
        return rec
    notes = [f"calibration: dropped {n / rec.fs:.3f} s at the {side} (a square pulse on every lead, "
             "not ECG)" for n, side in ((cut_start, "start"), (cut_end, "end")) if n]
    signal = rec.signal[:, cut_start: rec.n_samples - cut_end]
    return dataclasses.replace(rec, signal=signal, notes=rec.notes + tuple(notes))
