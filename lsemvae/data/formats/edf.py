"""EDF and EDF+ (European Data Format) via edfio.

Covered: EDF and continuous EDF+ (``EDF+C``; ``EDF+D`` is accepted only if its data records are
in fact contiguous). A signal is ECG if its label carries ``ECG``/``EKG`` anywhere, whatever the
montage prefix (``"ECG I"``, ``"EKG aVL"``, ``"ECG_V1"``, ``"EEG EKG1-REF"``), or if it is a bare
lead name (``"V1"``, ``"aVL"``; not ``C1``-``C6``, which are EEG electrodes too). The lead is what
follows the ECG/EKG token; an ECG signal whose lead is missing or unknown fails the record. Every
other signal (EEG, EOG, respiration, SpO2, photic...) is dropped and listed in
``meta["dropped_channels"]``. Messages name signals by their index in the file (``signal 27``).
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

from lsemvae.data.formats import limits
from lsemvae.data.formats.common import file_head, mv_per_unit, select_leads
from lsemvae.data.record import ECGRecord
from lsemvae.errors import LeadError, RecordError
from lsemvae.leads import canonical_lead

NAME = "edf"
_ECG_TOKEN = re.compile(r"(?<![a-z])(ecg|ekg)\d*(?![a-z])[\s_\-:]*", re.IGNORECASE)
_EEG_ELECTRODE = re.compile(r"^c\d$", re.IGNORECASE)  # C3 is a scalp electrode as well as a precordial alias


def sniff(path: str | Path) -> bool:
    """EDF's 8-byte version field is ``"0"`` padded with spaces; the header is 256 bytes."""
    head = file_head(path, 256)
    return len(head) == 256 and head[:8] == b"0       "


def read(path: str | Path) -> ECGRecord:
    import edfio

    where = str(path)
    try:
        edf = edfio.read_edf(path, lazy_load_data=True)
    except Exception as err:  # edfio raises ValueError/EdfError/UnicodeDecodeError on malformed headers
        raise RecordError(where, f"cannot parse EDF header/data ({type(err).__name__}: {err})",
                          reason="corrupt") from None
    reserved = str(edf.reserved).strip()
    if reserved.startswith("EDF+D") and not edf.is_continuous:
        raise RecordError(where, "discontinuous EDF+D recording: not supported (export a continuous EDF+C)",
                          reason="unsupported-variant")
    ecg, labels, channels, dropped = [], [], [], []
    for number, sig in enumerate(edf.signals, start=1):
        label = sig.label.strip()
        lead = _lead_label(label)
        if lead is False:
            dropped.append(label)
            continue
        ecg.append(sig)
        labels.append(lead)
        channels.append(f"signal {number} ({label!r})")
    if not ecg:
        raise RecordError(where, f"no ECG signal (signals: {dropped})", reason="not-ecg")
    keep, leads, extra = select_leads(labels, record=where, channels=channels)
    ecg = [ecg[i] for i in keep]
    for sig, channel in zip(ecg, (channels[i] for i in keep)):
        limits.check_samples(edf.num_data_records * sig.samples_per_data_record, record=where, what=channel)
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


def _lead_label(label: str) -> str | None | bool:
    """The lead an ECG signal's label names (None if it names none), or False for a non-ECG signal."""
    token = _ECG_TOKEN.search(label)
    if token:
        return label[token.end():].strip() or None
    if _EEG_ELECTRODE.match(label):
        return False
    try:
        canonical_lead(label)
    except LeadError:
        return False
    return label
