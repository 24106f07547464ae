"""Philips SierraECG / PageWriter XML (root ``restingecgdata``; document versions 1.03 and 1.04.x).

PageWriter TC carts, IntelliSpace ECG and TraceMasterVue export this. Read here:

- ``dataacquisition/signalcharacteristics``: ``samplingrate`` (Hz) and ``signalresolution``
  (microvolts per least significant bit, the schema's unit);
- ``waveforms/parsedwaveforms`` (``dataencoding="Base64"``): ``durationperchannel`` (ms) gives the
  sample count; ``compressmethod``/``compression`` ``XLI`` (decoded by :mod:`.xli`, bounded by the
  declared count) or uncompressed little-endian int16, lead after lead;
- lead names from ``leadlabels`` (1.04), else from the declared lead set (``acquisitiontype`` or
  ``leadset`` ``STD-12``/``10-WIRE``, whose channel order the schema fixes: I, II, III, aVR, aVL,
  aVF, V1-V6); any other lead set without ``leadlabels`` is refused;
- ``patient/generalpatientdata/patientid`` (age, sex into ``meta``).

Limb leads: carts store III, aVR, aVL and aVF as residuals against their values predicted from I and
II (and III), which compress to almost nothing. The reader does not assume it: a file whose stored
III already satisfies Einthoven is read as stored, one whose stored III is a near-zero residual is
reconstructed (III = II - I - r, aVR = -r - (I + II)/2, aVL = (I - III)/2 - r, aVF = (II + III)/2 - r,
halves rounded down as the carts do), anything else is refused. The 1-s calibration segment these
files end with is dropped by :mod:`.calibration`.

The ``sierraecg`` package (MIT) decodes the same files, but inflates XLI without an output bound
(a hostile file could ask for gigabytes) and rebuilds the limb leads by channel position; hence the
small decoder here.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

import numpy as np

from lsemvae.data.formats import limits, xli
from lsemvae.data.formats.common import child_text, parse_number, parse_root, select_leads, xml_root_name
from lsemvae.data.record import ECGRecord
from lsemvae.errors import RecordError
from lsemvae.leads import LEADS_12, derive_limb_leads

NAME = "philips-xml"
VERSIONS = ("1.03", "1.04", "1.04.01", "1.04.02")
_STANDARD_SETS = ("STD-12", "10-WIRE")
_RESIDUAL_LEADS = ("III", "aVR", "aVL", "aVF")


def sniff(path: str | Path) -> bool:
    return xml_root_name(path) == "restingecgdata"


def _find(elem, *names: str):
    """The first descendant at the path ``names`` of local names (namespace-agnostic), or None."""
    return elem.find(".//" + "/".join(f"{{*}}{n}" for n in names)) if elem is not None else None


def read(path: str | Path) -> ECGRecord:
    where = str(path)
    root = parse_root(path, "restingecgdata", record=where)
    info = _find(root, "documentinfo")
    doc_type, version = child_text(info, "documenttype"), child_text(info, "documentversion")
    if version not in VERSIONS:
        raise RecordError(where, f"{doc_type or 'Philips'} XML version {version!r}: only {', '.join(VERSIONS)} are "
                          "supported", reason="unsupported-variant")
    signal = _find(root, "dataacquisition", "signalcharacteristics")
    fs = parse_number(child_text(signal, "samplingrate"), record=where, what="samplingrate", reason="fs")
    resolution_uv = parse_number(child_text(signal, "signalresolution"), record=where, what="signalresolution",
                                 reason="units")
    if not resolution_uv > 0:
        raise RecordError(where, f"signalresolution {resolution_uv} uV per LSB: not a positive scale", reason="units")
    waves = _find(root, "waveforms", "parsedwaveforms")
    if waves is None:
        raise RecordError(where, "no waveforms/parsedwaveforms: the file holds no rhythm data", reason="not-ecg")

    labels = _labels(waves, signal, where)
    duration_ms = parse_number(waves.get("durationperchannel"), record=where, what="durationperchannel",
                               reason="sample-count")
    n_samples = int(round(duration_ms * fs / 1000.0))
    if n_samples <= 0:
        raise RecordError(where, f"durationperchannel {duration_ms:g} ms at {fs:g} Hz is no sample", reason="sample-count")
    limits.check_samples(n_samples, record=where, what="durationperchannel")
    digital = _samples(waves, len(labels), n_samples, where)
    keep, leads, dropped = select_leads(labels, record=where)
    stored = {name: digital[i].astype(np.int64) for i, name in zip(keep, leads)}
    reconstructed = _limb_leads(stored, where)
    order = [n for n in LEADS_12 if n in stored]
    mv = np.stack([stored[n] for n in order]).astype(np.float64) * resolution_uv / 1000.0

    patient = _find(root, "patient", "generalpatientdata")
    record_id = Path(path).stem
    meta = {"format": NAME, "document": f"{doc_type} {version}", "dropped_channels": dropped,
            "reconstructed_leads": reconstructed}
    if machine := child_text(_find(root, "dataacquisition"), "machine"):
        meta["device"] = machine
    if age := child_text(_find(patient, "age"), "years"):
        meta["age"] = age
    if sex := child_text(patient, "sex"):
        meta["sex"] = sex
    return ECGRecord(signal=mv.astype(np.float32), fs=fs, leads=tuple(order), record_id=record_id,
                     patient_id=child_text(patient, "patientid") or record_id, source=where, meta=meta)


def _labels(waves, signal, where: str) -> list[str]:
    declared = (waves.get("leadlabels") or "").split()
    if declared:
        count = waves.get("numberofleads")
        return declared[: int(parse_number(count, record=where, what="numberofleads"))] if count else declared
    lead_set = child_text(signal, "acquisitiontype") or child_text(signal, "leadset")
    if lead_set not in _STANDARD_SETS:
        raise RecordError(where, f"lead set {lead_set!r} without parsedwaveforms/@leadlabels: the channels cannot be "
                          f"named (only {', '.join(_STANDARD_SETS)} have a fixed order)", reason="missing-lead-label")
    return list(LEADS_12)


def _samples(waves, n_leads: int, n_samples: int, where: str) -> np.ndarray:
    if (waves.get("dataencoding") or "Base64") != "Base64":
        raise RecordError(where, f"parsedwaveforms dataencoding {waves.get('dataencoding')!r}: only Base64 is "
                          "supported", reason="unsupported-variant")
    text = re.sub(r"\s+", "", waves.text or "")
    # Base64 is 4 characters per 3 bytes; XLI at worst adds ~25 % to 2 bytes per sample, plus chunk headers.
    limit = int(n_leads * (2.6 * n_samples + 64) * 4 / 3) + 4096
    if len(text) > 4 * limit:
        raise RecordError(where, f"parsedwaveforms holds {len(text):,} base64 characters, far more than "
                          f"{n_leads} leads x {n_samples} samples can need", reason="sample-count")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(where, "parsedwaveforms is not valid base64", reason="corrupt") from None
    method = waves.get("compressmethod") or waves.get("compression") or "Uncompressed"
    if (waves.get("compressflag") or "").lower() == "false":
        method = "Uncompressed"
    if method == "XLI":
        try:
            return xli.decode(data, n_leads, n_samples)
        except xli.XliError as err:
            raise RecordError(where, f"XLI waveform data: {err}", reason="corrupt") from None
    if method != "Uncompressed":
        raise RecordError(where, f"waveform compression {method!r}: only XLI and uncompressed are supported",
                          reason="unsupported-variant")
    if len(data) < 2 * n_leads * n_samples:
        raise RecordError(where, f"uncompressed waveform data holds {len(data)} bytes, {2 * n_leads * n_samples} "
                          f"expected ({n_leads} leads x {n_samples} samples x 2)", reason="sample-count")
    return np.frombuffer(data[: 2 * n_leads * n_samples], dtype="<i2").reshape(n_leads, n_samples)


def _limb_leads(stored: dict[str, np.ndarray], where: str) -> list[str]:
    """Rebuild III, aVR, aVL, aVF in place when the file stores them as residuals; returns which."""
    if not set(("I", "II") + _RESIDUAL_LEADS) <= set(stored):
        return []
    lead_i, lead_ii = stored["I"], stored["II"]
    predicted = derive_limb_leads(lead_i, lead_ii)
    # Median deviation (LSB) of the four leads from their Einthoven/Goldberger values, and from zero.
    as_full = sum(float(np.median(np.abs(stored[n] - predicted[n]))) for n in _RESIDUAL_LEADS)
    as_residual = sum(float(np.median(np.abs(stored[n]))) for n in _RESIDUAL_LEADS)
    if as_full <= as_residual / 3:
        return []
    if as_residual > as_full / 3:
        raise RecordError(where, "limb leads III, aVR, aVL, aVF are neither full leads (Einthoven/Goldberger fail) "
                          f"nor residuals against I and II (not near zero): median deviations {as_full:.0f} and "
                          f"{as_residual:.0f} LSB; cannot tell how to read them", reason="unsupported-variant")
    lead_iii = lead_ii - lead_i - stored["III"]
    stored["III"] = lead_iii
    stored["aVR"] = -stored["aVR"] - (lead_i + lead_ii) // 2
    stored["aVL"] = (lead_i - lead_iii) // 2 - stored["aVL"]
    stored["aVF"] = (lead_ii + lead_iii) // 2 - stored["aVF"]
    return list(_RESIDUAL_LEADS)
