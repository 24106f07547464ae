"""``lsemvae predict``: score new, unlabelled ECG files with a fine-tuned checkpoint.

Records are preprocessed with the checkpoint's own pipeline (through the cohort cache, so bad
records are skipped with a reason) and scored exactly as ``lsemvae evaluate`` scores test records:
eval mode, the checkpoint's crop averaging, class names as in ``predictions.csv``.
:func:`predict_cohort` is the scoring itself (model + cohort -> rows), importable and tested.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lsemvae.argtypes import positive_float, positive_int
from lsemvae.errors import ConfigError, LSEMVAEError

SKIP_NO_LEADS = "no-requested-leads"
FORMATS_HINT = "WFDB .hea + .dat/.mat, DICOM, HL7 aECG, MUSE XML, CardioSoft XML or EDF"


def head_tasks(model) -> dict:
    """The model's heads as tasks (kind and class names), resolved by name as evaluation resolves them.

    A head that is no built-in task is a site's label column bound to a head name (binary, one
    output, its class named after the head, as ``evaluate`` names it).
    """
    from lsemvae.data.tasks import column_task, get_task

    out = {}
    for name, spec in model.config.tasks.items():
        n_out = getattr(spec, "n_outputs", spec)  # LS-EMVAE: TaskHeadSpec; CNN baseline: the output count
        try:
            task = get_task(name)
        except ConfigError:
            task = column_task(name)
        if task.n_outputs != n_out:
            raise ConfigError(f"head {name!r} has {n_out} outputs, task {task.name!r} has {task.n_outputs}: "
                              "its classes cannot be named")
        out[name] = task
    return out


def input_refs(inputs: Sequence[Path]) -> list:
    """Records under ``inputs`` (files, or folders searched as :func:`folder_index` does).

    Ids are folder-relative paths without extension (a file: its name without extension); with
    several inputs a folder's ids are prefixed by its name. A record named twice is kept once.
    Paths are made absolute.
    """
    from lsemvae.data.readers import record_files
    from lsemvae.data.sources import ManifestError, RecordRef, folder_index

    refs, seen, by_id = [], set(), {}
    for item in inputs:
        if not item.exists():
            raise ConfigError(f"{item}: no such file or folder; give ECG files or folders of them ({FORMATS_HINT})")
        if item.is_dir():
            try:
                found = folder_index(item)
            except ManifestError as err:
                raise ConfigError(f"{err}; give a folder holding {FORMATS_HINT} files") from None
        else:
            found = [RecordRef(item.stem, item.stem, item, {"source": item.parent.resolve().name})]
        prefix = f"{item.resolve().name}/" if len(inputs) > 1 and item.is_dir() else ""
        for ref in found:
            key = record_files(ref.path)[0].resolve()
            if key in seen:
                continue
            seen.add(key)
            rid = prefix + ref.record_id
            if rid in by_id:
                raise ConfigError(f"{ref.path} and {by_id[rid]} would both be record {rid!r}: give their folders "
                                  "as one input (ids are paths relative to it) or rename one")
            by_id[rid] = ref.path
            refs.append(RecordRef(rid, rid, ref.path.absolute(), ref.meta))  # the path column, whatever the cwd
    return refs


def predict_cohort(model, cohort, tasks: Mapping[str, Any], *, leads: str | Sequence[str],
                   predict_kwargs: Mapping[str, Any] | None = None, batch_size: int = 64,
                   progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Score every record of ``cohort`` on ``leads`` as evaluation scores test records.

    Returns ``(rows, skipped)``: one dict per scored record with the CSV columns ``record_id``,
    ``path``, ``leads`` (those used: requested and recorded), ``qc`` (the record's QC notes: an
    implausible amplitude, leads left out, a gain correction...), ``p:<task>:<class>`` and, for gated
    models, ``gate:<group>`` (weights on the whole signal, as ``evaluate``'s gates.csv); and the
    records that have none of ``leads`` or a lead among them that failed QC (``record_id``, ``path``,
    ``reason``, ``message``). QC applies to the leads scored: a 6-lead model scores a record whose
    V2 failed.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from lsemvae.data.cache import CohortDataset, lead_fault_skips, usable_rows
    from lsemvae.leads import LEADS_12, resolve_lead_set
    from lsemvae.train.evaluate import _class_names
    from lsemvae.train.finetune import crop_averaged_logits, probabilities
    from lsemvae.train.interpret import gate_weights

    lead_names = resolve_lead_set(leads)
    recorded = np.asarray(cohort.lead_mask)
    used = recorded & np.isin(LEADS_12, lead_names)
    keep = usable_rows(cohort, lead_names, np.flatnonzero(used.any(1)))
    skipped = [{"record_id": cohort.record_ids[i], "path": cohort.paths[i], "reason": SKIP_NO_LEADS,
                "message": f"has leads {' '.join(np.array(LEADS_12)[recorded[i]])}, none of those scored "
                           f"({' '.join(lead_names)}; choose others with --leads)"}
               for i in np.flatnonzero(~used.any(1))]
    skipped += [{"record_id": s["record"], "path": s["path"], "reason": s["reason"], "message": s["message"]}
                for s in lead_fault_skips(cohort, lead_names, np.flatnonzero(used.any(1)))]
    names = {t: _class_names(task, task.n_outputs) for t, task in tasks.items()}
    kw = dict(predict_kwargs or {})
    model.eval()
    rows: list[dict] = []
    loader = DataLoader(CohortDataset(cohort, keep, leads=lead_names, tasks=[]), batch_size=batch_size)
    with torch.no_grad():
        for batch in tqdm(loader, desc="scoring", unit="batch", disable=not progress):
            x, mask = batch["x"], batch["lead_mask"]
            logits = crop_averaged_logits(model, x, mask, sample_mask=batch["sample_mask"], **kw)
            probs = {t: probabilities(logits[t], task.kind).numpy() for t, task in tasks.items()}
            gated = gate_weights(model, x, mask)
            for b in range(len(x)):
                i = int(keep[len(rows)])
                row = {"record_id": cohort.record_ids[i], "path": cohort.paths[i],
                       "leads": " ".join(np.array(LEADS_12)[used[i]]),
                       "qc": "; ".join(cohort.meta[i].get("qc_flags") or ())}
                row.update({f"p:{t}:{c}": float(probs[t][b, k]) for t in tasks for k, c in enumerate(names[t])})
                if gated is not None:
                    row.update({f"gate:{g}": float(gated[0][b, k]) for k, g in enumerate(gated[1])})
                rows.append(row)
    return rows, skipped


def read_thresholds(path: Path, tasks: Mapping[str, Any]) -> dict[str, float]:
    """``{"p:<task>:<class>": threshold}`` for every output of ``tasks`` from an ``lsemvae evaluate`` report.json.

    Thresholds are what evaluation chose on validation (``tasks.<task>.per_class.<class>.threshold``;
    a call is ``score >= threshold``, as evaluation counts it).
    """
    from lsemvae.train.evaluate import _class_names

    try:
        report_tasks = json.loads(Path(path).read_text(encoding="utf-8"))["tasks"]
    except FileNotFoundError:
        raise ConfigError(f"{path}: thresholds report not found "
                          "(`lsemvae evaluate --out DIR` writes DIR/report.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not an `lsemvae evaluate` report.json ({type(err).__name__}: {err})") from None
    out = {}
    for task, name in ((t, c) for t, spec in tasks.items() for c in _class_names(spec, spec.n_outputs)):
        if task not in report_tasks:
            raise ConfigError(f"{path}: no thresholds for task {task!r} (the report has {list(report_tasks)}); "
                              "evaluate this checkpoint with `lsemvae evaluate` and pass that report")
        per_class = report_tasks[task].get("per_class") or {}
        if not isinstance((per_class.get(name) or {}).get("threshold"), (int, float)):
            raise ConfigError(f"{path}: task {task!r} has no threshold for class {name!r} (the report has "
                              f"{list(per_class)}); was it evaluated from another model?")
        out[f"p:{task}:{name}"] = float(per_class[name]["threshold"])
    fixed = [t for t in tasks if report_tasks[t].get("threshold_method") == "fixed-0.5"]
    if fixed:
        print(f"note: {path}: thresholds of {', '.join(fixed)} are a fixed 0.5 (evaluated with --split val or all), "
              "not chosen on validation")
    return out


def _write_csv_atomic(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    """Temporary file in the same folder, fsync, rename: a crash never leaves a file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _cohort(args, model, ckpt):
    from lsemvae.data.cache import build_cohort, load_cohort, matching_cohort
    from lsemvae.errors import RecordError
    from lsemvae.data.sources import with_gain_correction
    from lsemvae.train.checkpoint import preprocess_config

    pcfg = preprocess_config(ckpt, model.config)
    if args.cache:
        return matching_cohort(load_cohort(args.cache), pcfg, "prepare the records again or give them as INPUT")
    refs = input_refs(args.inputs)
    if args.gain_correction != 1.0:
        refs = with_gain_correction(refs, args.gain_correction)
    name = "predict-" + (re.sub(r"[^\w.-]", "_", args.inputs[0].resolve().name).lstrip(".") or "input")
    try:
        return build_cohort(refs, [], pcfg, args.cache_dir, name=name, progress=not args.no_progress,
                            workers=args.workers)
    except RecordError as err:
        if err.reason != "empty-cohort":
            raise
        shown = " ".join(map(str, args.inputs))
        raise LSEMVAEError(f"no record under {shown} could be scored: {err.detail}. `lsemvae data inspect "
                           f"{args.inputs[0]}` lists every failure; fix or re-export those files") from None


