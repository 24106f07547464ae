"""Writers that build ECG files from the formats' published layouts, for tests only.

No public sample of HL7 aECG, GE MUSE XML or CardioSoft XML ships with a package available
offline, so these writers produce conforming files from the specifications (HL7 v3 aECG
implementation guide; GE MUSE ``restecg.dtd`` layout; the CardioSoft ``CardiologyXML`` layout UK
Biobank distributes as field 20205). They deliberately share no code with the readers under test
(``lsemvae.data.formats``), so a round trip checks the reader against the layout, not against itself.
DICOM files are built with pydicom following PS3.3 A.34 (12-Lead ECG IOD); EDF with edfio; SCP-ECG from
EN 1064 (its CRC, default Huffman table and difference coding re-implemented here, bit by bit).
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import numpy as np

LEADS_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# ISO/IEEE 11073-10101 MDC_ECG_LEAD_* numbers (also SCP-ECG lead codes).
MDC = {"I": 1, "II": 2, "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8, "V4R": 12,
       "III": 61, "aVR": 62, "aVL": 63, "aVF": 64}


def synthetic_ecg_mv(fs: float = 500.0, seconds: float = 10.0, seed: int = 0) -> dict[str, np.ndarray]:
    """A plausible 12-lead ECG in mV: Gaussian P/QRS/T waves at 72 bpm, limb leads obeying Einthoven.

    Each lead gets its own shape so a swapped lead is detectable.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    beats = np.arange(0.4, seconds, 60 / 72)

    def wave(p, q, r, s, tw):
        x = np.zeros_like(t)
        for b in beats:
            for amp, centre, width in ((p, -0.16, 0.025), (q, -0.025, 0.01), (r, 0.0, 0.012),
                                       (s, 0.03, 0.012), (tw, 0.28, 0.05)):
                x += amp * np.exp(-0.5 * ((t - b - centre) / width) ** 2)
        return x + 0.01 * rng.standard_normal(t.size)

    lead_i = wave(0.08, -0.05, 0.9, -0.15, 0.25)
    lead_ii = wave(0.15, -0.1, 1.3, -0.2, 0.35)
    sig = {"I": lead_i, "II": lead_ii, "III": lead_ii - lead_i, "aVR": -(lead_i + lead_ii) / 2,
           "aVL": lead_i - lead_ii / 2, "aVF": lead_ii - lead_i / 2}
    for k, name in enumerate(LEADS_12[6:]):
        sig[name] = wave(0.05 + 0.01 * k, -0.1, 0.3 + 0.25 * k, -1.2 + 0.2 * k, 0.1 + 0.05 * k)
    return sig


def quantise(mv: np.ndarray, lsb_uv: float) -> np.ndarray:
    return np.round(mv * 1000.0 / lsb_uv).astype(np.int64)


# ----------------------------------------------------------------------------- HL7 aECG

