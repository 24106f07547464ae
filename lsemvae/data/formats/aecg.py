"""HL7 v3 annotated ECG (aECG, ``urn:hl7-org:v3``), the FDA submission format.

Covered: ``AnnotatedECG/component/series`` (the first series coded ``RHYTHM``, else the first series;
``derivation/derivedSeries`` representative beats are ignored) → ``component/sequenceSet`` →
``component/sequence``. The time sequence (code ``TIME_ABSOLUTE`` GLIST_TS or ``TIME_RELATIVE``
GLIST_PQ) gives ``fs = 1 / increment`` (unit s or ms). Each lead sequence is an ``SLIST_PQ``:
``physical = origin + scale × digit`` with origin/scale units uV, mV or V; the lead comes from the
sequence code (``MDC_ECG_LEAD_AVL``; non-standard leads like V4R are dropped). Several
sequenceSets in the series are joined only if they hold different leads of equal length.
Patient id: ``trialSubject/id/@extension`` when present.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from lsemvae.data.formats import limits
from lsemvae.data.formats.common import (
    check_equal_lengths, children, count_values, first_child, mv_per_unit, parse_number, parse_root, select_leads,
    xml_root_name,
)
from lsemvae.data.record import ECGRecord
from lsemvae.errors import RecordError

NAME = "hl7-aecg"
NS = "urn:hl7-org:v3"
_S_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def sniff(path: str | Path) -> bool:
    return xml_root_name(path) == "AnnotatedECG"


def _code(elem: ET.Element) -> str:
    for c in children(elem, "code"):
        return c.get("code", "")
    return ""


def _pick_series(root: ET.Element, where: str) -> ET.Element:
    series = [s for comp in children(root, "component") for s in children(comp, "series")]
    if not series:
        raise RecordError(where, "AnnotatedECG has no component/series: no waveform", reason="not-ecg")
    rhythm = [s for s in series if _code(s).upper() == "RHYTHM"]
    return (rhythm or series)[0]


def read(path: str | Path) -> ECGRecord:
    where = str(path)
    root = parse_root(path, "AnnotatedECG", record=where)
    series = _pick_series(root, where)
    sets = [ss for comp in children(series, "component") for ss in children(comp, "sequenceSet")]
    if not sets:
        raise RecordError(where, "series has no sequenceSet", reason="not-ecg")
    fs, labels, rows = _sequences(sets, where)
    keep, leads, dropped = select_leads(labels, record=where)
    if len(sets) > 1 and len(set(leads)) != len(leads):
        raise RecordError(where, f"{len(sets)} sequenceSets repeat leads (time-segmented layout): "
                          "not supported, export one 12-lead rhythm set", reason="unsupported-variant")

    subject = root.find(f".//{{{NS}}}trialSubject/{{{NS}}}id")
    record_id = Path(path).stem
    patient_id = (subject.get("extension") if subject is not None else None) or record_id
    ecg_id = first_child(root, "id")
    meta = {"format": NAME, "series_code": _code(series), "dropped_channels": dropped,
            "aecg_id": ecg_id.get("root", "") if ecg_id is not None else ""}
    return ECGRecord(signal=np.stack([rows[i] for i in keep]), fs=fs, leads=tuple(leads), record_id=record_id,
                     patient_id=patient_id, source=where, meta=meta)


def _sequences(sets: list[ET.Element], where: str) -> tuple[float, list[str | None], list[np.ndarray]]:
    """``(fs, lead labels, millivolt rows)`` of the sequenceSets: one sampling rate, leads of one length."""
    fs = None
    labels: list[str | None] = []
    rows: list[np.ndarray] = []
    for seq in (seq for sset in sets for comp in children(sset, "component") for seq in children(comp, "sequence")):
        code = _code(seq)
        if code.upper().startswith("TIME_"):
            set_fs = _sampling_rate(first_child(seq, "value"), where)
            if fs is not None and abs(set_fs - fs) > 1e-6:
                raise RecordError(where, f"sequenceSets sampled at {fs} Hz and {set_fs} Hz", reason="mixed-fs")
            fs = set_fs
            continue
        label = code or None
        rows.append(_lead_samples(first_child(seq, "value"), label or f"sequence {len(rows) + 1}", where))
        labels.append(label)
    if fs is None:
        raise RecordError(where, "no TIME_ABSOLUTE/TIME_RELATIVE sequence: sampling rate unknown", reason="fs")
    if not rows:
        raise RecordError(where, "sequenceSet holds no lead sequences", reason="not-ecg")
    check_equal_lengths(labels, rows, record=where, what="lead sequences")
    return fs, labels, rows


def _sampling_rate(value: ET.Element | None, where: str) -> float:
    inc = first_child(value, "increment") if value is not None else None
    if inc is None:
        raise RecordError(where, "time sequence has no increment: sampling rate unknown", reason="fs")
    step = parse_number(inc.get("value"), record=where, what="time increment", reason="fs")
    unit = inc.get("unit", "s")
    if unit not in _S_PER_UNIT or step <= 0:
        raise RecordError(where, f"time increment {inc.get('value')!r} {unit!r} is not a positive time in s/ms",
                          reason="fs")
    return 1.0 / (step * _S_PER_UNIT[unit])


def _lead_samples(value: ET.Element | None, label: str, where: str) -> np.ndarray:
    if value is None:
        raise RecordError(where, f"{label}: sequence has no value", reason="corrupt")
    vtype = value.get("{http://www.w3.org/2001/XMLSchema-instance}type", "SLIST_PQ")
    if vtype != "SLIST_PQ":
        raise RecordError(where, f"{label}: value type {vtype!r} not supported (expected SLIST_PQ)",
                          reason="unsupported-variant")
    origin = first_child(value, "origin")
    scale = first_child(value, "scale")
    digits = first_child(value, "digits")
    if scale is None or digits is None:
        raise RecordError(where, f"{label}: SLIST_PQ lacks scale or digits", reason="corrupt")
    scale_mv = parse_number(scale.get("value"), record=where, what=f"{label} scale") * mv_per_unit(
        scale.get("unit"), record=where, what=f"{label} scale unit")
    origin_mv = 0.0
    if origin is not None:
        origin_mv = parse_number(origin.get("value"), record=where, what=f"{label} origin") * mv_per_unit(
            origin.get("unit"), record=where, what=f"{label} origin unit")
    limits.check_samples(count_values(digits.text or ""), record=where, what=label)
    try:
        ints = np.array((digits.text or "").split(), dtype=np.int64)
    except ValueError:
        raise RecordError(where, f"{label}: digits are not whitespace-separated integers", reason="corrupt") from None
    if ints.size == 0:
        raise RecordError(where, f"{label}: no digits", reason="sample-count")
    return (origin_mv + scale_mv * ints).astype(np.float32)