def run_predict(args) -> int:
    import torch

    from lsemvae.train.evaluate import load_classifier

    _check_arguments(args)
    torch.set_num_threads(args.threads)
    model, ckpt = load_classifier(args.checkpoint)
    leads = _input_leads(args, model, ckpt)
    tasks = head_tasks(model)
    thresholds = read_thresholds(args.thresholds, tasks) if args.thresholds else {}  # refused before any work
    cohort = _cohort(args, model, ckpt)
    print(f"scoring {len(cohort)} record(s) on leads {' '.join(leads)} with {args.checkpoint}")
    rows, no_leads = predict_cohort(model, cohort, tasks, leads=leads,
                                    predict_kwargs=(ckpt.get("state") or {}).get("predict_kwargs"),
                                    batch_size=args.batch_size, progress=not args.no_progress)
    skipped = [{"record_id": s["record"], "path": s.get("path", ""), "reason": s["reason"], "message": s["message"]}
               for s in cohort.skipped] + no_leads
    skipped_path = _write_skipped(args.out, skipped)
    by_reason = ", ".join(f"{r} {n}" for r, n in Counter(s["reason"] for s in skipped).most_common())
    if not rows:
        source = args.cache or " ".join(map(str, args.inputs))
        raise LSEMVAEError(f"no record of {source} could be scored ({by_reason}); each is listed with its reason in "
                           f"{skipped_path}")
    _write_scores(args.out, rows, thresholds)
    print(f"scored {len(rows)} record(s) -> {args.out}; skipped {len(skipped)}"
          + (f" ({by_reason}; listed in {skipped_path})" if skipped else ""))
    return 0