def write_aecg(path: Path, digits: dict[str, np.ndarray], *, fs: float, scale_uv: float = 5.0,
               origin_uv: float = 0.0, subject_id: str | None = "SUBJ-001", scale_unit: str = "uV",
               increment_unit: str = "s", codes: dict[str, str] | None = None) -> Path:
    """HL7 aECG: AnnotatedECG/component/series(RHYTHM)/component/sequenceSet/component/sequence.

    ``codes`` overrides a lead's sequence code (default ``MDC_ECG_LEAD_<NAME>``).
    """
    step = 1.0 / fs if increment_unit == "s" else 1000.0 / fs
    seqs = [f"""<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>
      <value xsi:type="GLIST_TS"><head value="20240101120000.000"/><increment value="{step:.10g}" unit="{increment_unit}"/></value>
    </sequence></component>"""]
    for name, d in digits.items():
        code = (codes or {}).get(name, f"MDC_ECG_LEAD_{name.upper()}")
        code_attr = f' code="{code}"' if code else ""
        seqs.append(f"""<component><sequence><code{code_attr} codeSystem="2.16.840.1.113883.6.24"/>
      <value xsi:type="SLIST_PQ"><origin value="{origin_uv}" unit="{scale_unit}"/><scale value="{scale_uv}" unit="{scale_unit}"/>
      <digits>{' '.join(str(int(v)) for v in d)}</digits></value></sequence></component>""")
    subject = (f"""<componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>
      <id root="2.16.840.1.113883.3.1" extension="{subject_id}"/></trialSubject></subject></subjectAssignment>
      </componentOf></timepointEvent></componentOf>""" if subject_id else "")
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <id root="61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"/>
  <code code="93000" codeSystem="2.16.840.1.113883.6.12"/>
  <effectiveTime><low value="20240101120000"/><high value="20240101120010"/></effectiveTime>
  {subject}
  <component><series>
    <id root="b5a8b8f3-0000-4000-8000-000000000001"/>
    <code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
    <effectiveTime><low value="20240101120000"/><high value="20240101120010"/></effectiveTime>
    <component><sequenceSet>{''.join(seqs)}</sequenceSet></component>
  </series></component>
</AnnotatedECG>
"""
    path.write_text(xml, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- GE MUSE

def write_muse(path: Path, digits: dict[str, np.ndarray], *, fs: int = 500, uv_per_bit: float = 4.88,
               units: str = "MICROVOLTS", sample_size: int = 2, patient_id: str = "MRN12345",
               waveform_types: tuple[str, ...] = ("Median", "Rhythm"), byte_count_delta: int = 0) -> Path:
    """GE MUSE ``RestingECG`` with one ``Waveform`` per type; ``LeadData`` carries base64 int16 LE samples."""
    def lead_xml(name, d):
        raw = np.asarray(d, dtype="<i2").tobytes() if sample_size == 2 else np.asarray(d, dtype="<i4").tobytes()
        return f"""<LeadData>
<LeadByteCountTotal>{len(raw) + byte_count_delta}</LeadByteCountTotal><LeadTimeOffset>0</LeadTimeOffset>
<LeadSampleCountTotal>{len(d)}</LeadSampleCountTotal><LeadAmplitudeUnitsPerBit>{uv_per_bit}</LeadAmplitudeUnitsPerBit>
<LeadAmplitudeUnits>{units}</LeadAmplitudeUnits><LeadHighLimit>32767</LeadHighLimit><LeadLowLimit>-32768</LeadLowLimit>
<LeadID>{name}</LeadID><LeadOffsetFirstSample>0</LeadOffsetFirstSample><FirstSampleBaseline>0</FirstSampleBaseline>
<LeadSampleSize>{sample_size}</LeadSampleSize><LeadOff>FALSE</LeadOff><BaselineSway>FALSE</BaselineSway>
<LeadDataCRC32>0</LeadDataCRC32>
<WaveFormData>{base64.encodebytes(raw).decode('ascii')}</WaveFormData>
</LeadData>"""

    waves = []
    for wtype in waveform_types:
        data = digits if wtype == "Rhythm" else {k: v[:600] for k, v in digits.items()}
        waves.append(f"""<Waveform><WaveformType>{wtype}</WaveformType><WaveformStartTime>0</WaveformStartTime>
<NumberofLeads>{len(data)}</NumberofLeads><SampleType>CONTINUOUS_SAMPLES</SampleType><SampleBase>{fs}</SampleBase>
<SampleExponent>0</SampleExponent><HighPassFilter>16</HighPassFilter><LowPassFilter>150</LowPassFilter><ACFilter>50</ACFilter>
{''.join(lead_xml(k, v) for k, v in data.items())}</Waveform>""")
    xml = f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<!DOCTYPE RestingECG SYSTEM "restecg.dtd">
<RestingECG>
<MuseInfo><MuseVersion>9.0.9.18167</MuseVersion></MuseInfo>
<PatientDemographics><PatientID>{patient_id}</PatientID><PatientAge>64</PatientAge><AgeUnits>YEARS</AgeUnits>
<Gender>FEMALE</Gender></PatientDemographics>
<TestDemographics><DataType>RESTING</DataType><Site>1</Site><AcquisitionDevice>MAC55</AcquisitionDevice>
<AcquisitionDate>01-02-2024</AcquisitionDate><AcquisitionTime>10:11:12</AcquisitionTime></TestDemographics>
{''.join(waves)}
</RestingECG>
"""
    path.write_bytes(xml.encode("iso-8859-1"))
    return path


