"""Sources: where records are and what is known about them, as lists of :class:`RecordRef`.

A ref is cheap (path + metadata); ``ref.load()`` reads the signal. Indexes: PTB-XL
(``ptbxl_database.csv``), LUDB (``ludb.csv``), a hospital site manifest (folder of records +
labels CSV, validated row by row) and any folder of records (unlabelled).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from lsemvae.data.readers import FolderScan, header_patient_id, read_record, scan_folder
from lsemvae.data.record import ECGRecord
from lsemvae.data.tasks import TASKS, parse_binary
from lsemvae.errors import ConfigError, LSEMVAEError

log = logging.getLogger(__name__)


class ManifestError(LSEMVAEError, ValueError):
    """A labels CSV or dataset index is unusable. The message names the file, row and column."""


@dataclass(frozen=True)
class RecordRef:
    """A record not yet read: ids, path, and metadata (labels, fold, site...).

    ``meta["source"]`` names the dataset or site. ``load()`` returns the :class:`ECGRecord` with
    these ids and the metadata merged over whatever the file itself carries, its signal multiplied
    by ``gain_correction`` (a source whose export has a wrong gain, see :func:`with_gain_correction`).
    ``format``, when the index already sniffed the file, spares reading it to detect its format again.
    """

    record_id: str
    patient_id: str
    path: Path
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    format: str | None = field(default=None, compare=False)
    gain_correction: float = 1.0

    def load(self) -> ECGRecord:
        rec = read_record(self.path, format=self.format)
        meta = {**rec.meta, **self.meta}
        signal = rec.signal
        if self.gain_correction != 1.0:
            signal = signal * np.float32(self.gain_correction)
            meta["gain_correction"] = self.gain_correction
        return dataclasses.replace(rec, signal=signal, record_id=self.record_id, patient_id=self.patient_id, meta=meta)


def with_gain_correction(refs: Sequence[RecordRef], factor: float) -> list[RecordRef]:
    """``refs`` whose signals are multiplied by ``factor`` when read: the per-source fix for an export with a
    wrong gain (a header gain 5x too high reads every signal 5x too small: ``factor`` 5). QC notes it on
    each record; the cache key includes it."""
    if not (math.isfinite(factor) and factor > 0):
        raise ConfigError(f"gain correction must be a positive number, got {factor!r}")
    return [dataclasses.replace(r, gain_correction=float(factor)) for r in refs]


def _require_file(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise ManifestError(f"{path}: {what} not found. {fix}")
    return path


def _none_if_nan(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


# ---------------------------------------------------------------------------------------------
# PTB-XL
# ---------------------------------------------------------------------------------------------

_PTBXL_SEX = {0: "M", 1: "F"}  # PTB-XL codes sex 0 = male, 1 = female


def ptbxl_diagnostic_classes(root: str | Path) -> dict[str, str]:
    """``{scp_code: diagnostic_class}`` for the diagnostic statements in ``scp_statements.csv``."""
    import pandas as pd

    path = _require_file(Path(root) / "scp_statements.csv", "PTB-XL scp_statements.csv",
                         "It ships with PTB-XL: `lsemvae data download ptb-xl --dest DIR`.")
    table = pd.read_csv(path, index_col=0)
    if "diagnostic" not in table or "diagnostic_class" not in table:
        raise ManifestError(f"{path}: columns 'diagnostic' and 'diagnostic_class' missing "
                            f"(found {', '.join(map(str, table.columns))})")
    diag = table[table["diagnostic"] == 1]
    return {str(code): str(cls) for code, cls in diag["diagnostic_class"].items() if isinstance(cls, str)}


def ptbxl_index(root: str | Path, *, rate: int = 100) -> list[RecordRef]:
    """PTB-XL records whose WFDB files exist under ``root`` (the official layout).

    ``rate`` 100 (``filename_lr``) or 500 (``filename_hr``). ``record_id`` is ``"ptb-xl/<ecg_id>"``
    (5 digits), ``patient_id`` ``"ptb-xl/<patient_id>"``. Metadata rows without files on disk
    (a partial download) are left out and counted in the log.
    """
    import pandas as pd

    root = Path(root)
    if rate not in (100, 500):
        raise ConfigError(f"PTB-XL rate must be 100 or 500 Hz, got {rate!r}")
    csv_path = _require_file(root / "ptbxl_database.csv", "PTB-XL metadata ptbxl_database.csv",
                             "Give the PTB-XL folder itself (--root, --ptbxl): the one that holds ptbxl_database.csv.")
    table = pd.read_csv(csv_path)
    column = "filename_lr" if rate == 100 else "filename_hr"
    needed = {"ecg_id", "patient_id", "scp_codes", "strat_fold", column}
    missing = needed - set(table.columns)
    if missing:
        raise ManifestError(f"{csv_path}: columns {sorted(missing)} missing (found {', '.join(table.columns)})")
    classes = ptbxl_diagnostic_classes(root)
    refs: list[RecordRef] = []
    absent = 0
    for row_no, row in enumerate(table.itertuples(index=False), start=2):
        path = root / f"{getattr(row, column)}.hea"
        if not path.is_file():
            absent += 1
            continue
        try:
            codes = ast.literal_eval(row.scp_codes)
            if not isinstance(codes, dict):
                raise ValueError("not a dict")
        except (ValueError, SyntaxError) as err:
            raise ManifestError(f"{csv_path}: line {row_no}, column scp_codes: cannot parse {row.scp_codes!r} "
                                f"({err})") from None
        ecg_id = int(row.ecg_id)
        site = _none_if_nan(getattr(row, "site", None))
        age = _none_if_nan(getattr(row, "age", None))
        sex = _none_if_nan(getattr(row, "sex", None))
        meta = {
            "source": "ptb-xl",
            "ecg_id": ecg_id,
            "scp_codes": {str(k): float(v) for k, v in codes.items()},
            "diagnostic_classes": sorted({classes[c] for c in codes if c in classes}),
            "strat_fold": int(row.strat_fold),
            "site": None if site is None else int(site),
            "device": str(_none_if_nan(getattr(row, "device", None)) or ""),
            "age": None if age is None else float(age),
            "sex": None if sex is None else _PTBXL_SEX.get(int(sex)),
            "heart_axis": _none_if_nan(getattr(row, "heart_axis", None)),
            "validated_by_human": bool(getattr(row, "validated_by_human", False)),
        }
        refs.append(RecordRef(f"ptb-xl/{ecg_id:05d}", f"ptb-xl/{int(row.patient_id)}", path, meta))
    if absent:
        log.info("%s: %d metadata rows have no %d Hz files on disk (partial copy)", csv_path, absent, rate)
    if not refs:
        raise ManifestError(f"{root}: none of the {len(table)} PTB-XL records listed in ptbxl_database.csv has its "
                            f"{rate} Hz files ({column}.hea) on disk. Download them or choose the other rate.")
    return refs


# ---------------------------------------------------------------------------------------------
# LUDB
# ---------------------------------------------------------------------------------------------

#: LUDB diagnosis text (lower case) -> SCP-style finding code used by the tasks.
LUDB_FINDINGS: dict[str, str] = {
    "right ventricular hypertrophy": "RVH",
    "right atrial overload": "RAO/RAE",
    "right atrial hypertrophy": "RAO/RAE",
    "left atrial overload": "LAO/LAE",
    "left atrial hypertrophy": "LAO/LAE",
    "left ventricular hypertrophy": "LVH",
    "left ventricular overload": "LVO",
    "atrial fibrillation": "AFIB",
    "complete right bundle branch block": "CRBBB",
    "incomplete right bundle branch block": "IRBBB",
    "complete left bundle branch block": "CLBBB",
    "incomplete left bundle branch block": "ILBBB",
}
_LUDB_AXIS = {"right axis deviation": "RAD", "left axis deviation": "LAD", "normal": "MID"}
_LUDB_DIAGNOSIS_COLUMNS = (
    "Rhythms", "Electric axis of the heart", "Conduction abnormalities", "Extrasystolies", "Hypertrophies",
    "Cardiac pacing", "Ischemia", "Non-specific repolarization abnormalities", "Other states",
)


def _cell_lines(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [s.strip() for s in str(value).splitlines() if s.strip()]


def ludb_index(root: str | Path) -> list[RecordRef]:
    """LUDB records (``data/<n>.hea``) with diagnoses from ``ludb.csv`` (multi-line quoted cells).

    ``meta``: ``diagnoses`` (every statement), ``findings`` (codes the tasks use, see
    :data:`LUDB_FINDINGS`), ``axis`` (text) and ``heart_axis`` (RAD/LAD/MID or None), ``sex``,
    ``age`` (">89" is stored as 90), ``rhythm``.
    """
    import pandas as pd

    root = Path(root)
    csv_path = _require_file(root / "ludb.csv", "LUDB metadata ludb.csv", "Give the LUDB folder itself (--root, --ludb): the one that holds ludb.csv.")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = {"ID", "Sex", "Age", "Electric axis of the heart", "Hypertrophies"} - set(table.columns)
    if missing:
        raise ManifestError(f"{csv_path}: columns {sorted(missing)} missing (found {', '.join(table.columns)})")
    refs: list[RecordRef] = []
    for row in table.to_dict("records"):
        rid = row["ID"].strip()
        path = root / "data" / f"{rid}.hea"
        if not path.is_file():
            log.warning("%s: record %s listed but %s not found", csv_path, rid, path)
            continue
        diagnoses = [d for col in _LUDB_DIAGNOSIS_COLUMNS if col in row for d in _cell_lines(row[col])]
        axis_text = next((d.split(":", 1)[1].strip() for d in diagnoses
                          if d.lower().startswith("electric axis of the heart:")), None)
        age_text = row["Age"].strip()
        findings = sorted({code for d in diagnoses for text, code in LUDB_FINDINGS.items() if d.lower() == text})
        meta = {
            "source": "ludb",
            "diagnoses": diagnoses,
            "findings": findings,
            "axis": axis_text,
            "heart_axis": _LUDB_AXIS.get((axis_text or "").lower()),
            "sex": row["Sex"].strip() or None,
            "age": 90.0 if age_text == ">89" else (float(age_text) if age_text else None),
            "rhythm": "; ".join(_cell_lines(row.get("Rhythms"))) or None,
            "site": "ludb",
        }
        refs.append(RecordRef(f"ludb/{rid}", f"ludb/{rid}", path, meta))
    if not refs:
        raise ManifestError(f"{root}: no LUDB record files found under data/")
    return refs


# ---------------------------------------------------------------------------------------------
# Hospital site manifest
# ---------------------------------------------------------------------------------------------


class _ManifestRow(BaseModel):
    """One labels-CSV row: non-empty ids, binary labels (blank = unknown)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    record_id: str
    patient_id: str
    labels: dict[str, float]
    extra: dict[str, str]

    @field_validator("record_id", "patient_id")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v