def _check_arguments(args) -> None:
    if bool(args.inputs) == bool(args.cache):
        raise ConfigError("give the records to score as INPUT files/folders or a prepared cohort with --cache, "
                          "one of the two")
    if not args.checkpoint.is_file():
        raise ConfigError(f"{args.checkpoint}: checkpoint not found (give a fine-tuned model: lsemvae finetune "
                          "writes OUT/model.pt, a federation <out>/server/final-model.pt)")


def _input_leads(args, model, ckpt) -> tuple[str, ...]:
    """The leads scored: ``--leads``, else those the checkpoint was fine-tuned on, else every lead the model reads."""
    from lsemvae.leads import resolve_lead_set

    # a federated model records no lead set: its sites trained on every lead they had, so it reads them all
    readable = getattr(model, "leads", None)  # the CNN baseline's input channels; LS-EMVAE reads any lead
    leads = resolve_lead_set(args.leads or (ckpt.get("provenance") or {}).get("leads") or readable or "12L")
    readable = readable or leads
    if set(leads) - set(readable):
        raise ConfigError(f"{args.checkpoint}: this model reads only {' '.join(readable)}; --leads "
                          f"{' '.join(sorted(set(leads) - set(readable)))} cannot be inputs")
    return leads


def _write_scores(out: Path, rows: list[dict], thresholds: Mapping[str, float]) -> None:
    """The scores CSV, with a ``call:<task>:<class>`` 0/1 column per threshold (``p >= threshold``)."""
    for row in rows:
        row.update({"call" + col[1:]: int(row[col] >= thr) for col, thr in thresholds.items()})
    header = list(rows[0])
    _write_csv_atomic(out, header, [[_cell(row[c]) for c in header] for row in rows])


