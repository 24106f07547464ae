"""GE MUSE resting ECG XML export (root ``RestingECG``).

Covered: the first ``Waveform`` whose ``WaveformType`` is ``Rhythm`` (the 10-s recording; the
``Median`` beat waveform is not read, and a file with only medians is refused as ``not-ecg``).
``fs = SampleBase × 10^SampleExponent``. Each ``LeadData`` has ``LeadID``, base64 ``WaveFormData``
of little-endian int16 (``LeadSampleSize`` must be 2, anything else is ``unsupported-variant``),
``LeadAmplitudeUnitsPerBit`` × samples in ``LeadAmplitudeUnits`` (MICROVOLTS, MILLIVOLTS);
``LeadSampleCountTotal`` and ``LeadByteCountTotal`` are checked against the decoded data.
``LeadDataCRC32`` is not verified (its exact definition is not public).

Derived leads: MUSE stores the 8 independent leads I, II, V1-V6. III, aVR, aVL and aVF are computed
from I and II with Einthoven's and Goldberger's identities (:func:`lsemvae.leads.derive_limb_leads`);
any of them present in the file is kept as stored. ``meta["derived_leads"]`` lists what was computed.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

import numpy as np

from lsemvae.data.formats import limits
from lsemvae.data.formats.common import (
    check_equal_lengths, child_text, children, first_child, mv_per_unit, parse_number, parse_root, select_leads,
    text_fields, xml_root_name,
)
from lsemvae.data.record import ECGRecord
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12, derive_limb_leads

NAME = "ge-muse"


def sniff(path: str | Path) -> bool:
    return xml_root_name(path) == "RestingECG"


def read(path: str | Path) -> ECGRecord:
    where = str(path)
    root = parse_root(path, "RestingECG", record=where)
    wave = _rhythm(root, where)
    base = parse_number(child_text(wave, "SampleBase"), record=where, what="SampleBase", reason="fs")
    exponent = parse_number(child_text(wave, "SampleExponent") or "0", record=where, what="SampleExponent",
                            reason="fs")
    fs = base * 10.0 ** exponent

    labels, rows = _lead_data(wave, where)
    keep, leads, dropped = select_leads(labels, record=where)
    signal = {name: rows[i] for i, name in zip(keep, leads)}
    derived = _derive_limb_leads(signal)
    order = [name for name in LEADS_12 if name in signal]

    demo, test = first_child(root, "PatientDemographics"), first_child(root, "TestDemographics")
    record_id = Path(path).stem
    meta = {"format": NAME, "derived_leads": derived, "dropped_channels": dropped,
            **text_fields([("age", demo, "PatientAge"), ("sex", demo, "Gender"), ("device", test, "AcquisitionDevice"),
                           ("site", test, "Site"), ("acquired", test, "AcquisitionDate")])}
    return ECGRecord(signal=np.stack([signal[n] for n in order]), fs=fs, leads=tuple(order), record_id=record_id,
                     patient_id=child_text(demo, "PatientID") or record_id, source=where, meta=meta)


def _rhythm(root, where: str):
    """The first ``Rhythm`` waveform (median beats alone are no recording)."""
    waveforms = list(children(root, "Waveform"))
    rhythm = [w for w in waveforms if (child_text(w, "WaveformType") or "").lower() == "rhythm"]
    if not rhythm:
        types = [child_text(w, "WaveformType") for w in waveforms]
        raise RecordError(where, f"no Rhythm waveform (found {types or 'none'}); median beats alone are not "
                          "read as a recording", reason="not-ecg")
    return rhythm[0]


def _lead_data(wave, where: str) -> tuple[list[str | None], list[np.ndarray]]:
    """Lead labels and millivolt rows of the waveform's ``LeadData``, all of one length."""
    labels, rows = [], []
    for i, lead in enumerate(children(wave, "LeadData")):
        label = child_text(lead, "LeadID") or None
        labels.append(label)
        rows.append(_decode_lead(lead, label or f"LeadData {i + 1}", where))
    if not rows:
        raise RecordError(where, "Rhythm waveform has no LeadData", reason="not-ecg")
    check_equal_lengths(labels, rows, record=where, what="leads")
    return labels, rows


def _derive_limb_leads(signal: dict[str, np.ndarray]) -> list[str]:
    """Add III, aVR, aVL, aVF computed from I and II where the file lacks them; returns those added."""
    if "I" not in signal or "II" not in signal:
        return []
    derived = []
    for name, values in derive_limb_leads(signal["I"], signal["II"]).items():
        if name not in signal:
            signal[name] = values
            derived.append(name)
    return derived


def _decode_lead(lead, label: str, where: str) -> np.ndarray:
    size = child_text(lead, "LeadSampleSize") or "2"
    if size != "2":
        raise RecordError(where, f"lead {label}: LeadSampleSize {size} bytes; only 2-byte (int16) samples are "
                          "supported", reason="unsupported-variant")
    declared = child_text(lead, "LeadSampleCountTotal")
    if declared:
        limits.check_samples(int(parse_number(declared, record=where, what="LeadSampleCountTotal")), record=where,
                             what=f"lead {label}")
    text = re.sub(r"\s+", "", child_text(lead, "WaveFormData") or "")
    limits.check_samples(len(text.rstrip("=")) * 3 // 8, record=where, what=f"lead {label} WaveFormData")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(where, f"lead {label}: WaveFormData is not valid base64", reason="corrupt") from None
    if not raw or len(raw) % 2:
        raise RecordError(where, f"lead {label}: {len(raw)} data bytes is not a whole number of int16 samples",
                          reason="sample-count")
    declared_bytes = child_text(lead, "LeadByteCountTotal")
    if declared_bytes and int(parse_number(declared_bytes, record=where, what="LeadByteCountTotal")) != len(raw):
        raise RecordError(where, f"lead {label}: LeadByteCountTotal {declared_bytes} but {len(raw)} bytes decoded",
                          reason="sample-count")
    samples = np.frombuffer(raw, dtype="<i2")
    if declared and int(parse_number(declared, record=where, what="LeadSampleCountTotal")) != samples.size:
        raise RecordError(where, f"lead {label}: LeadSampleCountTotal {declared} but {samples.size} samples decoded",
                          reason="sample-count")
    per_bit = parse_number(child_text(lead, "LeadAmplitudeUnitsPerBit"), record=where,
                           what=f"lead {label} LeadAmplitudeUnitsPerBit", reason="units")
    scale = mv_per_unit(child_text(lead, "LeadAmplitudeUnits"), record=where, what=f"lead {label} LeadAmplitudeUnits")
    return (samples.astype(np.float64) * per_bit * scale).astype(np.float32)