def _record_key(path: Path, records_dir: Path) -> str:
    return path.relative_to(records_dir).with_suffix("").as_posix()


def manifest_index(
    records_dir: str | Path,
    labels_csv: str | Path,
    *,
    id_column: str = "record_id",
    patient_column: str = "patient_id",
    label_columns: Sequence[str] | None = None,
    site: str | None = None,
    strict: bool = True,
) -> list[RecordRef]:
    """A hospital's records (any registered format under ``records_dir``) joined to a labels CSV.

    The CSV needs ``id_column`` and ``patient_column``; ``label_columns`` (default: every other
    column) must hold 0/1 or blank (unknown); with an explicit list, other columns are kept in
    ``meta`` as text. Record ids match a file's path relative to ``records_dir`` without extension
    (``sub/rec001``) or, when unique, its name (``rec001``).

    ``site`` (default: the name of the folder holding the labels CSV) becomes ``meta["source"]`` and
    ``meta["site"]``. Errors name the file, line and column. Ids in the CSV without a record file are an error
    (``strict=False``: logged and dropped); records without a CSV row are logged and left out.
    """
    records_dir, labels_csv = Path(records_dir), Path(labels_csv)
    site = site or labels_csv.resolve().parent.name  # the site's folder, which holds its labels CSV
    rows = _read_labels_csv(labels_csv, id_column, patient_column, label_columns)

    if not records_dir.is_dir():
        raise ManifestError(f"{records_dir}: records folder not found")
    by_key: dict[str, Path] = {}
    by_name: dict[str, list[Path]] = {}
    formats = dict(scan_folder(records_dir).records)
    for path in formats:
        by_key[_record_key(path, records_dir)] = path
        by_name.setdefault(path.stem, []).append(path)

    refs: list[RecordRef] = []
    unknown: list[str] = []
    used: set[Path] = set()
    for line, row in rows:
        rid = Path(row.record_id).with_suffix("").as_posix() if Path(row.record_id).suffix.lower() in (
            ".hea", ".dat", ".mat") else row.record_id
        path = by_key.get(rid) or (by_name[rid][0] if len(by_name.get(rid, ())) == 1 else None)
        if path is None:
            unknown.append(f"{row.record_id} (line {line})")
            continue
        used.add(path)
        meta = {"source": site, "site": site, **row.extra, **row.labels, "label_columns": list(row.labels)}
        refs.append(RecordRef(row.record_id, row.patient_id, path, meta, format=formats[path]))

    if unknown:
        msg = (f"{labels_csv}: {len(unknown)} record id(s) in column {id_column!r} have no record file under "
               f"{records_dir}: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}. "
               "Check the ids (relative path without extension, or file name) or the records folder.")
        if strict:
            raise ManifestError(msg)
        log.warning(msg)
    unlabeled = sorted(_record_key(p, records_dir) for p in by_key.values() if p not in used)
    if unlabeled:
        log.warning("%s: %d record file(s) have no row in %s and are left out: %s%s", records_dir, len(unlabeled),
                    labels_csv, ", ".join(unlabeled[:10]), " ..." if len(unlabeled) > 10 else "")
    if not refs:
        raise ManifestError(f"{labels_csv}: no row matches a record under {records_dir}")
    return refs


