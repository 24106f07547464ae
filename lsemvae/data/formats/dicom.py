"""DICOM ECG waveforms (12-lead, General ECG, Ambulatory ECG IODs) via pydicom.

Covered: ``WaveformSequence`` multiplex groups with 8- or 16-bit signed/unsigned samples
(``WaveformSampleInterpretation`` SB, UB, SS, US), any transfer syntax pydicom decodes natively
(implicit/explicit VR, deflated). Not covered: mu-law/A-law samples (MB, AB), 32/64-bit samples,
encapsulated (compressed) transfer syntaxes: these raise ``unsupported-variant``. A deflated file is
inflated here, at most to the per-record limit of :mod:`~lsemvae.data.formats.limits` (a few MB of
deflate can inflate to gigabytes); the declared sample count is checked against the limits too.

Group choice: among groups with at least one recognised ECG lead, prefer ``WaveformOriginality``
ORIGINAL over DERIVED (median beats are DERIVED), then most standard leads, then most samples. In a
standard 12-lead file this picks the RHYTHM group; the median-beat group is noted in ``meta``.

Lead identity comes from each channel's ``ChannelSourceSequence`` code: SCP-ECG scheme
(``5.6.3-9-<n>``), MDC scheme (``2:<n>`` or the 32-bit context-free code ``131072 + n``), where ``n``
is the MDC_ECG_LEAD number; otherwise from the code meaning (``Lead aVL``) or ``ChannelLabel``. If
the code and the meaning name different leads the record is refused (``lead-conflict``).

``WaveformPaddingValue`` marks samples outside a channel's recording, so it is honoured only where
such samples can be: at the ends of a channel. Trailing padding that every channel shares (the
recording ended before the group's length) is cut; a channel's own leading or trailing run (a lead
that starts late or stops early) becomes NaN when it lasts :data:`MIN_PADDING_S` or more, or when
the value lies outside the channel's other samples (it cannot be a voltage there). The same value in
mid-signal, or in a shorter edge run within the signal's range, is a genuine sample (padding 0
collides with real 0 uV samples) and is kept. Each case is said in ``ECGRecord.notes``.
Amplitude: ``(sample × ChannelSensitivity × ChannelSensitivityCorrectionFactor) + ChannelBaseline``
in the units of ``ChannelSensitivityUnitsSequence`` (uV/mV/V), converted to mV. Channels without
a sensitivity are uncalibrated and refused (``units``).
"""

from __future__ import annotations

import io
import re
import zlib
from pathlib import Path

import numpy as np

from lsemvae.data.formats import limits
from lsemvae.data.formats.common import file_head, lead_from_code, mv_per_unit, select_leads
from lsemvae.data.record import ECGRecord
from lsemvae.errors import LeadError, RecordError
from lsemvae.leads import MDC_CODES, canonical_lead

NAME = "dicom"
MIN_PADDING_S = 0.05  # an edge run of an in-range padding value shorter than this is read as genuine samples

# (bits allocated, interpretation) -> numpy dtype; little-endian as DICOM waveform data is.
_DTYPES = {(8, "SB"): "i1", (8, "UB"): "u1", (16, "SS"): "<i2", (16, "US"): "<u2"}
_MDC_CONTEXT_FREE_ECG_PARTITION = 2 << 16  # ISO/IEEE 11073 partition 2 (SCADA/ECG) in 32-bit codes


