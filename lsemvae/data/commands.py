"""``lsemvae data ...``: inspect a data folder, prepare a cached cohort, download PTB-XL.

Sub-commands owned by other modules register here too (``data synth`` from
:mod:`lsemvae.data.synthetic`, ``data convert`` from :mod:`lsemvae.data.convert`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsemvae.argtypes import positive_float, positive_int
from lsemvae.config import validate
from lsemvae.data import sources
from lsemvae.data.preprocess import PIPELINE_VERSION, PreprocessConfig, preprocess
from lsemvae.data.convert import passed_over_report
from lsemvae.data.readers import scan_folder
from lsemvae.data.sources import (
    DATASET_KINDS, RecordRef, detect_kind, folder_index, label_counts, require_labels, with_gain_correction,
)
from lsemvae.data.tasks import TASKS, Task, column_task, resolve_tasks
from lsemvae.errors import ConfigError, LSEMVAEError, RecordError
from lsemvae.leads import LEADS_12, LEAD_SETS

# ---------------------------------------------------------------------------------------------
# Finding and indexing a data folder
# ---------------------------------------------------------------------------------------------


def index_dataset(dataset: str, root: Path, *, labels: Path | None = None, rate: int = 100) -> list[RecordRef]:
    """:func:`lsemvae.data.sources.index`, for a ``root`` the user named (which must exist)."""
    if not root.exists():
        raise ConfigError(f"{root}: not found")
    return sources.index(dataset, root, labels=labels, rate=rate)


def default_tasks(dataset: str, refs: Sequence[RecordRef]) -> dict[str, Task]:
    """PTB-XL: every built-in task; LUDB: the PH proxies; manifest: its label columns; folder: none.

    A manifest's columns named like every class of a built-in multi-label task (NORM, MI, STTC, CD,
    HYP) are that task's labels (``superclass``), not one binary task each.
    """
    if dataset == "ptb-xl":
        return dict(TASKS)
    if dataset == "ludb":
        return {k: t for k, t in TASKS.items() if k != "superclass"}
    if dataset == "manifest":
        columns = list(dict.fromkeys(c for r in refs for c in r.meta.get("label_columns", ())))
        multi = {k: t for k, t in TASKS.items() if t.kind != "binary" and set(t.classes) <= set(columns)}
        taken = {c for t in multi.values() for c in t.classes}
        return multi | {c: TASKS[c] if c in TASKS else column_task(c) for c in columns if c not in taken}
    return {}


def dataset_cohort(dataset: str, root: Path, cfg: PreprocessConfig, cache_dir: Path, *, tasks: Sequence[str] = (),
                   labels: Path | None = None, rate: int | None = None, limit: int | None = None,
                   gain_correction: float = 1.0, name: str | None = None, progress: bool = True, workers: int = 1):
    """The cohort of a dataset folder as ``lsemvae data prepare`` builds it, opened (or built once).

    Every command that reads a dataset (``pretrain``/``finetune``/``evaluate --ptbxl``, ``--ludb``,
    ``--folder``) comes here, so they share one cache per dataset and preprocessing: all its records
    (a training command chooses rows, e.g. leaves PTB-XL fold 10 out), the dataset's default tasks
    plus ``tasks``. Tasks asked for by name must have labels (:func:`require_labels`).
    """
    from lsemvae.data.cache import build_cohort

    refs = index_dataset(dataset, root, labels=labels, rate=rate or (100 if cfg.fs <= 100 else 500))
    if limit:
        refs = refs[:limit]
    if gain_correction != 1.0:
        refs = with_gain_correction(refs, gain_correction)
    asked = resolve_tasks([t for t in tasks if t.strip()])
    require_labels(refs, asked)
    task_map = {n: asked.get(n, t) for n, t in default_tasks(dataset, refs).items()} | asked  # defaults' order kept
    for task, counts in label_counts(refs, task_map).items():
        if not counts["labelled"]:
            print(f"note: task {task} has no labels in these {len(refs)} records", file=sys.stderr)
    return build_cohort(refs, task_map, cfg, cache_dir, name=name or f"{dataset}-{cfg.fs}hz", progress=progress,
                        workers=workers)


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------


def _lead_set_name(leads: Sequence[str]) -> str:
    for name, members in LEAD_SETS.items():
        if tuple(sorted(leads, key=LEADS_12.index)) == members:
            return name
    return " ".join(sorted(leads, key=LEADS_12.index))


def inspect_refs(refs: Sequence[RecordRef], cfg: PreprocessConfig, *, progress: bool = True) -> dict[str, Any]:
    """Read and preprocess every record; count rates, durations, leads, failures. Never raises on a
    bad record."""
    from tqdm import tqdm

    rates, durations, lead_sets, read_fail, qc_fail, flags = Counter(), Counter(), Counter(), Counter(), Counter(), Counter()
    examples: dict[str, list[str]] = {}
    n_ok = 0
    hr: list[float] = []
    for ref in tqdm(refs, desc="inspecting", unit="rec", disable=not progress, file=sys.stderr):
        try:
            rec = ref.load()
        except RecordError as err:
            read_fail[err.reason] += 1
            examples.setdefault(err.reason, []).append(str(err))
            continue
        rates[f"{rec.fs:g} Hz"] += 1
        durations[f"{rec.duration_s:.1f} s"] += 1
        lead_sets[_lead_set_name(rec.leads)] += 1
        try:
            out = preprocess(rec, cfg)
        except RecordError as err:
            qc_fail[err.reason] += 1
            examples.setdefault(err.reason, []).append(str(err))
            continue
        n_ok += 1
        hr.append(out.heart_rate_bpm)
        flags.update(f.split(":", 1)[0] for f in out.flags)
    return {
        "records": len(refs), "read_ok": len(refs) - sum(read_fail.values()), "read_failures": dict(read_fail),
        "qc_passed": n_ok, "qc_failures": dict(qc_fail), "qc_flags": dict(flags),
        "sampling_rates": dict(rates.most_common()), "durations": dict(durations.most_common()),
        "lead_sets": dict(lead_sets.most_common()), "patients": len({r.patient_id for r in refs}),
        "heart_rate_bpm_median": float(np.nanmedian(hr)) if hr else None,
        "examples": {k: v[:3] for k, v in examples.items()},
    }


def _meta_counts(refs: Sequence[RecordRef], key: str) -> dict[str, int]:
    return {str(k): v for k, v in Counter(r.meta.get(key) for r in refs).most_common() if k is not None}


def _print_summary(title: str, s: dict[str, Any]) -> None:
    def line(label: str, counts: dict) -> None:
        print(f"  {label}: " + (", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"))

    print(title)
    print(f"  records: {s['records']} ({s['patients']} patients), read OK: {s['read_ok']}")
    line("sampling rates", s["sampling_rates"])
    line("durations", s["durations"])
    line("leads", s["lead_sets"])
    if s["read_failures"]:
        line("read failures by reason", s["read_failures"])
    print(f"  QC at {s['qc_fs']} Hz (pipeline {PIPELINE_VERSION}): passed {s['qc_passed']}, "
          f"failed {sum(s['qc_failures'].values())}")
    for reason, n in s["qc_failures"].items():
        print(f"    {reason}: {n}")
    if s["qc_flags"]:
        line("QC flags (kept)", s["qc_flags"])
    for reason, ex in s["examples"].items():
        print(f"    e.g. [{reason}] {ex[0]}")
    if s.get("heart_rate_bpm_median"):
        print(f"  median heart rate: {s['heart_rate_bpm_median']:.0f} bpm")
    for key in ("site", "strat_fold", "device"):
        if s.get(key):
            line(key, dict(list(s[key].items())[:12]))
    if s.get("labels"):
        print("  labels (positives / labelled records):")
        for task, counts in s["labels"].items():
            labelled = counts.pop("labelled")
            shown = ", ".join(f"{c} {n}" for c, n in counts.items()) if len(counts) > 1 else str(sum(counts.values()))
            print(f"    {task}: {shown} / {labelled}")


def _cmd_inspect(args: argparse.Namespace) -> int:
    root = Path(args.path)
    cfg = validate(PreprocessConfig, {"fs": args.fs}, source="command line (--fs)")
    passed_over: dict[str, str] = {}
    if root.is_file():
        refs, dataset = [RecordRef(root.stem, root.stem, root, {"source": str(root)})], "record"
        groups = {"record": refs}
    elif (dataset := args.dataset or ("manifest" if args.labels else detect_kind(root))) == "folder":
        scan = scan_folder(root)
        passed_over = {str(p.relative_to(root)): why for p, why in scan.passed_over}
        if not scan.records:
            print(passed_over_report(passed_over, examples=10))
            print(f"error: {root}: no ECG records found", file=sys.stderr)
            return 1
        groups = {dataset: folder_index(root, scan=scan)}
    else:
        if dataset == "ptb-xl":
            groups = {}
            for rate in (100, 500):
                try:
                    groups[f"{rate} Hz files"] = sources.index("ptb-xl", root, rate=rate)
                except LSEMVAEError as err:
                    print(f"note: {err}", file=sys.stderr)
            if not groups:
                raise ConfigError(f"{root}: no PTB-XL record files found")
        else:
            groups = {dataset: index_dataset(dataset, root, labels=args.labels)}
    report: dict[str, Any] = {"path": str(root), "dataset": dataset, "groups": {}, "passed_over": passed_over}
    for name, refs in groups.items():
        if args.limit:
            refs = refs[:args.limit]
        s = inspect_refs(refs, cfg, progress=not args.no_progress)
        s["qc_fs"] = cfg.fs
        for key in ("site", "strat_fold", "device"):
            s[key] = _meta_counts(refs, key)
        tasks = default_tasks(dataset, refs)
        s["labels"] = label_counts(refs, tasks) if tasks else {}
        report["groups"][name] = s
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for name, s in report["groups"].items():
            _print_summary(f"{dataset} at {root} ({name})", s)
        if passed_over:
            print(passed_over_report(passed_over, examples=10))
    return 0 if any(s["read_ok"] for s in report["groups"].values()) else 1


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def _cmd_prepare(args: argparse.Namespace) -> int:
    root = Path(args.root)
    dataset = args.dataset or detect_kind(root)
    cfg = validate(PreprocessConfig, {"fs": args.fs, "seconds": args.seconds, "powerline_hz": args.powerline or None,
                                      "amplitude": args.amplitude},
                   source="command line (--fs, --seconds, --powerline, --amplitude)")
    cohort = dataset_cohort(dataset, root, cfg, args.cache_dir, tasks=(args.tasks or "").split(","), labels=args.labels,
                            rate=args.rate, limit=args.limit, gain_correction=args.gain_correction, name=args.name,
                            progress=not args.no_progress, workers=args.workers)
    name = cohort.path.name.rsplit("-", 1)[0]
    st = cohort.stats
    print(f"cohort {name}: {len(cohort)} records kept, {len(cohort.skipped)} skipped, in {cohort.path}")
    print(f"  arrays: signals {tuple(cohort.signals.shape)}, beats {tuple(cohort.beats.shape)}; "
          f"tasks: {', '.join(cohort.labels) or 'none'}")
    if st:
        print(f"  built in {st.get('build_seconds')} s ({st.get('records_per_second')} records/s, "
              f"{st.get('workers')} worker(s)) at {st.get('built_at')}")
    for reason, n in cohort.skipped_by_reason().items():
        example = next(s for s in cohort.skipped if s["reason"] == reason)
        print(f"  skipped {reason}: {n} (e.g. {example['record']}: {example['message']})")
    flagged = Counter(f.split(":", 1)[0] for m in cohort.meta for f in m.get("qc_flags", ()))
    for flag, n in flagged.most_common():
        example = next((m["qc_flags"], rid) for m, rid in zip(cohort.meta, cohort.record_ids)
                       if any(f.startswith(flag + ":") for f in m.get("qc_flags", ())))
        text = next(f for f in example[0] if f.startswith(flag + ":"))
        print(f"  kept with note {flag}: {n} (e.g. {example[1]}: {text.split(':', 1)[1].strip()})")
    return 0


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------


def _cmd_download(args: argparse.Namespace) -> int:
    from lsemvae.data.download import download

    summary = download(args.dataset, args.dest, base_url=args.base_url, include=args.include or (),
                       limit=args.limit, progress=not args.no_progress)
    print(f"{args.dataset} -> {args.dest}: downloaded {len(summary.downloaded)} file(s) "
          f"({summary.bytes_fetched / 1e6:.1f} MB, {len(summary.resumed)} resumed), "
          f"{len(summary.present)} already present and verified")
    return 0


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect, prepare and download ECG data",
                                 description="ECG data: inspect folders, build preprocessed caches, download PTB-XL.")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("inspect", formatter_class=fmt, help="summarise a folder of ECG records",
                       description="Read every record under PATH (a WFDB folder, the PTB-XL root, the LUDB root, a "
                       "site folder with labels.csv, or one record file) and print: records, sampling rates, "
                       "durations, leads present, read and QC failures by reason (the preprocessing pipeline at "
                       "--fs), QC flags and reader notes, and label counts where labels are known. A bad record is "
                       "counted, never fatal; in a plain folder every file that is not a record is listed with "
                       "why (unknown format, empty, hidden...).",
                       epilog="exit status: 0 at least one record read; 1 no record could be read (an unreadable "
                       "file, a folder without records); 2 a usage error (path not found, bad option).")
    p.add_argument("path", type=Path, help="folder or record file")
    p.add_argument("--dataset", choices=DATASET_KINDS, default=None, help="layout (default: detected)")
    p.add_argument("--labels", type=Path, default=None, help="labels CSV of a site folder (implies manifest)")
    p.add_argument("--fs", type=int, default=100, help="model sampling rate for the QC run, Hz")
    p.add_argument("--limit", type=positive_int, default=None, help="inspect only the first N records")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("prepare", formatter_class=fmt, help="preprocess a dataset into a memory-mapped cache",
                       description="Index a dataset, run the preprocessing pipeline on every record and write a "
                       "memory-mapped cohort cache under --cache-dir (reused when inputs, config and pipeline "
                       "version are unchanged). Bad records are skipped and listed by reason.")
    p.add_argument("--dataset", choices=DATASET_KINDS, default=None, help="layout of --root (default: detected)")
    p.add_argument("--root", type=Path, required=True, help="dataset folder")
    p.add_argument("--labels", type=Path, default=None, help="labels CSV for --dataset manifest")
    p.add_argument("--rate", type=int, choices=(100, 500), default=100, help="PTB-XL files to read")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where caches live")
    p.add_argument("--name", default=None, help="cache name (default: <dataset>-<fs>hz)")
    p.add_argument("--fs", type=int, default=100, help="model sampling rate, Hz")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="fixed record length, s")
    p.add_argument("--powerline", type=int, choices=(0, 50, 60), default=50, help="mains frequency (0: no notch)")
    p.add_argument("--amplitude", choices=("millimetres", "standardised"), default="millimetres",
                   help="millimetres (default, what the compact model reads: voltages kept, mm of ECG paper) or "
                        "standardised (each lead z-scored per record, what the faithful profile reads)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks added to the dataset's own (all that apply: "
                   "PTB-XL every built-in task, a site its label columns; columns NORM, MI, STTC, CD, HYP make the "
                   f"superclass task). Known: {', '.join(TASKS)}; column:<label column> for a site's own binary "
                   "column; <task>=<column>+<column>... to read a built-in task from your columns, one per class in "
                   "its order (superclass=norm+mi+sttc+cd+hyp). A task named here must have labels")
    p.add_argument("--gain-correction", type=positive_float, default=1.0, metavar="FACTOR",
                   help="multiply every signal of this source by FACTOR: the fix for an export with a wrong gain, "
                   "which QC reports as wrong-scale or implausible-amplitude with the factor to use (a header gain "
                   "5x too high reads every signal 5x too small: --gain-correction 5). Noted on each record")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N records")
    p.add_argument("--workers", type=positive_int, default=1, help="preprocessing processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("download", formatter_class=fmt, help="download PTB-XL (or LUDB) from PhysioNet",
                       description="Fetch SHA256SUMS.txt, then each file with sha256 verification; interrupted "
                       "downloads resume (HTTP Range). Files already present and verified are skipped.")
    p.add_argument("dataset", choices=("ptb-xl", "ludb"), help="dataset to download")
    p.add_argument("--dest", type=Path, required=True, help="destination folder")
    p.add_argument("--base-url", default=None, help="mirror URL of the dataset folder (default: PhysioNet)")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help="only files whose relative path matches (repeatable), e.g. 'records100/*'")
    p.add_argument("--limit", type=positive_int, default=None, help="at most N files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)

    # Sub-commands owned by other modules of lsemvae.data.
    from lsemvae.data.convert import register_convert
    from lsemvae.data.synthetic import register_synth

    register_synth(sub)
    register_convert(sub)