def _write_skipped(out: Path, skipped: list[dict]) -> Path:
    """``<out stem>.skipped.csv`` listing ``skipped`` (removed when none: a list from an earlier run would not
    describe this output); returns its path."""
    path = out.with_name(f"{out.stem}.skipped.csv")
    if skipped:
        _write_csv_atomic(path, ["record_id", "path", "reason", "message"],
                          [[s["record_id"], s["path"], s["reason"], s["message"]] for s in skipped])
    else:
        path.unlink(missing_ok=True)
    return path


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except None/False ones (their help says what happens without the option)."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="score new, unlabelled ECG files with a fine-tuned checkpoint (model probabilities per record)",
        description="Score new ECG records with a fine-tuned LS-EMVAE or CNN-baseline checkpoint (lsemvae finetune's "
        "OUT/model.pt or the federation's <out>/server/final-model.pt). Records are preprocessed with the "
        "checkpoint's own settings and scored as `lsemvae evaluate` scores test records (same crop averaging). "
        "Writes OUT (CSV, one row per scored record): record_id, path, leads (those used), qc (the record's QC "
        "notes, e.g. implausible-amplitude or leads left out), p:<task>:<class> (the "
        "model's probability), gate:<group> (LS-EMVAE's HiME gate weight per lead group) and, with --thresholds, "
        "call:<task>:<class> (1 when p >= the threshold evaluation chose on validation). Records that cannot be "
        "scored (unreadable, failed quality checks, none of the leads) are listed with their reason in "
        "<OUT stem>.skipped.csv. The scores are model probabilities, not diagnoses.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                   help=f"ECG files or folders (searched recursively; {FORMATS_HINT}, detected from content)")
    p.add_argument("--checkpoint", type=Path, required=True, metavar="MODEL.pt",
                   help="fine-tuned model (lsemvae finetune's OUT/model.pt or the federation's server/final-model.pt)")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="score a prepared cohort (lsemvae data prepare) instead of INPUTs")
    p.add_argument("--out", type=Path, required=True, help="scores CSV to write")
    p.add_argument("--leads", default=None,
                   help="lead set: 6L, 12L or names like I,II,aVF (default: the leads the checkpoint was "
                   "fine-tuned on; for a federated model, every lead a record has)")
    p.add_argument("--thresholds", type=Path, default=None, metavar="REPORT.json",
                   help="an `lsemvae evaluate` report.json of this model: adds call:<task>:<class> 0/1 columns at "
                   "its validation-chosen thresholds")
    p.add_argument("--gain-correction", type=positive_float, default=1.0, metavar="FACTOR",
                   help="multiply every INPUT signal by FACTOR: the fix for an export with a wrong gain, which QC "
                   "reports (wrong-scale, implausible-amplitude) with the factor to use")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where preprocessed INPUTs are cached")
    p.add_argument("--workers", type=positive_int, default=1, help="preprocessing processes")
    p.add_argument("--batch-size", type=positive_int, default=64, help="records per forward pass")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_predict)
