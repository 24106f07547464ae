"""``lsemvae data convert SRC --to wfdb DEST``: a folder of hospital ECG files → WFDB records.

Every record :func:`lsemvae.data.readers.scan_folder` finds (any registered format, detected by
content) is read with :func:`read_record` and written with ``wfdb.wrsamp`` in mV, 16-bit, with lead
names from the source file. The folder layout under SRC is kept; ``patient_id``, source file, format
and the reader's QC notes go into header comments (``# patient_id: ...``). A file that cannot be read
is skipped and counted by reason, every other file is listed with why it was passed over; one bad
file never stops the batch.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsemvae.data.readers import PASSED_OVER, read_record, scan_folder
from lsemvae.errors import LSEMVAEError

TARGETS = ("wfdb",)


@dataclass
class ConvertSummary:
    """What a conversion did: ``converted`` dicts with ``source``, ``output`` (written header) and
    ``format``; ``skipped`` dicts with ``record``, ``reason``, ``message``; ``ignored`` files (relative
    to SRC) that are not records, as ``{file: reason}`` (reasons of :data:`readers.PASSED_OVER`)."""

    converted: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

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
            lines.append(passed_over_report(self.ignored, examples))
        return "\n".join(lines)


def passed_over_report(passed: dict[str, str], examples: int = 3) -> str:
    """``passed over N file(s)`` with counts and examples by reason."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in passed.items():
        by_reason.setdefault(reason, []).append(name)
    lines = [f"passed over {len(passed)} file(s) that are not ECG records"]
    for reason, names in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(names[:examples]) + (" ..." if len(names) > examples else "")
        lines.append(f"  {reason} ({PASSED_OVER.get(reason, reason)}): {len(names)}: {shown}")
    return "\n".join(lines)


def _record_name(stem: str) -> str:
    # WFDB record names allow letters, digits, '_' and '-' only.
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "record"


def convert_folder(src: str | Path, dest: str | Path, to: str = "wfdb", *, progress: bool = True) -> ConvertSummary:
    """Convert every ECG record under ``src`` to ``to`` format under ``dest``; returns the summary."""
    import wfdb
    from tqdm import tqdm

    if to not in TARGETS:
        raise LSEMVAEError(f"unknown target format {to!r}; supported: {', '.join(TARGETS)}")
    src, dest = Path(src), Path(dest)
    scan = scan_folder(src)
    summary = ConvertSummary(ignored={str(p.relative_to(src)): why for p, why in scan.passed_over})
    used: set[Path] = set()
    for path, fmt in tqdm(scan.records, desc=f"convert to {to}", unit="record", disable=not progress):
        try:
            rec = read_record(path, format=fmt)
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
        comments += [f"qc_note: {note}" for note in rec.notes]
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
    return 0 if summary.converted else 1


def register_convert(subparsers) -> None:
    """Add ``convert`` to the ``lsemvae data`` sub-commands."""
    p = subparsers.add_parser(
        "convert", help="convert a folder of ECG files (DICOM, HL7 aECG, GE MUSE, CardioSoft, Philips XML, SCP-ECG, "
        "EDF, WFDB) to WFDB",
        description="Read every ECG record under SRC (format detected from file content; sub-folders kept) and "
        "write it as a WFDB record (mV, 16-bit, lead names from the source file) under DEST. Unreadable records are "
        "skipped and counted by reason, other files are listed with why they were passed over; the summary gives "
        "examples.",
        epilog="exit status: 0 at least one record converted; 1 nothing converted (no record found, or every one "
        "skipped); 2 a usage error (SRC not a folder, bad option).",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="folder of ECG files (searched recursively)")
    p.add_argument("--to", choices=TARGETS, default="wfdb", help="output format (default: wfdb)")
    p.add_argument("dest", type=Path, metavar="DEST", help="output folder (created; existing records overwritten)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