# ----------------------------------------------------------------------------- CardioSoft (UK Biobank)

def write_cardiosoft(path: Path, digits: dict[str, np.ndarray], *, fs: int = 500, resolution_uv: float = 5.0,
                     resolution_units: str | None = "uVperLsb", pid: str = "1234567",
                     declared_count: int | None = None) -> Path:
    """``CardiologyXML`` with ``StripData`` (one comma-separated ``WaveformData lead=..`` per lead)
    and a ``RestingECGMeasurements/MedianSamples`` block that must not be mistaken for the strip."""
    n = len(next(iter(digits.values())))
    units = f' units="{resolution_units}"' if resolution_units else ""

    def waveforms(data, indent="      "):
        out = []
        for name, d in data.items():
            vals = ",".join(str(int(v)) for v in d)
            # CardioSoft breaks long lines; the reader must ignore whitespace inside the list.
            chunks = "\n".join(vals[i:i + 400] for i in range(0, len(vals), 400))
            out.append(f'{indent}<WaveformData lead="{name}">{chunks}</WaveformData>')
        return "\n".join(out)

    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<CardiologyXML>
  <ObservationType>RestECG</ObservationType>
  <PatientInfo><PID>{pid}</PID><Age units="years">61</Age><Gender>MALE</Gender></PatientInfo>
  <RestingECGMeasurements>
    <MedianSamples><NumberOfLeads>{len(digits)}</NumberOfLeads><SampleRate units="Hz">{fs}</SampleRate>
      <ChannelSampleCountTotal>600</ChannelSampleCountTotal><Resolution units="uVperLsb">{resolution_uv}</Resolution>
{waveforms({k: v[:600] for k, v in digits.items()})}
    </MedianSamples>
  </RestingECGMeasurements>
  <StripData>
    <NumberOfLeads>{len(digits)}</NumberOfLeads>
    <SampleRate units="Hz">{fs}</SampleRate>
    <ChannelSampleCountTotal>{declared_count if declared_count is not None else n}</ChannelSampleCountTotal>
    <Resolution{units}>{resolution_uv}</Resolution>
{waveforms(digits)}
  </StripData>