_LINE = object()  # key under which _NumberedReader stores each row's line number


class _NumberedReader(csv.DictReader):
    """DictReader that remembers the line each row ends on (rows can span lines: quoted cells)."""

    def __next__(self) -> dict:
        row = super().__next__()
        row[_LINE] = self.line_num
        return row


def _is_binary(value: Any) -> bool:
    try:
        parse_binary(value)
        return True
    except ConfigError:
        return False


def _read_labels_csv(
    path: Path, id_column: str, patient_column: str, label_columns: Sequence[str] | None,
) -> list[tuple[int, _ManifestRow]]:
    """The rows of a labels CSV, each with the line it ends on; every problem of the file is reported at once."""
    reader = _NumberedReader(_csv_text(path).splitlines(keepends=True))
    header = _csv_header(path, reader, id_column, patient_column, label_columns)
    records = list(reader)
    labels = _label_columns(path, header, records, (id_column, patient_column), label_columns)
    extra_cols = [h for h in header if h not in (id_column, patient_column, *labels)]
    rows: list[tuple[int, _ManifestRow]] = []
    seen: dict[str, int] = {}
    errors: list[str] = []
    for cells in records:
        line = cells.pop(_LINE)
        row = _manifest_row(path, line, cells, (id_column, patient_column), labels, extra_cols, errors)
        if row is None:
            continue
        if row.record_id in seen:
            errors.append(f"{path}: line {line}, column {id_column!r}: record {row.record_id!r} already on line "
                          f"{seen[row.record_id]}")
            continue
        seen[row.record_id] = line
        rows.append((line, row))
    if errors:
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ManifestError(f"{len(errors)} problem(s) in {path}:\n" + "\n".join(errors[:20]) + more)
    if not rows:
        raise ManifestError(f"{path}: header only, no rows")
    return rows


