"""EDF and EDF+ (European Data Format) via edfio.

Covered: EDF and continuous EDF+ (``EDF+C``; ``EDF+D`` is accepted only if its data records are
in fact contiguous). Signal labels are read per the EDF+ convention ``"<type> <name>"``: ``"ECG I"``,
``"EKG aVL"``, ``"ECG_V1"`` or a bare ``"V1"``. Signals whose type is a known non-ECG one (EEG, EOG,
EMG, Resp, SpO2/SaO2, Pleth, Temp, Pos, Light, Sound, Event, HR) are dropped and listed in
``meta["dropped_channels"]``; every other signal must name an ECG lead or the record is refused.
Physical values come from edfio (digital → physical via the header ranges) in the signal's
physical dimension (uV, mV, V).

Sampling rates: all ECG signals must share one rate; different rates raise ``mixed-fs`` rather
than resampling silently (resample the file deliberately if that is what you want).
BDF (24-bit, ``\\xffBIOSEMI``) is not covered.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lsemvae.data.formats.common import mv_per_unit, select_leads
from lsemvae.data.record import ECGRecord
from lsemvae.errors import RecordError

NAME = "edf"
_ECG_TYPE = re.compile(r"^(ecg|ekg)[\s_\-]*", re.IGNORECASE)
_NON_ECG_TYPE = re.compile(r"^(eeg|eog|emg|resp|spo2|sao2|pleth|temp|pos|light|sound|event|hr|pulse)\b",
                           re.IGNORECASE)


def sniff(path: str | Path) -> bool:
    """EDF's 8-byte version field is ``"0"`` padded with spaces; the header is 256 bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    return len(head) == 256 and head[:8] == b"0       "


def read(path: str | Path) -> ECGRecord:
    import edfio

    where = str(path)
    try:
        edf = edfio.read_edf(path)
    except Exception as err:  # edfio raises ValueError/EdfError/UnicodeDecodeError on malformed headers
        raise RecordError(where, f"cannot parse EDF header/data ({type(err).__name__}: {err})",
                          reason="corrupt") from None
    reserved = str(edf.reserved).strip()
    if reserved.startswith("EDF+D") and not edf.is_continuous:
        raise RecordError(where, "discontinuous EDF+D recording: not supported (export a continuous EDF+C)",
                          reason="unsupported-variant")
    ecg, dropped = [], []
    for sig in edf.signals:
        if _NON_ECG_TYPE.match(sig.label.strip()):
            dropped.append(sig.label.strip())
        else:
            ecg.append(sig)
    labels = [_ECG_TYPE.sub("", s.label.strip()) or None for s in ecg]
    if not ecg:
        raise RecordError(where, f"no ECG signal (signals: {dropped})", reason="not-ecg")
    keep, leads, extra = select_leads(labels, record=where)
    ecg = [ecg[i] for i in keep]
    rates = {s.label.strip(): float(s.sampling_frequency) for s in ecg}
    if len(set(rates.values())) != 1:
        raise RecordError(where, f"ECG signals sampled at different rates ({rates}); resample to one rate first",
                          reason="mixed-fs")
    rows = []
    for sig, name in zip(ecg, leads):
        scale = mv_per_unit(sig.physical_dimension.strip() or None, record=where,
                            what=f"signal {sig.label.strip()!r} physical dimension")
        rows.append(np.asarray(sig.data, dtype=np.float64) * scale)
    if len({len(r) for r in rows}) != 1:
        raise RecordError(where, "ECG signals have different sample counts", reason="sample-count")

    record_id = Path(path).stem
    patient_id = record_id
    fields = str(edf.local_patient_identification).split()
    if len(fields) >= 4 and fields[1] in ("M", "F", "X"):  # EDF+ "code sex birthdate name" layout
        patient_id = fields[0] if fields[0] != "X" else record_id
    meta = {"format": NAME, "edf_variant": reserved[:5] if reserved.startswith("EDF+") else "EDF",
            "dropped_channels": dropped + extra}
    return ECGRecord(signal=np.stack(rows).astype(np.float32), fs=next(iter(rates.values())), leads=tuple(leads),
                     record_id=record_id, patient_id=patient_id, source=where, meta=meta)
