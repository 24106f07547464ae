"""Evaluate any classifier on a cohort split: metrics with CIs, gates, IG lead shares, lead ablation, report.

The classifier is any module with ``forward_logits(x, lead_mask)`` (LS-EMVAE, the CNN baseline,
a random-encoder probe). Test scores use the same crop averaging as fine-tuning's validation
(``predict_kwargs`` from the fine-tuning result), thresholds come from the validation split,
never from test. Per-record scores are written to ``predictions.csv`` so that two methods
evaluated on the same records can be compared with :func:`compare_predictions` (paired bootstrap).
"""

from __future__ import annotations

import csv
import inspect
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from pydantic import Field
from torch import nn

from lsemvae.config import StrictModel
from lsemvae.errors import ConfigError
from lsemvae.leads import LEADS_12, lead_index, resolve_lead_set
from lsemvae.provenance import code_commit
from lsemvae.train import interpret, metrics
from lsemvae.train.report import format_ci, write_report


def _kind(task: Any) -> str:
    return task.kind if hasattr(task, "kind") else str(task)


def _class_names(task: Any, n: int) -> list[str]:
    classes = list(getattr(task, "classes", ()) or ())
    if getattr(task, "kind", None) == "binary" or len(classes) != n:
        return [getattr(task, "name", "positive")] if n == 1 else [f"class_{i}" for i in range(n)]
    return classes


def crop_logits_fn(crop_samples: int | None = None, n_crops: int = 1, batch_size: int = 64, *,
                   sample_mask: torch.Tensor | None = None) -> interpret.LogitsFn:
    """Scoring that averages logits over ``n_crops`` windows of ``crop_samples`` (as fine-tuning validated), inside
    the real samples of the records scored (``sample_mask [N, T]`` of the ``x`` the function is given)."""
    from lsemvae.train.finetune import crop_averaged_logits

    @torch.no_grad()
    def fn(model: nn.Module, x: torch.Tensor, lead_mask: torch.Tensor) -> dict[str, np.ndarray]:
        model.eval()
        out: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(x), batch_size):
            real = None if sample_mask is None else sample_mask[i:i + batch_size]
            logits = crop_averaged_logits(model, x[i:i + batch_size], lead_mask[i:i + batch_size], sample_mask=real,
                                          crop_samples=crop_samples, n_crops=n_crops)
            for task, v in logits.items():
                out.setdefault(task, []).append(v.float().numpy())
        return {t: np.concatenate(v) for t, v in out.items()}

    return fn