def _csv_text(path: Path) -> str:
    if not path.is_file():
        raise ManifestError(f"{path}: labels CSV not found")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text (byte offset {err.start}); save the CSV as UTF-8") from None


def _csv_header(path: Path, reader: _NumberedReader, id_column: str, patient_column: str,
                label_columns: Sequence[str] | None) -> list[str]:
    """The stripped header (set on ``reader``): present, without duplicates, holding the columns asked for."""
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise ManifestError(f"{path}: empty file, expected a header row with {id_column}, {patient_column}, labels")
    reader.fieldnames = header
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise ManifestError(f"{path}: duplicate column names {dupes}")
    missing = [c for c in (id_column, patient_column, *(label_columns or ())) if c not in header]
    if missing:
        raise ManifestError(f"{path}: column(s) {missing} missing; found columns: {', '.join(header)}")
    return header


def _label_columns(path: Path, header: list[str], records: list[dict], ids: tuple[str, str],
                   label_columns: Sequence[str] | None) -> list[str]:
    """``label_columns`` if given; else the columns named like a task (checked strictly) and the columns whose
    every cell is 0/1/blank (other columns are kept as text metadata: age, sex, notes...)."""
    if label_columns is not None:
        labels = list(label_columns)
    else:
        labels = [h for h in header if h not in ids and (h in TASKS or all(_is_binary(r.get(h)) for r in records))]
    if not labels:
        raise ManifestError(f"{path}: no label columns (found only {', '.join(header)}); label columns hold 0/1, "
                            "blank for unknown")
    return labels


