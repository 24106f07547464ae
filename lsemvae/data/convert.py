"""``lsemvae data convert SRC --to wfdb DEST``: a folder of hospital ECG files → WFDB records.

Every record :func:`lsemvae.data.readers.find_records` finds (any registered format, detected by
content) is read with :func:`read_record` and written with ``wfdb.wrsamp`` in mV, 16-bit, with lead
names from the source file. The folder layout under SRC is kept; ``patient_id``, source file and
format go into header comments (``# patient_id: ...``). A file that cannot be read is skipped and
counted by reason; one bad file never stops the batch.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsemvae.data.readers import find_records, read_record
from lsemvae.errors import LSEMVAEError

TARGETS = ("wfdb",)


@dataclass
class ConvertSummary:
    """What a conversion did: ``converted`` dicts with ``source``, ``output`` (written header) and
    ``format``; ``skipped`` dicts with ``record``, ``reason``, ``message``; ``ignored`` files (relative
    to SRC) that no reader recognised."""

    converted: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped).most_common())

    @property
    def converted_by_format(self) -> dict[str, int]:
        return dict(Counter(c["format"] for c in self.converted).most_common())

    def report(self, examples: int = 3) -> str:
        lines = [f"converted {len(self.converted)} record(s)"
                 + (f" ({', '.join(f'{k}: {v}' for k, v in self.converted_by_format.items())})" if self.converted else "")]
        lines.append(f"skipped {len(self.skipped)} record(s)")
        for reason, count in self.skipped_by_reason.items():
            lines.append(f"  {reason}: {count}")
            for item in [s for s in self.skipped if s["reason"] == reason][:examples]:
                lines.append(f"    {item['message']}")
        if self.ignored:
            shown = ", ".join(self.ignored[:examples]) + (" ..." if len(self.ignored) > examples else "")
            lines.append(f"ignored {len(self.ignored)} file(s) not recognised as ECG records: {shown}")
        return "\n".join(lines)


def _record_name(stem: str) -> str:
    # WFDB record names allow letters, digits, '_' and '-' only.
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "record"


def _ignored_files(src: Path, records: list[Path]) -> list[str]:
    """Files under ``src`` that belong to no found record (WFDB companions count as belonging)."""
    claimed = {(p.parent, p.stem) for p in records if p.suffix.lower() == ".hea"}
    found = set(records)
    out = []
    for path in sorted(src.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(src).parts):
            continue
        if path not in found and (path.parent, path.stem) not in claimed:
            out.append(str(path.relative_to(src)))
    return out


def convert_folder(src: str | Path, dest: str | Path, to: str = "wfdb", *, progress: bool = True) -> ConvertSummary:
    """Convert every ECG record under ``src`` to ``to`` format under ``dest``; returns the summary."""
    import wfdb
    from tqdm import tqdm

    if to not in TARGETS:
        raise LSEMVAEError(f"unknown target format {to!r}; supported: {', '.join(TARGETS)}")
    src, dest = Path(src), Path(dest)
    records = find_records(src)
    summary = ConvertSummary(ignored=_ignored_files(src, records))
    used: set[Path] = set()
    for path in tqdm(records, desc=f"convert to {to}", unit="record", disable=not progress):
        try:
            rec = read_record(path)
        except LSEMVAEError as err:
            summary.skipped.append({"record": str(path), "reason": getattr(err, "reason", "invalid"),
                                    "message": str(err)})
            continue
        out_dir = dest / path.parent.relative_to(src)
        name = base = _record_name(path.stem)
        k = 1
        while out_dir / name in used:  # e.g. x.dcm and x.xml side by side
            k += 1
            name = f"{base}_{k}"
        used.add(out_dir / name)
        comments = [f"patient_id: {rec.patient_id}", f"record_id: {rec.record_id}", f"source: {path}",
                    f"format: {rec.meta.get('format', 'wfdb')}"]
        if rec.meta.get("derived_leads"):
            comments.append(f"derived_leads: {' '.join(rec.meta['derived_leads'])}")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            wfdb.wrsamp(name, fs=rec.fs, units=["mV"] * len(rec.leads), sig_name=list(rec.leads),
                        p_signal=np.asarray(rec.signal, dtype=np.float64).T, fmt=["16"] * len(rec.leads),
                        comments=comments, write_dir=str(out_dir))
        except (OSError, ValueError) as err:
            summary.skipped.append({"record": str(path), "reason": "write-failed",
                                    "message": f"{path}: writing WFDB failed: {err}"})
            continue
        summary.converted.append({"source": str(path), "output": str(out_dir / f"{name}.hea"),
                                  "format": str(rec.meta.get("format", "wfdb"))})
    return summary


def _run(args: argparse.Namespace) -> int:
    summary = convert_folder(args.src, args.dest, to=args.to, progress=not args.no_progress)
    print(summary.report())
    return 1 if summary.skipped and not summary.converted else 0


def register_convert(subparsers) -> None:
    """Add ``convert`` to the ``lsemvae data`` sub-commands."""
    p = subparsers.add_parser(
        "convert", help="convert a folder of ECG files (DICOM, HL7 aECG, GE MUSE, CardioSoft, EDF, WFDB) to WFDB",
        description="Read every ECG record under SRC (format detected from file content; sub-folders kept) and "
        "write it as a WFDB record (mV, 16-bit, lead names from the source file) under DEST. Unreadable files are "
        "skipped and counted by reason; the summary lists examples. Exit status 1 only if nothing converted.",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="folder of ECG files (searched recursively)")
    p.add_argument("--to", choices=TARGETS, default="wfdb", help="output format (default: wfdb)")
    p.add_argument("dest", type=Path, metavar="DEST", help="output folder (created; existing records overwritten)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
