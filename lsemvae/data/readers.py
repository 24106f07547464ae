"""Readers: ECG files on disk -> :class:`ECGRecord`. Nothing downstream sees a file format.

WFDB (``.hea`` + ``.dat`` or ``.mat``) is built in. Other formats (DICOM, HL7 aECG, Philips XML,
SCP-ECG, EDF...) plug in by appending a :class:`FormatReader` to :data:`FORMAT_READERS`;
:func:`read_record` asks each reader's ``sniff`` in turn, so detection is by content, never by caller
flags (:func:`scan_folder` sniffs a folder's files once and passes each record's format on).

Every failure is a :class:`RecordError` naming the file and carrying a short ``reason`` (counted
in batch summaries): a bad record is skipped by batch jobs, never a crash.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from lsemvae.data.record import ECGRecord
from lsemvae.errors import LSEMVAEError, RecordError
from lsemvae.leads import canonical_leads

# wfdb calls pandas with an argument pandas 3 deprecates, on import: a warning for wfdb's authors, which every
# site console and ClientApp printed to hospital operators as if it were theirs.
warnings.filterwarnings("ignore", message="The inplace keyword", module=r"wfdb\.")

# Plausible ECG sampling rates. Below 50 Hz the QRS complex is not resolved; above 20 kHz the
# value is almost certainly a header error (e.g. a counter frequency in the fs field).
MIN_FS_HZ = 50.0
MAX_FS_HZ = 20_000.0

# Physical units accepted for ECG channels and their factor to millivolts.
UNIT_TO_MV: dict[str, float] = {
    "mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
    "millivolt": 1.0, "millivolts": 1.0, "v": 1e3, "volt": 1e3, "volts": 1e3, "nv": 1e-6,
}


class FormatReader(NamedTuple):
    """One file format: ``sniff(path) -> bool`` (cheap, by content or extension) and ``read(path)``."""

    name: str
    sniff: Callable[[Path], bool]
    read: Callable[[Path], ECGRecord]


def _as_reader(entry: FormatReader | tuple) -> FormatReader:
    # Other helpers may register plain (name, sniff, read) tuples, as the contract allows.
    return entry if isinstance(entry, FormatReader) else FormatReader(*entry)


# ---------------------------------------------------------------------------------------------
# WFDB
# ---------------------------------------------------------------------------------------------

_WFDB_SIGNAL_SUFFIXES = (".dat", ".mat")


def _wfdb_header_path(path: Path) -> Path | None:
    """The ``.hea`` for ``path`` (a header, its signal file, or the extension-less record name)."""
    if path.suffix.lower() == ".hea":
        return path
    if path.suffix.lower() in _WFDB_SIGNAL_SUFFIXES or path.suffix == "":
        candidate = path.with_suffix(".hea") if path.suffix else path.parent / (path.name + ".hea")
        if candidate.is_file():
            return candidate
    return None


def sniff_wfdb(path: Path) -> bool:
    """A ``.hea`` file (or a file/record name with a sibling ``.hea``)."""
    return _wfdb_header_path(Path(path)) is not None


def _decode_header(hea: Path) -> list[str]:
    try:
        raw = hea.read_bytes()
    except OSError as err:
        raise RecordError(hea, f"cannot read header: {err.strerror}", reason="unreadable") from None
    if not raw.strip():
        raise RecordError(hea, "header file is empty: re-export the record", reason="empty-file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(
            hea, f"header is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "re-save the header as UTF-8", reason="header-encoding",
        ) from None
    if "\x00" in text:
        raise RecordError(hea, "header contains NUL bytes: it is binary or corrupt", reason="corrupt-header")
    return text.splitlines()


def _header_fields(hea: Path, lines: list[str]) -> tuple[list[str], list[list[str]], list[str]]:
    """Split a header into (record-line tokens, signal-line tokens, comment lines) and check the
    fields wfdb would silently default (missing fs -> 250 Hz, missing units -> mV)."""
    content = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    comments = [ln.strip().lstrip("#").strip() for ln in lines if ln.lstrip().startswith("#")]
    if not content:
        raise RecordError(hea, "header has no record line (only comments or blank lines)", reason="corrupt-header")
    record = content[0].split()
    if "/" in record[0]:
        raise RecordError(hea, "multi-segment WFDB records are not supported: export as one segment",
                          reason="unsupported")
    if len(record) < 2 or not record[1].isdigit() or int(record[1]) < 1:
        raise RecordError(hea, f"record line {content[0]!r} has no valid signal count", reason="corrupt-header")
    if len(record) < 3:
        raise RecordError(hea, "sampling frequency missing from the record line (WFDB would assume 250 Hz); "
                          "add it after the signal count", reason="fs")
    try:  # "fs[/counter_freq[(base_counter)]]"; wfdb silently assumes 250 Hz for a field it cannot parse
        float(re.split(r"[/(]", record[2], maxsplit=1)[0])
    except ValueError:
        raise RecordError(hea, f"sampling frequency {record[2]!r} on the record line is not a number",
                          reason="fs") from None
    if len(record) > 3 and not record[3].isdigit():
        raise RecordError(hea, f"number of samples {record[3]!r} on the record line is not a whole number",
                          reason="corrupt-header")
    n_sig = int(record[1])
    signals = [ln.split() for ln in content[1:1 + n_sig]]
    if len(signals) != n_sig:
        raise RecordError(hea, f"record line declares {n_sig} signals but the header has {len(signals)} "
                          "signal lines: header truncated or corrupt", reason="corrupt-header")
    return record, signals, comments


def _units_factor(hea: Path, signals: list[list[str]]) -> tuple[np.ndarray, list[str]]:
    """mV factor per channel from the gain field ``gain(baseline)/units``, and the QC notes.

    A gain without units (``2000``, PTB Diagnostic and MIT-BIH style) means millivolts by the WFDB
    convention, as ``wfdb`` reads it: accepted, with a note. A missing gain or an unknown unit is refused.
    """
    factors, unitless = [], []
    for k, tokens in enumerate(signals):
        lead = tokens[-1] if len(tokens) >= 9 else f"channel {k}"
        gain = tokens[2] if len(tokens) >= 3 else ""
        if not gain:
            raise RecordError(hea, f"{lead}: no gain field (ADC units per physical unit): the voltage scale is "
                              "unknown (WFDB would assume 200/mV); add it, e.g. 1000(0)/mV", reason="units")
        if "/" not in gain:
            unitless.append(lead)
            factors.append(1.0)
            continue
        unit = gain.split("/", 1)[1].strip().lower()
        if unit not in UNIT_TO_MV:
            raise RecordError(hea, f"{lead}: unknown physical unit {unit!r}; ECG channels must be in "
                              "mV, uV or V", reason="units")
        factors.append(UNIT_TO_MV[unit])
    notes = [f"units-assumed: no units in the gain field of {', '.join(unitless)}: millivolts assumed "
             "(the WFDB default)"] if unitless else []
    return np.asarray(factors, dtype=np.float64), notes


_FMT = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")


def _expected_bytes(hea: Path, record: list[str], signals: list[list[str]]) -> tuple[str, float]:
    """(signal file name, bytes it must hold for the header's sample count): catches truncated files
    before decoding, and a corrupt sample count before a huge read."""
    from wfdb.io._signal import BYTES_PER_SAMPLE

    names = {t[0] for t in signals}
    if len(names) != 1:
        raise RecordError(hea, "signals spread over several files are not supported", reason="unsupported")
    name = next(iter(names))
    inside = (hea.parent / name).resolve().parent == hea.parent.resolve()
    if "/" in name or "\\" in name or name in (".", "..") or not inside:
        raise RecordError(hea, f"signal file name {name!r} is not a plain file name in the header's folder: "
                          "only files next to the header are read", reason="corrupt-header")
    sig_len = int(record[3]) if len(record) > 3 and record[3].isdigit() else 0
    need = 0.0
    offsets = set()
    for tokens in signals:
        m = _FMT.match(tokens[1]) if len(tokens) > 1 else None
        if m is None:
            raise RecordError(hea, f"invalid storage format field {tokens[1:2]!r} in signal line {' '.join(tokens)!r}",
                              reason="corrupt-header")
        fmt, spf, _skew, offset = m.groups()
        offsets.add(int(offset or 0))
        need += BYTES_PER_SAMPLE.get(fmt, 0) * int(spf or 1) * sig_len
    return name, need + max(offsets)


def _read_mat_signal(hea: Path, rec) -> np.ndarray:
    """Digital samples ``[T, n_sig]`` from a MATLAB ``.mat`` signal file (PhysioNet Challenge layout)."""
    from scipy.io import loadmat

    mat_path = hea.parent / rec.file_name[0]
    try:
        content = loadmat(mat_path)
    except Exception as err:  # scipy raises several types for corrupt files
        raise RecordError(mat_path, f"cannot read MATLAB signal file: {err}", reason="corrupt-signal") from None
    arrays = [v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray)
              and v.ndim == 2 and np.issubdtype(v.dtype, np.number)]
    val = content.get("val", arrays[0] if len(arrays) == 1 else None)
    if val is None:
        raise RecordError(mat_path, "no signal matrix: expected one 2-D numeric variable (usually 'val')",
                          reason="corrupt-signal")
    val = np.asarray(val)
    if val.shape[0] != rec.n_sig and val.shape[1] == rec.n_sig:
        val = val.T
    if val.shape[0] != rec.n_sig:
        raise RecordError(mat_path, f"signal matrix shape {val.shape} does not match {rec.n_sig} signals "
                          "in the header", reason="corrupt-signal")
    return val.T


_GAIN = re.compile(r"(?P<gain>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\((?P<baseline>[-+]?\d+)\))?(?:/.+)?")
_FORMAT16 = re.compile(r"16(?:\+(?P<offset>\d+))?")


@dataclass(frozen=True)
class _Format16:
    """The fields of a wfdb ``Record`` that :func:`read_wfdb` uses, for the fast path."""

    fs: float
    sig_name: list
    adc_gain: list
    baseline: list
    fmt: list
    sig_len: int
    checksum: list
    d_signal: np.ndarray


def _read_format16(record: list[str], signals: list[list[str]], sig_file: Path) -> _Format16 | None:
    """Fast path for the dominant layout (one file, 16-bit little-endian interleaved samples, no
    skew or multi-sample frames): wfdb's header parser costs ~5 ms per record, this ~0.2 ms.
    Fields follow the WFDB spec (baseline defaults to ADC zero). Returns None for anything else,
    which wfdb then reads; ``test_fast_path_matches_wfdb`` pins equality on the real records.
    """
    matches = [_FORMAT16.fullmatch(t[1]) for t in signals]
    if not all(matches) or len({m["offset"] for m in matches}) != 1:
        return None
    if len(record) < 4 or not record[3].isdigit() or int(record[3]) == 0:
        return None
    try:
        fs = float(re.split(r"[/(]", record[2], maxsplit=1)[0])
        gains, baselines, checksums, names = [], [], [], []
        for t in signals:
            m = _GAIN.fullmatch(t[2]) if len(t) > 2 else None
            if m is None:
                return None
            adc_zero = int(t[4]) if len(t) > 4 else 0
            gains.append(float(m["gain"]))
            baselines.append(int(m["baseline"]) if m["baseline"] is not None else adc_zero)
            checksums.append(int(t[6]) if len(t) > 6 else None)
            names.append(" ".join(t[8:]) if len(t) > 8 else None)
    except ValueError:
        return None
    n_sig, sig_len = len(signals), int(record[3])
    data = np.fromfile(sig_file, dtype="<i2", count=n_sig * sig_len, offset=int(matches[0]["offset"] or 0))
    if data.size != n_sig * sig_len:
        return None
    return _Format16(fs, names, gains, baselines, ["16"] * n_sig, sig_len,
                     checksums if None not in checksums else None, data.reshape(sig_len, n_sig).astype(np.int64))


def _checksums_ok(digital: np.ndarray, rec) -> list[int]:
    """Channels whose WFDB checksum (16-bit sum of samples) disagrees with the header."""
    if rec.checksum is None:
        return []
    bad = []
    total = np.nansum(digital, axis=0).astype(np.int64)
    for k, (got, want) in enumerate(zip(total, rec.checksum)):
        if want is not None and (int(got) - int(want)) % 65536 != 0:
            bad.append(k)
    return bad


def read_wfdb(path: str | Path) -> ECGRecord:
    """Read a WFDB record (``.hea`` with ``.dat`` or ``.mat``) as physical millivolts.

    Gains and baselines are applied (``(digital - baseline) / gain``), units converted to mV,
    WFDB "invalid sample" codes become NaN (preprocessing decides what to do with them) and lead
    names are canonicalised from the header (never by position). Header comments of the form
    ``key: value`` (``#Age: 51``, ``#<sex>: F``) land in ``meta``.
    """
    hea = _wfdb_header_path(Path(path))
    if hea is None:
        raise RecordError(path, "no WFDB header (.hea) for this path", reason="missing-file")
    record_tokens, signals, comments = _header_fields(hea, _decode_header(hea))
    factors, notes = _units_factor(hea, signals)
    sig_file = _signal_file(hea, record_tokens, signals)
    # The .mat layout without byte offset is not decodable by wfdb: header only, samples via scipy.
    from_mat = sig_file.suffix.lower() == ".mat" and not any("+" in t[1] for t in signals)
    rec = _wfdb_record(hea, record_tokens, signals, sig_file, header_only=from_mat)
    leads = _checked_leads(hea, rec, record_tokens)
    digital = _read_mat_signal(hea, rec).astype(np.float64) if from_mat else np.asarray(rec.d_signal, dtype=np.float64)
    _check_samples(sig_file, digital, rec, leads, checksums=not from_mat)
    physical = (digital - np.asarray(rec.baseline, dtype=np.float64)) / np.asarray(rec.adc_gain, dtype=np.float64) * factors
    if np.isnan(physical).all():
        raise RecordError(sig_file, "every sample is missing (NaN)", reason="nan-share")
    meta = _comment_meta(comments)
    return ECGRecord(
        signal=physical.T.astype(np.float32), fs=float(rec.fs), leads=leads, record_id=hea.stem,
        patient_id=_patient_id(meta) or hea.stem, source=str(hea), meta=meta, notes=tuple(notes),
    )


def _signal_file(hea: Path, record: list[str], signals: list[list[str]]) -> Path:
    """The signal file the header names, checked against the size limits and the header's sample count."""
    file_name, need = _expected_bytes(hea, record, signals)
    if len(record) > 3:
        limits.check_samples(int(record[3]), record=hea, what="the header")
    limits.check_bytes(int(need), record=hea, what=f"signal data the header declares ({file_name})")
    sig_file = hea.parent / file_name
    if not sig_file.is_file():
        raise RecordError(hea, f"signal file {file_name} not found next to the header", reason="missing-file")
    limits.check_file(sig_file, record=hea)
    size = sig_file.stat().st_size
    if size == 0:
        raise RecordError(sig_file, "signal file is empty", reason="empty-file")
    if size < need:
        raise RecordError(sig_file, f"signal file truncated: {size} bytes, header needs {int(need)} "
                          f"({record[3]} samples x {len(signals)} signals)", reason="truncated-signal")
    return sig_file


def _wfdb_record(hea: Path, record: list[str], signals: list[list[str]], sig_file: Path, *, header_only: bool):
    """The header's fields and digital samples: the 16-bit fast path, else wfdb (only its header parser
    when ``header_only``)."""
    import wfdb

    rec = None if header_only else _read_format16(record, signals, sig_file)
    if rec is not None:
        return rec
    base = str(hea.with_suffix(""))
    try:
        return wfdb.rdheader(base) if header_only else wfdb.rdrecord(base, physical=False, return_res=64)
    except Exception as err:  # wfdb raises ValueError/HeaderSyntaxError/IndexError... for bad files
        raise RecordError(hea, f"invalid WFDB record: {type(err).__name__}: {err}", reason="corrupt") from None


def _checked_leads(hea: Path, rec, record: list[str]) -> tuple[str, ...]:
    """Canonical lead names, after checking the sampling rate, the lead names and the gains."""
    if rec.fs is None or not np.isfinite(rec.fs) or not MIN_FS_HZ <= float(rec.fs) <= MAX_FS_HZ:
        raise RecordError(hea, f"sampling frequency {record[2]!r} is outside {MIN_FS_HZ:g}-{MAX_FS_HZ:g} "
                          "Hz: fix the record line", reason="fs")
    if any(not name or not str(name).strip() for name in (rec.sig_name or [None])):
        raise RecordError(hea, "a signal line has no lead name (description field): cannot identify leads",
                          reason="missing-lead")
    leads = canonical_leads(rec.sig_name, record=str(hea))
    if any(g == 0 for g in rec.adc_gain):
        raise RecordError(hea, "ADC gain 0 (uncalibrated signal): cannot convert to mV", reason="units")
    return leads


def _check_samples(sig_file: Path, digital: np.ndarray, rec, leads: Sequence[str], *, checksums: bool) -> None:
    """Refuse empty, short or infinite samples; with ``checksums`` (a WFDB signal file) also a checksum
    mismatch, and mark WFDB "invalid sample" codes as NaN in place."""
    if digital.ndim != 2 or digital.shape[0] == 0:
        raise RecordError(sig_file, "signal file holds no samples", reason="empty-file")
    if rec.sig_len and digital.shape[0] < rec.sig_len:
        raise RecordError(sig_file, f"signal truncated: {digital.shape[0]} of {rec.sig_len} samples",
                          reason="truncated-signal")
    if checksums:
        from wfdb.io._signal import INVALID_SAMPLE_VALUE

        bad = _checksums_ok(digital, rec)
        if bad:
            names = ", ".join(leads[k] for k in bad)
            raise RecordError(sig_file, f"checksum mismatch for {names}: the signal file is corrupt or does not "
                              "belong to this header", reason="checksum")
        for k, f in enumerate(rec.fmt):
            code = INVALID_SAMPLE_VALUE.get(str(f))
            if code is not None:
                digital[digital[:, k] == code, k] = np.nan
    if np.isinf(digital).any():
        raise RecordError(sig_file, "signal contains infinite values", reason="non-finite")


_COMMENT_KV = re.compile(r"^<?([A-Za-z][\w \-]*?)>?\s*:\s*(.*)$")


def _patient_id(meta: dict) -> str | None:
    """The patient from a ``# Patient ID: ...`` / ``# patient_id: ...`` / ``# PatientID: ...`` comment
    (CODE-15% headers, and records ``lsemvae data convert`` wrote); without it, splits by patient
    would treat every record as its own patient."""
    for key, value in meta.items():
        if isinstance(value, str) and re.sub(r"[\s_\-]", "", key) == "patientid":
            return value
    return None


def header_patient_id(path: str | Path) -> str | None:
    """The patient id a WFDB header states in its comments, read without touching the signal; None if none."""
    hea = _wfdb_header_path(Path(path))
    try:
        lines = _decode_header(hea) if hea is not None else []
    except RecordError:
        return None
    return _patient_id(_comment_meta([ln.strip().lstrip("#").strip() for ln in lines if ln.lstrip().startswith("#")]))


def _comment_meta(comments: Iterable[str]) -> dict:
    """``#Age: 51`` / ``#<sex>: F`` comment lines -> ``{"age": "51", "sex": "F"}`` plus raw comments."""
    meta: dict = {}
    for line in comments:
        m = _COMMENT_KV.match(line)
        if m and m.group(2).strip():
            meta.setdefault(m.group(1).strip().lower(), m.group(2).strip())
    if comments:
        meta["header_comments"] = list(comments)
    return meta


# ---------------------------------------------------------------------------------------------
# Registry and public entry points
# ---------------------------------------------------------------------------------------------

#: Registered formats, asked in order. Append ``FormatReader(name, sniff, read)``.
FORMAT_READERS: list[FormatReader | tuple] = [FormatReader("wfdb", sniff_wfdb, read_wfdb)]

# Hospital formats (DICOM, HL7 aECG, GE MUSE, CardioSoft, Philips, SCP-ECG, EDF), sniffed by content:
# lsemvae/data/formats. Their optional libraries (pydicom, edfio) are imported only when a file needs them.
from lsemvae.data.formats import FORMATS as _HOSPITAL_FORMATS, limits  # noqa: E402
from lsemvae.data.formats.calibration import drop_calibration  # noqa: E402

FORMAT_READERS += [FormatReader(*f) for f in _HOSPITAL_FORMATS]


def _readers() -> list[FormatReader]:
    return [_as_reader(e) for e in FORMAT_READERS]


def sniff_format(path: str | Path) -> str | None:
    """Name of the registered format that claims ``path`` by its content, or None."""
    path = Path(path)
    for reader in _readers():
        try:
            if reader.sniff(path):
                return reader.name
        except OSError:
            continue
    return None


def read_record(path: str | Path, format: str | None = None) -> ECGRecord:
    """Read one ECG record of any registered format, detected from the file itself.

    ``format`` (a registered name, e.g. from :func:`scan_folder`) skips the detection. Files over the
    size limits of :mod:`lsemvae.data.formats.limits` are refused before parsing; a calibration pulse
    at either end is dropped and noted (:mod:`lsemvae.data.formats.calibration`).
    Raises :class:`RecordError` (with ``record`` = the path and a ``reason``) for anything unusable.
    """
    path = Path(path)
    hea = _wfdb_header_path(path)
    if not path.exists() and (hea is None or not hea.is_file()):
        raise RecordError(path, "file not found", reason="missing-file")
    name = format or sniff_format(path)
    if name is None:
        names = ", ".join(r.name for r in _readers())
        raise RecordError(path, f"not a recognised ECG record (formats known: {names})", reason="unknown-format")
    reader = next((r for r in _readers() if r.name == name), None)
    if reader is None:
        raise LSEMVAEError(f"unknown record format {name!r}")
    if path.is_file():
        limits.check_file(path)
    try:
        record = reader.read(path)
    except LSEMVAEError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, MemoryError) as err:
        # A reader bug or an exotic corruption must still name the file, not crash a batch.
        raise RecordError(path, f"{reader.name} reader failed: {type(err).__name__}: {err}",
                          reason="corrupt") from None
    return drop_calibration(record)


class FolderScan(NamedTuple):
    """What :func:`scan_folder` found: ``records`` as ``(path, format)`` and every other file as
    ``(path, reason)`` in ``passed_over`` (reasons in :data:`PASSED_OVER`)."""

    records: list[tuple[Path, str]]
    passed_over: list[tuple[Path, str]]


#: Why a file in a folder is not a record.
PASSED_OVER = {
    "unknown-format": "no ECG reader recognises its content",
    "empty-file": "the file is empty",
    "unreadable": "the file cannot be opened",
    "signal-without-header": "a WFDB signal file (.dat/.mat) whose .hea header is missing",
    "hidden": "a hidden file or folder (name starts with '.'), not searched",
}


def scan_folder(folder: str | Path) -> FolderScan:
    """Every file under ``folder``, each sniffed once: records (one per WFDB record, its ``.hea``) and
    files passed over, each with its reason. WFDB companions (signal, annotation files next to a
    header of the same name) belong to their record."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LSEMVAEError(f"{folder}: not a folder of records")
    records: list[tuple[Path, str]] = []
    passed: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        passed += [(here / d, "hidden") for d in sorted(dirnames) if d.startswith(".")]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        headers = {Path(n).stem for n in filenames if n.lower().endswith(".hea")}
        for name in sorted(filenames):
            path = here / name
            if name.startswith("."):
                passed.append((path, "hidden"))
            elif path.suffix.lower() != ".hea" and path.stem in headers:
                continue  # signal/annotation file of a WFDB record listed by its header
            elif (fmt := sniff_format(path)) is not None:
                records.append((path, fmt))
            else:
                passed.append((path, _why_not_a_record(path)))
    return FolderScan(records, passed)


def _why_not_a_record(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "unreadable"
    if not os.access(path, os.R_OK):
        return "unreadable"
    if size == 0:
        return "empty-file"
    if path.suffix.lower() in _WFDB_SIGNAL_SUFFIXES:
        return "signal-without-header"
    return "unknown-format"


def find_records(folder: str | Path) -> list[Path]:
    """Every record in a folder tree, one path per record (the ``.hea`` for WFDB), sorted.

    Hidden files/folders are ignored. Signal files that belong to a WFDB header are not listed
    separately. :func:`scan_folder` also says each record's format and why other files were passed over.
    """
    return [path for path, _fmt in scan_folder(folder).records]


def record_files(path: str | Path) -> list[Path]:
    """The files a record is made of (header + signal for WFDB), for cache keys and checks."""
    path = Path(path)
    hea = _wfdb_header_path(path)
    if hea is None:
        return [path]
    return [hea] + [p for p in (hea.with_suffix(s) for s in _WFDB_SIGNAL_SUFFIXES) if p.is_file()]