def _manifest_row(path: Path, line: int, cells: dict, ids: tuple[str, str], labels: list[str], extra_cols: list[str],
                  errors: list[str]) -> _ManifestRow | None:
    """One row, or None with its problems appended to ``errors`` (file, line and column named)."""
    id_column, patient_column = ids
    if None in cells:
        errors.append(f"{path}: line {line}: more cells than header columns")
        return None
    parsed: dict[str, float] = {}
    for col in labels:
        try:
            parsed[col] = parse_binary(cells.get(col), where=f"{path}: line {line}, column {col!r}")
        except ConfigError as err:
            errors.append(str(err))
    try:
        return _ManifestRow(record_id=cells.get(id_column) or "", patient_id=cells.get(patient_column) or "",
                            labels=parsed, extra={c: (cells.get(c) or "").strip() for c in extra_cols})
    except ValidationError as err:
        for e in err.errors():
            col = id_column if e["loc"][0] == "record_id" else patient_column
            errors.append(f"{path}: line {line}, column {col!r}: {e['msg']}")
        return None


# ---------------------------------------------------------------------------------------------
# Any folder
# ---------------------------------------------------------------------------------------------


def folder_index(folder: str | Path, *, scan: FolderScan | None = None) -> list[RecordRef]:
    """Every record under ``folder`` (or in ``scan``, a :func:`scan_folder` of it), unlabelled.

    ``record_id`` is the relative path without extension. ``patient_id`` is the one a WFDB header
    states (``# Patient ID:``, ``# patient_id:``, as CODE-15% and ``lsemvae data convert`` write
    them); otherwise each record is its own patient (splits stay valid but cannot be patient-disjoint
    across a patient's several records).
    """
    folder = Path(folder)
    scan = scan or scan_folder(folder)
    if not scan.records:
        raise ManifestError(f"{folder}: no ECG records found (looked for WFDB .hea and registered formats; "
                            f"{len(scan.passed_over)} other file(s) passed over)")
    source = folder.resolve().name
    refs = []
    for path, fmt in scan.records:
        key = _record_key(path, folder)
        patient = (header_patient_id(path) if fmt == "wfdb" else None) or key
        refs.append(RecordRef(key, patient, path, {"source": source}, format=fmt))
    return refs


