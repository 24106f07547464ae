"""Hospital ECG formats: reading speed of each reader and outcomes over every real file on this machine.

* speed: :func:`lsemvae.data.readers.read_record` (sniffing, decoding, calibration check) on one real file per
  format, ``--repeats`` reads after a warm-up, median seconds per read -> records/s. Files: the Philips
  SierraECG 1.03 and SCP-ECG files of ../shared/data/formats, pydicom's bundled 12-lead DICOM, a PTB-XL
  500 Hz WFDB record.
* corpus: every real file here (../shared/data/formats, pydicom's 78 test files, every PTB-XL and LUDB
  record): read correctly (limb identities within the preprocessing's 0.1 mV where I, II, III are
  stored, every lead 0.1-10 mV peak to peak), read but outside those checks (a property of the
  recording, e.g. an artefact over 10 mV), refused with a reason (counted by reason), or a traceback
  (any other exception).

    python -m benchmarks.formats                 # ~1 min on 2 shared cores
    python -m benchmarks.formats --repeats 5     # quicker

Writes benchmarks/results/formats.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks import harness as H
from lsemvae.data.readers import read_record, sniff_format
from lsemvae.errors import RecordError
from lsemvae.leads import check_limb_identities

SHARED = H.SHARED_DATA


def pydicom_files() -> list[Path]:
    import pydicom

    return sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))


def speed(repeats: int) -> list[dict]:
    files = {
        "philips-xml": SHARED / "formats" / "philips" / "129DYPRG.XML",
        "scp-ecg": SHARED / "formats" / "scp" / "Example.scp",
        "dicom": next(p for p in pydicom_files() if p.name == "waveform_ecg.dcm"),
        "wfdb": SHARED / "ptb-xl" / "records500" / "00000" / "00001_hr.hea",
    }
    rows = []
    for fmt, path in files.items():
        read_record(path)  # warm-up: imports, caches
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            rec = read_record(path)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append({"format": fmt, "file": str(path.relative_to(path.parents[2])), "leads": len(rec.leads),
                     "samples": rec.n_samples, "fs": rec.fs, "median_s": round(median, 5),
                     "records_per_s": round(1.0 / median, 1), "repeats": repeats, "loadavg": os.getloadavg()[0]})
    return rows


def plausible(rec) -> bool:
    p2p = np.nanmax(rec.signal, axis=1) - np.nanmin(rec.signal, axis=1)
    check = check_limb_identities(rec.signal, rec.leads, tolerance_mv=0.1)
    stored = {"I", "II", "III"} <= set(rec.leads)
    return bool(np.all((p2p > 0.1) & (p2p < 10.0)) and (check.ok or not stored))


def corpus() -> dict:
    sources = {
        "shared/data/formats": sorted(p for p in (SHARED / "formats").rglob("*") if p.is_file() and p.suffix != ".md"),
        "pydicom test files": pydicom_files(),
        "PTB-XL (100 + 500 Hz)": sorted((SHARED / "ptb-xl").glob("records*/*/*.hea")),
        "LUDB": sorted((SHARED / "ludb" / "data").glob("*.hea")),
    }
    out = {}
    for name, paths in sources.items():
        by_format: dict[str, Counter] = {}
        examples: dict[str, str] = {}
        for path in paths:
            fmt = sniff_format(path) or "unrecognised"
            counts = by_format.setdefault(fmt, Counter())
            counts["files"] += 1
            try:
                rec = read_record(path, format=fmt if fmt != "unrecognised" else None)
                counts["read correctly" if plausible(rec) else "read, outside the plausibility checks"] += 1
            except RecordError as err:
                counts[f"refused: {err.reason}"] += 1
                examples.setdefault(f"{fmt} {err.reason}", str(err))
            except Exception:  # noqa: BLE001 - counting tracebacks is the point
                counts["traceback"] += 1
                examples.setdefault(f"{fmt} traceback", traceback.format_exc(limit=2))
        out[name] = {"by_format": {f: dict(c) for f, c in by_format.items()}, "examples": examples}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.formats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20, help="timed reads per format")
    p.add_argument("--out", type=Path, default=H.RESULTS / "formats.json")
    args = p.parse_args(argv)
    started = time.monotonic()
    body = {"speed": speed(args.repeats), "corpus": corpus()}
    result = H.write_results(args.out, H.meta("formats", argv, started), body)
    for row in result["speed"]:
        print(f"{row['format']:12s} {row['records_per_s']:8.1f} records/s ({row['median_s'] * 1000:.1f} ms a read)")
    for name, part in result["corpus"].items():
        print(f"{name}: {part['by_format']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