def sniff(path: str | Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` at byte 128, after the preamble."""
    return file_head(path, 132)[128:132] == b"DICM"


def _lead_from_code(value: str, scheme: str) -> str | None:
    """MDC_ECG_LEAD number from a coded lead, or None if the code is not in a known lead scheme."""
    value, scheme = (value or "").strip(), (scheme or "").strip().upper()
    n: int | None = None
    if m := re.fullmatch(r"5\.6\.3-9-(\d+)", value):  # SCP-ECG lead code; same numbers as MDC
        n = int(m.group(1))
    elif scheme == "MDC" and (m := re.fullmatch(r"(\d+):(\d+)", value)) and m.group(1) == "2":
        n = int(m.group(2))
    elif scheme == "MDC" and value.isdigit() and int(value) >> 16 == 2:
        n = int(value) - _MDC_CONTEXT_FREE_ECG_PARTITION
    if n is None:
        return None
    return lead_from_code(n) or f"MDC lead code {value}"


def _lead_from_text(text: str | None) -> str | None:
    if not text or not text.strip():
        return None
    # "Lead I (Einthoven)" -> "I"; "Lead aVL" -> "aVL"
    return re.sub(r"\(.*?\)", "", text).strip()


def _channel_label(ch, index: int, path: str) -> str | None:
    coded = textual = None
    if "ChannelSourceSequence" in ch and len(ch.ChannelSourceSequence):
        src = ch.ChannelSourceSequence[0]
        coded = _lead_from_code(str(src.get("CodeValue", "")), str(src.get("CodingSchemeDesignator", "")))
        textual = _lead_from_text(str(src.get("CodeMeaning", "")))
    textual = textual or _lead_from_text(str(ch.get("ChannelLabel", "")))
    if coded and textual and coded in MDC_CODES.values():
        try:
            from_text = canonical_lead(textual, record=path)
        except LeadError:
            from_text = None  # free text we cannot read; the code decides
        if from_text and from_text != coded:
            raise RecordError(
                path, f"channel {index + 1}: code says lead {coded} but its meaning/label says {textual!r}. "
                "The file's lead coding is inconsistent; fix the export.",
                reason="lead-conflict",
            )
    return coded or textual


def _group_score(group) -> tuple:
    labels = []
    for i, ch in enumerate(group.get("ChannelDefinitionSequence", [])):
        try:
            labels.append(_channel_label(ch, i, ""))
        except RecordError:
            labels.append(None)
    known = sum(1 for l in labels if l and l in MDC_CODES.values())
    return (known > 0, str(group.get("WaveformOriginality", "")).upper() == "ORIGINAL", known,
            int(group.get("NumberOfWaveformSamples", 0) or 0))


def _dcmread(path: str | Path, where: str):
    """``pydicom.dcmread``, but a deflated dataset is inflated with a bound (pydicom inflates it whole)."""
    import pydicom
    from pydicom.filereader import read_dataset, read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    meta = read_file_meta_info(path)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(path)
    start = 132 + 12 + int(meta.get("FileMetaInformationGroupLength", 0) or 0)  # preamble, DICM, (0002,0000)
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    inflater, parts, total = zlib.decompressobj(-zlib.MAX_WBITS), [], 0
    while True:  # 1 MB at a time, so that memory never holds more than the limit
        out = inflater.decompress(data, 1 << 20)
        data = inflater.unconsumed_tail
        total += len(out)
        limits.check_bytes(total, record=where, what="the deflated dataset, inflated, (so far)")
        parts.append(out)
        if inflater.eof or not out:
            break
    ds = read_dataset(io.BytesIO(b"".join(parts)), is_implicit_VR=False, is_little_endian=True)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the dataset now is
    ds.file_meta = meta
    return ds


def read(path: str | Path) -> ECGRecord:
    where = str(path)
    try:
        ds = _dcmread(path, where)
        for _elem in ds.iterall():  # pydicom parses lazily: surface corruption here, with the file named
            pass
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        compressed = tsyntax is not None and tsyntax.is_compressed and not tsyntax.is_deflated
    except RecordError:
        raise
    except Exception as err:  # pydicom and zlib raise many types (InvalidDicomError, struct.error, zlib.error...)
        raise RecordError(where, f"cannot parse DICOM file ({type(err).__name__}: {err})", reason="corrupt") from None
    if compressed:
        raise RecordError(where, f"compressed transfer syntax {tsyntax.name} is not supported for waveforms; "
                          "export uncompressed (Explicit VR Little Endian)", reason="unsupported-variant")
    groups = list(ds.get("WaveformSequence", []))
    if not groups:
        raise RecordError(where, f"DICOM file has no WaveformSequence (SOP class "
                          f"{ds.get('SOPClassUID', '?')}, modality {ds.get('Modality', '?')}): not an ECG waveform",
                          reason="not-ecg")
    scores = [_group_score(g) for g in groups]
    best = max(range(len(groups)), key=lambda i: scores[i])
    group = groups[best]
    signal, leads, dropped, fs, notes = _decode_group(group, best, where)

    meta = {
        "format": NAME,
        "dicom_group": best,
        "dicom_group_label": str(group.get("MultiplexGroupLabel", "")),
        "dicom_groups": [str(g.get("MultiplexGroupLabel", f"group {i}")) for i, g in enumerate(groups)],
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "dropped_channels": dropped,
    }
    for key, attr in (("manufacturer", "Manufacturer"), ("model", "ManufacturerModelName"),
                      ("sex", "PatientSex"), ("age", "PatientAge"), ("acquired", "AcquisitionDateTime")):
        if attr in ds and str(ds.get(attr)).strip():
            meta[key] = str(ds.get(attr))
    record_id = Path(path).stem
    patient_id = str(ds.get("PatientID", "") or "").strip() or record_id
    return ECGRecord(signal=signal, fs=fs, leads=tuple(leads), record_id=record_id, patient_id=patient_id,
                     source=where, meta=meta, notes=tuple(notes))


def _decode_group(group, index: int, where: str) -> tuple[np.ndarray, list[str], list[str], float, list[str]]:
    label = f"waveform group {index} ({group.get('MultiplexGroupLabel', 'unlabelled')})"
    channels = list(group.get("ChannelDefinitionSequence", []))
    n_ch = int(group.get("NumberOfWaveformChannels", 0) or 0)
    n_samp = int(group.get("NumberOfWaveformSamples", 0) or 0)
    if n_ch != len(channels) or n_ch == 0:
        raise RecordError(where, f"{label}: NumberOfWaveformChannels={n_ch} but {len(channels)} channel definitions",
                          reason="sample-count")
    fs = float(group.get("SamplingFrequency", 0) or 0)
    if not fs > 0:
        raise RecordError(where, f"{label}: SamplingFrequency missing or not positive", reason="fs")
    bits = int(group.get("WaveformBitsAllocated", 0) or 0)
    interp = str(group.get("WaveformSampleInterpretation", "")).upper()
    if (bits, interp) not in _DTYPES:
        raise RecordError(where, f"{label}: samples encoded as {bits}-bit {interp!r}; supported are 8-bit SB/UB and "
                          "16-bit SS/US (mu-law MB / A-law AB are not)", reason="unsupported-variant")
    dtype = np.dtype(_DTYPES[(bits, interp)])
    limits.check_samples(n_samp, record=where, what=f"{label} (NumberOfWaveformSamples)")
    raw = bytes(group.get("WaveformData", b"") or b"")
    expected = n_ch * n_samp * dtype.itemsize
    if len(raw) < expected or n_samp == 0:
        raise RecordError(where, f"{label}: WaveformData holds {len(raw)} bytes, expected {expected} "
                          f"({n_ch} channels × {n_samp} samples × {dtype.itemsize} bytes)", reason="sample-count")
    # Multiplexed: sample-major, channels interleaved. Trailing byte is padding to even length.
    digital = np.frombuffer(raw[:expected], dtype=dtype).reshape(n_samp, n_ch).T
    labels = [_channel_label(ch, i, where) for i, ch in enumerate(channels)]
    keep, leads, dropped = select_leads(labels, record=where)
    data, notes = _unpad(digital, group.get("WaveformPaddingValue"), [labels[i] for i in keep], keep, fs)
    rows = []
    for i in keep:
        ch = channels[i]
        if ch.get("ChannelSensitivity") in (None, ""):
            raise RecordError(where, f"{label}, channel {i + 1} ({labels[i]}): no ChannelSensitivity, samples are "
                              "uncalibrated", reason="units")
        units_seq = ch.get("ChannelSensitivityUnitsSequence") or []
        unit = str(units_seq[0].get("CodeValue", "")) if len(units_seq) else None
        scale = mv_per_unit(unit, record=where, what=f"{label}, channel {i + 1} ({labels[i]}) sensitivity units")
        sens = float(ch.ChannelSensitivity) * float(ch.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0)
        baseline = float(ch.get("ChannelBaseline", 0.0) or 0.0)
        rows.append((data[i] * sens + baseline) * scale)
    return np.stack(rows).astype(np.float32), leads, dropped, fs, notes


def _run(is_pad: np.ndarray) -> int:
    """Length of the run of True at the start of ``is_pad``."""
    return int(is_pad.size if is_pad.all() else np.argmin(is_pad))


def _unpad(digital: np.ndarray, padding, names: list[str], keep: list[int],
           fs: float) -> tuple[np.ndarray, list[str]]:
    """Float samples with padding honoured at the channels' ends only (see the module docstring), and notes."""
    data = digital.astype(np.float64)
    if padding is None or len(bytes(padding)) < digital.dtype.itemsize:
        return data, []
    value = np.frombuffer(bytes(padding)[:digital.dtype.itemsize], dtype=digital.dtype)[0]
    is_pad = digital[keep] == value
    notes = []
    shared_tail = min(_run(row[::-1]) for row in is_pad)
    if shared_tail:
        data, is_pad = data[:, :data.shape[1] - shared_tail], is_pad[:, :is_pad.shape[1] - shared_tail]
        notes.append(f"padding: the last {shared_tail} samples ({shared_tail / fs:.3f} s) of every lead equal "
                     f"WaveformPaddingValue {value}: after the end of the recording, dropped")
    for name, row, channel in zip(names, is_pad, keep):
        genuine = digital[channel, : row.size][~row]
        in_range = genuine.size > 0 and genuine.min() <= value <= genuine.max()
        head, tail = (n if n >= MIN_PADDING_S * fs or not in_range else 0 for n in (_run(row), _run(row[::-1])))
        if head or tail:
            data[channel, :head] = np.nan
            data[channel, data.shape[1] - tail:] = np.nan
            notes.append(f"padding: lead {name}: {head} leading and {tail} trailing samples equal "
                         f"WaveformPaddingValue {value}: outside its recording, missing (NaN)")
    return data, notes