</CardiologyXML>
"""
    path.write_text(xml, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- DICOM (PS3.3 A.34)

def write_dicom_ecg(path: Path, digits: dict[str, np.ndarray], *, fs: float = 500.0, sensitivity: float = 2.5,
                    units: str = "uV", baseline: float = 0.0, scheme: str = "MDC", bits: int = 16,
                    interpretation: str = "SS", patient_id: str = "PAT-7", label_rhythm: str = "RHYTHM",
                    padding: int | None = None) -> Path:
    """12-Lead ECG IOD with one ORIGINAL multiplex group; channel sources coded in the MDC scheme
    (``2:<n>``) or SCP-ECG (``5.6.3-9-<n>``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "ECG", patient_id, "Test^Patient"

    names = list(digits)
    n = len(digits[names[0]])
    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.MultiplexGroupLabel = label_rhythm
    group.NumberOfWaveformChannels = len(names)
    group.NumberOfWaveformSamples = n
    group.SamplingFrequency = fs
    group.WaveformBitsAllocated = bits
    group.WaveformSampleInterpretation = interpretation
    channels = []
    for name in names:
        ch = Dataset()
        src = Dataset()
        if scheme == "MDC":
            src.CodeValue, src.CodingSchemeDesignator = f"2:{MDC[name]}", "MDC"
        else:
            src.CodeValue, src.CodingSchemeDesignator = f"5.6.3-9-{MDC[name]}", "SCPECG"
        src.CodeMeaning = f"Lead {name}"
        ch.ChannelSourceSequence = Sequence([src])
        ch.ChannelSensitivity = sensitivity
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = units, "UCUM", units
        ch.ChannelSensitivityUnitsSequence = Sequence([unit])
        ch.ChannelSensitivityCorrectionFactor = 1
        ch.ChannelBaseline = baseline
        ch.WaveformBitsStored = bits
        channels.append(ch)
    group.ChannelDefinitionSequence = Sequence(channels)
    dtype = {(16, "SS"): "<i2", (16, "US"): "<u2", (8, "SB"): "i1", (8, "UB"): "u1"}.get((bits, interpretation), "<i2")
    multiplexed = np.stack([np.asarray(digits[k]) for k in names], axis=1).astype(dtype)  # [samples, channels]
    group.WaveformData = multiplexed.tobytes()
    if padding is not None:
        group.WaveformPaddingValue = np.array([padding], dtype=dtype).tobytes()
    ds.WaveformSequence = Sequence([group])
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- EDF

def write_edf(path: Path, signals_mv: dict[str, np.ndarray], *, fs: float = 500.0, unit: str = "uV",
              label_prefix: str = "ECG ", extra: dict[str, tuple[np.ndarray, float, str]] | None = None,
              patient_code: str = "MCH-0234567") -> Path:
    """EDF+ via edfio: one signal per lead labelled ``<prefix><lead>``; ``extra`` adds other signals
    ``label -> (data, fs, unit)``."""
    import edfio

    factor = {"uV": 1000.0, "mV": 1.0}.get(unit, 1.0)
    sigs = [edfio.EdfSignal(np.asarray(v) * factor, fs, label=f"{label_prefix}{k}", physical_dimension=unit,
                            physical_range=(-5.0 * factor, 5.0 * factor))
            for k, v in signals_mv.items()]
    for label, (data, rate, dim) in (extra or {}).items():
        sigs.append(edfio.EdfSignal(np.asarray(data), rate, label=label, physical_dimension=dim,
                                    physical_range=(-1000.0, 1000.0)))
    edf = edfio.Edf(sigs, patient=edfio.Patient(code=patient_code))
    edf.write(path)
    return path


# ----------------------------------------------------------------------------- SCP-ECG (EN 1064)

def _scp_crc(data: bytes) -> int:
    """CRC-CCITT, polynomial x^16 + x^12 + x^5 + 1, initial value 0xFFFF, bit by bit as EN 1064 describes it."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def scp_section(sid: int, body: bytes, *, reserved: bytes = b"\0" * 6, version: int = 20) -> bytes:
    """A section: CRC, id, length (header included), section and protocol version, 6 reserved bytes, body."""
    rest = struct.pack("<HIBB", sid, 16 + len(body), version, version) + reserved + body
    return struct.pack("<H", _scp_crc(rest)) + rest


def scp_huffman_default(values) -> bytes:
    """EN 1064's default Huffman table: 0 -> '0'; +-n (n = 1..8) -> n ones, a zero, a sign bit (1 = negative);
    other values fitting 8 bits -> nine ones, a zero and the byte; else ten ones and 16 bits (two's complement)."""
    bits = []
    for v in (int(x) for x in values):
        if v == 0:
            bits.append("0")
        elif abs(v) <= 8:
            bits.append("1" * abs(v) + "0" + ("1" if v < 0 else "0"))
        elif -128 <= v <= 127:
            bits.append("1" * 9 + "0" + format(v & 0xFF, "08b"))
        else:
            bits.append("1" * 10 + format(v & 0xFFFF, "016b"))
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return bytes(int(text[i:i + 8], 2) for i in range(0, len(text), 8))


def _scp_differences(x: np.ndarray, order: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    if order == 1:
        return np.concatenate((x[:1], np.diff(x)))
    if order == 2:
        return np.concatenate((x[:2], x[2:] - 2 * x[1:-1] + x[:-2]))
    return x


def _scp_coded(leads_values, *, avm_nv: int, interval_us: int, order: int, huffman: bool, bimodal: int = 0) -> bytes:
    chunks = [scp_huffman_default(_scp_differences(v, order)) if huffman
              else _scp_differences(v, order).astype("<i2").tobytes() for v in leads_values]
    return (struct.pack("<HHBB", avm_nv, interval_us, order, bimodal)
            + struct.pack(f"<{len(chunks)}H", *[len(c) for c in chunks]) + b"".join(chunks))


def write_scp(path: Path, digits: dict[str, np.ndarray], *, fs: float = 500.0, avm_nv: int = 5000,
              order: int = 2, huffman: bool = True, codes: dict[str, int] | None = None, patient_id: str = "SCP-42",
              reference: dict | None = None, huffman_tables: int = 19999, bimodal: int = 0) -> Path:
    """SCP-ECG record with sections 0, 1, 2 (default Huffman table, or absent with ``huffman=False``), 3, 6, and
    with ``reference`` (``beat``: {lead: values}, ``fiducial`` (1-based sample of the beat), ``qrs``: list of
    (type, start, fiducial, end) 1-based rhythm sample numbers) sections 4 and 5 with reference beat subtraction:
    ``digits`` are then the residuals."""
    names = list(digits)
    n = len(digits[names[0]])
    interval = int(round(1e6 / fs))
    sections = {1: struct.pack("<BH", 2, len(patient_id) + 1) + patient_id.encode() + b"\0"
                + struct.pack("<BHB", 8, 1, 1) + struct.pack("<BH", 255, 0)}
    if huffman:
        sections[2] = struct.pack("<H", huffman_tables) + (b"" if huffman_tables == 19999 else b"\0" * 10)
    flags = (1 if reference else 0) | 4 | (len(names) << 3)
    sections[3] = struct.pack("<BB", len(names), flags & 0xFF) + b"".join(
        struct.pack("<IIB", 1, n, (codes or {}).get(k, MDC.get(k, 0))) for k in names)
    if reference:
        beat = reference["beat"]
        length_ms = int(round(len(beat[names[0]]) / fs * 1000))
        qrs = reference["qrs"]
        sections[4] = (struct.pack("<HHH", length_ms, reference["fiducial"], len(qrs))
                       + b"".join(struct.pack("<HIII", *q) for q in qrs)
                       + b"".join(struct.pack("<II", q[1], q[3]) for q in qrs))
        sections[5] = _scp_coded([beat[k] for k in names], avm_nv=avm_nv, interval_us=interval, order=order,
                                 huffman=huffman)
    sections[6] = _scp_coded([digits[k] for k in names], avm_nv=avm_nv, interval_us=interval, order=order,
                             huffman=huffman, bimodal=bimodal)
    ids = list(range(12))
    pointer_len = 16 + 10 * len(ids)
    offset = 6 + pointer_len
    pointers, blobs = [], []
    for sid in ids:
        if sid == 0:
            pointers.append(struct.pack("<HII", 0, pointer_len, 7))
        elif sid in sections:
            blob = scp_section(sid, sections[sid])
            pointers.append(struct.pack("<HII", sid, len(blob), offset + 1))
            blobs.append(blob)
            offset += len(blob)
        else:
            pointers.append(struct.pack("<HII", sid, 0, 0))
    body = scp_section(0, b"".join(pointers), reserved=b"SCPECG") + b"".join(blobs)
    rest = struct.pack("<I", 2 + 4 + len(body)) + body
    path.write_bytes(struct.pack("<H", _scp_crc(rest)) + rest)
    return path
