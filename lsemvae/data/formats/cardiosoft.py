"""CardioSoft-style XML (GE CardioSoft / CASE resting ECG, as UK Biobank distributes it; root ``CardiologyXML``).

Covered: ``StripData`` only, the 10-s multi-lead strip: direct children ``SampleRate`` (units Hz),
``Resolution`` (units ``uVperLsb``; any voltage-per-LSB unit uV/mV is accepted, a missing or unknown
unit is refused), ``ChannelSampleCountTotal`` and ``NumberOfLeads`` (checked when present), and one
``WaveformData lead="<name>"`` per lead holding comma-separated integers (whitespace and line breaks
ignored). Not covered: ``FullDisclosure`` (interleaved continuous data with ``LeadOrder``) and
``RestingECGMeasurements/MedianSamples``: a file without ``StripData`` is refused. Patient id:
``PatientInfo/PID``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lsemvae.data.formats import limits
from lsemvae.data.formats.common import (
    child_text, children, count_values, first_child, local, mv_per_unit, parse_number, parse_root, select_leads,
    text_fields, xml_root_name,
)
from lsemvae.data.record import ECGRecord
from lsemvae.errors import RecordError

NAME = "cardiosoft"


def sniff(path: str | Path) -> bool:
    return xml_root_name(path) == "CardiologyXML"


def read(path: str | Path) -> ECGRecord:
    where = str(path)
    root = parse_root(path, "CardiologyXML", record=where)
    strip = _strip(root, where)
    fs = _sample_rate(strip, where)
    labels, rows = _waveforms(strip, _lsb_mv(strip, where), where)
    _check_counts(strip, labels, rows, where)
    keep, leads, dropped = select_leads(labels, record=where)

    info = first_child(root, "PatientInfo")
    record_id = Path(path).stem
    meta = {"format": NAME, "dropped_channels": dropped,
            **text_fields([("age", info, "Age"), ("sex", info, "Gender"), ("observation_type", root, "ObservationType")])}
    return ECGRecord(signal=np.stack([rows[i] for i in keep]), fs=fs, leads=tuple(leads), record_id=record_id,
                     patient_id=child_text(info, "PID") or record_id, source=where, meta=meta)


def _strip(root, where: str):
    strip = first_child(root, "StripData")
    if strip is None:
        other = [local(c.tag) for c in root if local(c.tag) in ("FullDisclosure", "RestingECGMeasurements")]
        raise RecordError(where, f"no StripData (found {other or 'no waveform'}); only the 10-s StripData "
                          "variant is supported", reason="unsupported-variant" if other else "not-ecg")
    return strip


def _sample_rate(strip, where: str) -> float:
    rate = first_child(strip, "SampleRate")
    fs = parse_number(rate.text if rate is not None else None, record=where, what="StripData/SampleRate", reason="fs")
    if rate is not None and rate.get("units", "Hz").lower() != "hz":
        raise RecordError(where, f"SampleRate units {rate.get('units')!r}, expected Hz", reason="fs")
    return fs


def _lsb_mv(strip, where: str) -> float:
    """Millivolts per least significant bit, from ``Resolution`` and its units."""
    res = first_child(strip, "Resolution")
    if res is None:
        raise RecordError(where, "StripData has no Resolution: amplitude scale unknown", reason="units")
    unit = re.sub(r"(?i)per\s*lsb$", "", res.get("units") or "")
    return parse_number(res.text, record=where, what="Resolution", reason="units") * mv_per_unit(
        unit or None, record=where, what=f"Resolution units {res.get('units')!r}")


def _waveforms(strip, lsb_mv: float, where: str) -> tuple[list[str | None], list[np.ndarray]]:
    """Lead labels and millivolt rows of the strip's ``WaveformData`` elements."""
    labels, rows = [], []
    for wave in children(strip, "WaveformData"):
        label = wave.get("lead") or None
        text = re.sub(r"\s+", "", wave.text or "")
        limits.check_samples(count_values(text, ","), record=where, what=f"WaveformData lead={label!r}")
        try:
            values = np.array([int(v) for v in text.split(",") if v != ""], dtype=np.int64)
        except ValueError:
            raise RecordError(where, f"WaveformData lead={label!r}: not comma-separated integers",
                              reason="corrupt") from None
        labels.append(label)
        rows.append((values * lsb_mv).astype(np.float32))
    if not rows:
        raise RecordError(where, "StripData has no WaveformData", reason="not-ecg")
    return labels, rows


def _check_counts(strip, labels: list[str | None], rows: list[np.ndarray], where: str) -> None:
    """Every lead as long as the others and as ``ChannelSampleCountTotal``; as many leads as ``NumberOfLeads``."""
    counts = [len(r) for r in rows]
    declared = child_text(strip, "ChannelSampleCountTotal")
    if len(set(counts)) != 1 or (declared and int(parse_number(declared, record=where,
                                                               what="ChannelSampleCountTotal")) != counts[0]):
        detail = ", ".join(f"{l}: {c}" for l, c in zip(labels, counts))
        raise RecordError(where, f"sample counts disagree (declared ChannelSampleCountTotal={declared}; {detail})",
                          reason="sample-count")
    n_leads = child_text(strip, "NumberOfLeads")
    if n_leads and int(parse_number(n_leads, record=where, what="NumberOfLeads")) != len(rows):
        raise RecordError(where, f"NumberOfLeads={n_leads} but {len(rows)} WaveformData elements",
                          reason="sample-count")