def require_labels(refs: Sequence[RecordRef], tasks: Mapping[str, Any]) -> None:
    """Refuse a task that no record has a label for, naming where it looked and the columns the records have."""
    from lsemvae.data.tasks import TASKS, label_sources

    for name, task in tasks.items():
        if all(np.isnan(task(r.meta)).all() for r in refs):
            columns = list(dict.fromkeys(c for r in refs for c in r.meta.get("label_columns", ())))
            have = f"the labels CSV has columns {', '.join(columns)}" if columns else "the records carry no label columns"
            fix = (f"name your columns like the task's classes or bind them in that order (--tasks {name}="
                   f"{'+'.join(f'<{c} column>' for c in task.classes)})" if name in TASKS and not task.columns
                   else "check the column names")
            raise ConfigError(f"task {name!r}: none of the {len(refs)} records has a label. It looks for "
                              f"{label_sources(task)}; {have}: {fix}, or leave the task out")


def label_counts(refs: Sequence[RecordRef], tasks: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``{task: {class: positives, "labelled": n}}`` over refs' metadata (no signal read)."""
    out: dict[str, dict[str, int]] = {}
    for name, task in tasks.items():
        y = np.stack([task(r.meta) for r in refs])
        labelled = ~np.isnan(y).all(axis=1)
        counts = {c: int(np.nansum(y[:, k])) for k, c in enumerate(task.classes)}
        counts["labelled"] = int(labelled.sum())
        out[name] = counts
    return out


# ---------------------------------------------------------------------------------------------
# One entry point: a dataset folder of a known layout -> its records
# ---------------------------------------------------------------------------------------------

#: Dataset layouts :func:`index` reads.
DATASET_KINDS = ("ptb-xl", "ludb", "manifest", "folder")
#: Names of a site folder's labels CSV (the ``manifest`` layout).
MANIFEST_NAMES = ("labels.csv", "manifest.csv")


def detect_kind(root: str | Path) -> str:
    """``ptb-xl`` / ``ludb`` / ``manifest`` / ``folder`` from what the folder holds."""
    root = Path(root)
    if (root / "ptbxl_database.csv").is_file():
        return "ptb-xl"
    if (root / "ludb.csv").is_file() and (root / "data").is_dir():
        return "ludb"
    if any((root / n).is_file() for n in MANIFEST_NAMES):
        return "manifest"
    return "folder"


def index(kind: str, root: str | Path, *, labels: str | Path | None = None, rate: int = 100) -> list[RecordRef]:
    """The records of the dataset folder ``root`` laid out as ``kind`` (:data:`DATASET_KINDS`;
    :func:`detect_kind` tells it from the folder).

    ``rate``: PTB-XL's 100 or 500 Hz files. ``labels``: a manifest's labels CSV (default: one of
    :data:`MANIFEST_NAMES` in ``root``); its records are in ``root/records`` if that folder exists, else in ``root``.
    """
    root = Path(root)
    if kind == "ptb-xl":
        return ptbxl_index(root, rate=rate)
    if kind == "ludb":
        return ludb_index(root)
    if kind == "manifest":
        labels = labels or next((root / n for n in MANIFEST_NAMES if (root / n).is_file()), None)
        if labels is None:
            raise ConfigError(f"{root}: no labels CSV ({' or '.join(MANIFEST_NAMES)}); pass --labels")
        return manifest_index(root / "records" if (root / "records").is_dir() else root, labels)
    if kind == "folder":
        return folder_index(root)
    raise ConfigError(f"unknown dataset layout {kind!r}: one of {', '.join(DATASET_KINDS)}")