def load_split(cohort, indices: Sequence[int], leads: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [N,12,T]`` and ``lead_mask [N,12]`` of cohort rows, restricted to ``leads`` (others zeroed)."""
    idx = np.asarray(indices, dtype=np.int64)
    requested = np.zeros(12, dtype=bool)
    requested[[lead_index(n) for n in leads]] = True
    mask = np.asarray(cohort.lead_mask[idx]) & requested
    x = np.array(cohort.signals[idx], dtype=np.float32)
    x[~mask] = 0.0
    return torch.from_numpy(x), torch.from_numpy(mask)


def write_predictions(path: Path, record_ids: Sequence[str], predictions: Mapping[str, tuple],
                      class_names: Mapping[str, Sequence[str]]) -> Path:
    """One row per record: ``y:<task>:<class>`` and ``p:<task>:<class>`` columns (empty = no label)."""
    cols, arrays = ["record_id"], []
    for task, (y, p) in predictions.items():
        for c, name in enumerate(class_names[task]):
            cols += [f"y:{task}:{name}", f"p:{task}:{name}"]
            arrays += [y[:, c], p[:, c]]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for i, rid in enumerate(record_ids):
            w.writerow([rid] + ["" if np.isnan(a[i]) else f"{a[i]:.6g}" for a in arrays])
    return path


def read_predictions(path: Path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray, list[str]]]]:
    """Inverse of :func:`write_predictions`: record ids and ``{task: (y, p, class_names)}``."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    ids = [r[0] for r in body]
    out: dict[str, tuple[list, list, list]] = {}
    for j, col in enumerate(header[1:], start=1):
        kind, task, name = col.split(":", 2)
        vals = np.array([float(r[j]) if r[j] else np.nan for r in body])
        entry = out.setdefault(task, ([], [], []))
        (entry[0] if kind == "y" else entry[1]).append(vals)
        if kind == "y":
            entry[2].append(name)
    return ids, {t: (np.stack(y, 1), np.stack(p, 1), names) for t, (y, p, names) in out.items()}


def compare_predictions(path_a: Path, path_b: Path, *, n_boot: int = metrics.DEFAULT_N_BOOT, seed: int = 0) -> dict:
    """Paired bootstrap of AUROC differences (a - b) per task from two ``predictions.csv`` on the same records."""
    ids_a, pa = read_predictions(path_a)
    ids_b, pb = read_predictions(path_b)
    if ids_a != ids_b:
        raise ConfigError(f"{path_a} and {path_b} score different records (or in another order): "
                          "a paired comparison needs the same split.")
    return {task: metrics.paired_bootstrap(y, p, pb[task][1], names, n_boot=n_boot, seed=seed)
            for task, (y, p, names) in pa.items() if task in pb}


@torch.no_grad()
def reconstruction_quality(model: nn.Module, x: torch.Tensor, lead_mask: torch.Tensor, target: torch.Tensor,
                           target_mask: torch.Tensor, *, leads: Sequence[str] = ("V1", "V2", "V3", "V4", "V5", "V6"),
                           batch_size: int = 64) -> dict | None:
    """Per-lead Pearson r, RMSE and R² of the reconstruction of ``leads`` from the input leads.

    ``target [N,12,Tb]`` is what the decoders reconstruct (median beats or signals, in the model's input
    units: mm or standard deviations) and ``target_mask`` which leads each record really has. None without a decoder.
    """
    from lsemvae.train.pretrain import reconstruction_r2

    if "decode" not in inspect.signature(model.forward).parameters:
        return None
    model.eval()
    recon = torch.cat([model(x[i:i + batch_size], lead_mask[i:i + batch_size], decode=True).recon
                       for i in range(0, len(x), batch_size)])
    r2 = reconstruction_r2(recon, target, target_mask)
    out = {}
    for lead in leads:
        i = lead_index(lead)
        m = target_mask[:, i]
        if int(m.sum()) < 2:
            continue
        r, t = recon[m, i], target[m, i]
        rc, tc = r - r.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
        pearson = (rc * tc).sum(-1) / (rc.norm(dim=-1) * tc.norm(dim=-1)).clamp_min(1e-12)
        out[lead] = {"pearson_r_mean": float(pearson.mean()), "pearson_r_median": float(pearson.median()),
                     "rmse": float(((r - t) ** 2).mean().sqrt()), "r2": r2[lead], "n": int(m.sum())}
    return {"input_leads": [n for n, on in zip(LEADS_12, lead_mask.any(0).tolist()) if on], "per_lead": out}


class EvalConfig(StrictModel):
    """How :func:`evaluate` scores and reports (recorded in ``report.json`` under ``config``)."""

    leads: str | tuple[str, ...] = Field("6L", description="lead set: 6L, 12L or lead names")
    predict_kwargs: dict[str, Any] = Field(default_factory=dict, description="test-time crop averaging "
                                           "(``crop_samples``, ``n_crops``), as fine-tuning validated")
    n_boot: int = Field(metrics.DEFAULT_N_BOOT, gt=0, description="bootstrap resamples for the 95% CIs")
    seed: int = Field(0, description="bootstrap and IG-sampling seed")
    threshold_method: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = Field(0.9, gt=0, lt=1, description="for threshold_method sensitivity")
    interpretability: bool = Field(True, description="gates, integrated gradients, lead ablation, reconstruction")
    ig_steps: int = Field(32, gt=0, description="integrated-gradients quadrature steps")
    ig_per_class: int = Field(16, gt=0, description="records per class explained by integrated gradients")
    title: str = "LS-EMVAE evaluation"
    progress: bool = True
    extra: dict[str, Any] = Field(default_factory=dict, description="more entries for the report's config "
                                  "(e.g. the split scored)")


def evaluate(model: nn.Module, cohort, test_indices: Sequence[int], cfg: EvalConfig | None = None, *,
             val_indices: Sequence[int] | None = None, tasks: Mapping[str, Any] | None = None,
             out_dir: str | Path | None = None, provenance: Mapping[str, Any] | None = None) -> dict:
    """Score ``model`` on cohort rows ``test_indices`` as ``cfg`` says and (with ``out_dir``) write the report.

    ``tasks`` defaults to the cohort tasks the model has heads for. Thresholds are chosen on
    ``val_indices`` (fixed 0.5 without them). ``provenance`` adds to the report's provenance.
    Returns the results dict (also ``report.json``).
    """
    cfg = cfg or EvalConfig()
    lead_names = resolve_lead_set(cfg.leads)
    say = print if cfg.progress else (lambda *a, **k: None)
    model.eval()
    tasks = _model_tasks(model, cohort, test_indices, lead_names) if tasks is None else tasks
    if not tasks:
        raise ConfigError(f"the model's heads and the cohort's tasks ({list(cohort.tasks)}) have nothing in common")
    say(f"evaluating on {len(test_indices)} records, leads {','.join(lead_names)}, tasks {', '.join(tasks)}")
    test = _predict(model, cohort, test_indices, lead_names, tasks, cfg)
    val = _predict(model, cohort, val_indices, lead_names, tasks, cfg) if val_indices is not None and len(val_indices) else None
    names = {t: _class_names(task, test[t][0].shape[1]) for t, task in tasks.items()}
    results: dict[str, Any] = {"title": cfg.title, "tasks": _summaries(test, val, tasks, names, cfg, say)}
    gates = None
    if cfg.interpretability:
        found, gates = _interpretability(model, cohort, test_indices, lead_names, test, tasks, names, cfg, say)
        results.update(found)
    results["provenance"] = _provenance(cohort, test_indices, val_indices, lead_names, provenance)
    results["config"] = {"n_boot": cfg.n_boot, "seed": cfg.seed, "threshold_method": cfg.threshold_method,
                         "predict_kwargs": dict(cfg.predict_kwargs), "ig_steps": cfg.ig_steps,
                         "ig_per_class": cfg.ig_per_class, **cfg.extra}
    if out_dir is not None:
        record_ids = [cohort.record_ids[int(i)] for i in test_indices]
        paths = _write_outputs(Path(out_dir), results, test, tasks, names, record_ids, gates)
        say(f"report: {paths['html']}")
    return results


def _model_tasks(model: nn.Module, cohort, test_indices: Sequence[int], lead_names: Sequence[str]) -> dict[str, Any]:
    """The cohort's tasks the model has heads for (its heads probed on one record)."""
    probe_x, probe_m = load_split(cohort, [int(test_indices[0])], lead_names)
    with torch.no_grad():
        heads = set(model.forward_logits(probe_x, probe_m))
    return {n: t for n, t in cohort.tasks.items() if n in heads}


def _predict(model: nn.Module, cohort, indices: Sequence[int], lead_names: Sequence[str], tasks: Mapping[str, Any],
             cfg: EvalConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from lsemvae.data.cache import CohortDataset
    from lsemvae.train.finetune import predict

    return predict(model, CohortDataset(cohort, indices, leads=lead_names, tasks=list(tasks)), tasks,
                   **cfg.predict_kwargs)


def _summaries(test: Mapping[str, tuple], val: Mapping[str, tuple] | None, tasks: Mapping[str, Any],
               names: Mapping[str, list[str]], cfg: EvalConfig, say) -> dict[str, dict]:
    """``metrics.summarize`` of each task, thresholds from ``val`` (fixed 0.5 without it)."""
    out = {}
    for t, task in tasks.items():
        yv, pv = val[t] if val is not None else (None, None)
        out[t] = metrics.summarize(*test[t], yv, pv, names[t], threshold_method=cfg.threshold_method,
                                   target_sensitivity=cfg.target_sensitivity, n_boot=cfg.n_boot, seed=cfg.seed,
                                   multiclass=_kind(task) == "multiclass")
        say(f"  {t}: macro AUROC {format_ci(out[t]['macro']['auroc'], out[t]['macro']['auroc_ci'])}")
    return out


def _interpretability(model: nn.Module, cohort, test_indices: Sequence[int], lead_names: Sequence[str],
                      test: Mapping[str, tuple], tasks: Mapping[str, Any], names: Mapping[str, list[str]],
                      cfg: EvalConfig, say) -> tuple[dict[str, Any], tuple[np.ndarray, list[str]] | None]:
    """``({"gates", "lead_shares", "lead_ablation", "reconstruction"}, per-record gate weights and group
    names)``; gates and gate weights only for a gated model, reconstruction only for one with decoders."""
    x, mask = load_split(cohort, test_indices, lead_names)
    real = torch.from_numpy(np.asarray(cohort.sample_mask[np.asarray(test_indices, dtype=np.int64)]))
    logits_fn = crop_logits_fn(cfg.predict_kwargs.get("crop_samples"), cfg.predict_kwargs.get("n_crops", 1),
                               sample_mask=real)
    found: dict[str, Any] = {}
    gated = interpret.gate_weights(model, x, mask)
    if gated is not None:
        found["gates"] = {t: interpret.gate_summary(gated[0], test[t][0], gated[1], names[t]) for t in tasks}
    found["lead_shares"], found["lead_ablation"] = {}, {}
    for t, task in tasks.items():
        say(f"  {t}: integrated gradients ({cfg.ig_steps} steps, up to {cfg.ig_per_class} records per class) ...")
        found["lead_shares"][t] = interpret.ig_lead_shares(model, x, mask, test[t][0], t, names[t], n_steps=cfg.ig_steps,
                                                           max_per_class=cfg.ig_per_class, seed=cfg.seed)
        say(f"  {t}: lead ablation ...")
        found["lead_ablation"][t] = interpret.lead_ablation(model, x, mask, test[t][0], t, kind=_kind(task),
                                                            logits_fn=logits_fn)
    recon_target = getattr(getattr(model, "config", None), "recon_target", None)
    if recon_target is not None:
        idx = np.asarray(test_indices, dtype=np.int64)
        source = cohort.beats if recon_target == "beat" else cohort.signals
        rec = reconstruction_quality(model, x, mask, torch.from_numpy(np.array(source[idx], dtype=np.float32)),
                                     torch.from_numpy(np.asarray(cohort.lead_mask[idx])))
        if rec is not None:
            found["reconstruction"] = {"target": recon_target, **rec}
    return found, gated


def _provenance(cohort, test_indices: Sequence[int], val_indices: Sequence[int] | None, lead_names: Sequence[str],
                extra: Mapping[str, Any] | None) -> dict[str, Any]:
    from lsemvae.data.preprocess import PIPELINE_VERSION

    return {"cache_key": cohort.key, "cache_path": str(cohort.path), "pipeline_version": PIPELINE_VERSION,
            "preprocess_config": cohort.config.model_dump(mode="json"), "n_test": len(test_indices),
            "n_val": 0 if val_indices is None else len(val_indices), "leads": list(lead_names),
            "code_commit": code_commit(), **dict(extra or {})}


def _write_outputs(out: Path, results: dict, test: Mapping[str, tuple], tasks: Mapping[str, Any],
                   names: Mapping[str, list[str]], record_ids: list[str],
                   gates: tuple[np.ndarray, list[str]] | None) -> dict[str, Path]:
    """``report.{json,md,html}`` with figures, ``predictions.csv`` and (gated models) ``gates.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = write_report(out, results, predictions={t: test[t] for t in tasks})
    write_predictions(out / "predictions.csv", record_ids, test, names)
    if gates is not None:
        rows, group_names = gates
        with open(out / "gates.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["record_id", *group_names])
            w.writerows([rid, *(f"{v:.6g}" for v in row)] for rid, row in zip(record_ids, rows))
    return paths


def load_classifier(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a fine-tuned classifier (LS-EMVAE or the CNN baseline) from a checkpoint, strictly.

    Returns the module and the checkpoint (for its provenance and ``state.predict_kwargs``).
    """
    from lsemvae.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = ckpt["model_config"]
    if cfg.get("architecture") == "resnet1d":
        from lsemvae.train.baselines import build_resnet1d
        model = build_resnet1d(cfg)
    else:
        from lsemvae.model.config import ModelConfig
        from lsemvae.model.lsemvae import build_model
        model = build_model(ModelConfig.model_validate(cfg))
    missing, unexpected = model.load_state_dict(ckpt["model_state"], strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path}: checkpoint does not match its own model config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    heads = getattr(model, "heads", {})
    if not len(heads):
        raise ConfigError(f"{path}: the model has no task heads: give a fine-tuned checkpoint "
                          "(`lsemvae finetune ... --out DIR` writes DIR/model.pt), not a pretraining one")
    return model.eval(), ckpt
