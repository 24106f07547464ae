"""Supervised fine-tuning of ANY classifier with ``forward_logits(x, lead_mask) -> {task: logits}``.

LS-EMVAE (``probe``: encoders frozen, fusion gate + heads trained; ``full``: everything, encoders
at a lower learning rate), the from-scratch CNN and the random-encoder probe all go through the
same loop, folds and early stopping. Early stopping uses validation macro AUROC (mean over tasks),
never the test split.

Central fine-tuning only: federated sites train in :mod:`lsemvae.federation.training`. Both
optimise the same per-record task loss (:func:`lsemvae.model.losses.per_record_task_loss`): the
central loss is its mean over the records labelled for each task.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Literal, Mapping

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lsemvae.config import StrictModel
from lsemvae.errors import LSEMVAEError
from lsemvae.model.losses import positive_weights, task_loss
from lsemvae.model.lsemvae import LSEMVAE
from lsemvae.train.augment import AugmentConfig, augment
from lsemvae.train.metrics import auroc

logger = logging.getLogger(__name__)


class FinetuneConfig(StrictModel):
    mode: Literal["probe", "full"] = "full"
    epochs: int = Field(40, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0, description="learning rate of heads and fusion")
    encoder_lr_scale: float = Field(0.3, gt=0, description="encoders learn at lr * this (full mode)")
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(10, gt=0, description="epochs without validation AUROC gain before stopping")
    min_steps: int = Field(300, ge=0, description="never stop early before this many optimizer steps: a small "
                           "label set takes few steps per epoch (75 records: 3), too few for patience in epochs")
    probe_first: bool = Field(False, description="full mode: train fusion + heads on the frozen encoders to their best "
                              "validation epoch first, then everything (LP-FT, Kumar et al. 2022): new heads then "
                              "start from a fit instead of sending random gradients into the pretrained encoders")
    seed: int = 0
    eval_crops: int = Field(3, ge=1, description="average logits over this many crop windows (1 = whole signal)")
    augment: AugmentConfig = AugmentConfig(crop_samples=500, scale_jitter=0.1, noise_std=0.05)


def _kind(task) -> str:
    return task.kind if hasattr(task, "kind") else str(task)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, tasks: Mapping[str, Any], *,
                    class_weights: Mapping[str, torch.Tensor] | None = None, max_grad_norm: float | None = None,
                    augmentation: AugmentConfig | None = None, generator: torch.Generator | None = None,
                    progress: bool = False) -> dict[str, float]:
    """One pass over ``loader`` (batches of dicts with ``x``, ``lead_mask``, ``y``); returns mean losses.

    ``tasks``: name -> Task (or its kind string). ``class_weights``: name -> pos_weight tensor.
    ``max_grad_norm`` clips the batch gradient (leave None under Opacus, which clips per sample).
    """
    model.train()
    class_weights = class_weights or {}
    totals = {name: 0.0 for name in tasks}
    total, n = 0.0, 0
    for batch in tqdm(loader, desc="train", leave=False, disable=not progress):
        x, mask = batch["x"], batch["lead_mask"]
        if x.shape[0] == 0:  # Opacus' Poisson sampling can draw an empty batch
            continue
        if augmentation is not None:
            x = augment(x, augmentation, generator if generator is not None else torch.Generator(),
                        sample_mask=batch.get("sample_mask"), lead_mask=mask)
        logits = model.forward_logits(x, mask)
        losses = {name: task_loss(logits[name], batch["y"][name], _kind(t), pos_weight=class_weights.get(name))
                  for name, t in tasks.items()}
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise LSEMVAEError("fine-tuning loss is not finite: lower the learning rate or check the labels")
        optimizer.zero_grad()
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
        optimizer.step()
        b = x.shape[0]
        total += loss.item() * b
        for name, v in losses.items():
            totals[name] += v.item() * b
        n += b
    return {"loss": total / max(n, 1), **{f"loss_{k}": v / max(n, 1) for k, v in totals.items()}, "n": n}


def probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.softmax(logits, -1) if kind == "multiclass" else torch.sigmoid(logits)


def crop_windows(length: int, crop: int | None, n_crops: int) -> list[slice]:
    """``n_crops`` evenly spaced windows of ``crop`` samples (the whole signal when it is shorter)."""
    if crop is None or crop >= length or n_crops == 1:
        return [slice(0, length)]
    return [slice(int(s), int(s) + crop) for s in np.linspace(0, length - crop, n_crops).round()]


@torch.no_grad()
def crop_averaged_logits(model: nn.Module, x: torch.Tensor, lead_mask: torch.Tensor, *,
                         sample_mask: torch.Tensor | None = None, crop_samples: int | None = None,
                         n_crops: int = 1) -> dict[str, torch.Tensor]:
    """``{task: logits}`` of one batch averaged over :func:`crop_windows` (the caller sets eval mode).

    With ``crop_samples`` (the training crop length) a model trained on crops is scored on inputs
    like the ones it saw; every scoring path (validation, test, ``lsemvae predict``) goes through here.
    ``sample_mask [B, T]`` (False on the zero padding after a short record's end) puts the windows
    inside each record's real samples, so padding is never scored as signal: a 7.3 s record gets
    its crops from its 7.3 s; a record shorter than a window is scored on its real samples alone
    when the model reads any length (its ``reads_any_length``), else on the padded window.
    """
    length = x.shape[-1]
    real = sample_mask.sum(-1) if sample_mask is not None else torch.full((len(x),), length)
    full = torch.nonzero(real == length).flatten().tolist()
    rows: dict[int, dict[str, torch.Tensor]] = {}

    def averaged(xx: torch.Tensor, mm: torch.Tensor, windows: list[slice]) -> dict[str, torch.Tensor]:
        outs = [model.forward_logits(xx[..., w], mm) for w in windows]
        return {name: torch.stack([o[name] for o in outs]).mean(0) for name in outs[0]}

    if full:
        batch = averaged(x[full], lead_mask[full], crop_windows(length, crop_samples, n_crops))
        rows.update({i: {t: v[k] for t, v in batch.items()} for k, i in enumerate(full)})
    usual = crop_windows(length, crop_samples, n_crops)
    for i in sorted(set(range(len(x))) - set(full)):
        windows = crop_windows(int(real[i]), crop_samples, n_crops)
        if windows[0].stop - windows[0].start != usual[0].stop - usual[0].start and not getattr(
                model, "reads_any_length", False):
            windows = usual  # a model that reads one length only: the padded window
        one = averaged(x[i:i + 1], lead_mask[i:i + 1], windows)
        rows[i] = {t: v[0] for t, v in one.items()}
    return {name: torch.stack([rows[i][name] for i in range(len(x))]) for name in rows[0]}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, tasks: Mapping[str, Any], *, batch_size: int = 128,
            crop_samples: int | None = None, n_crops: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{task: (y_true [N, n_out], probability [N, n_out])}`` in eval mode (deterministic),
    logits averaged over crops as :func:`crop_averaged_logits` does."""
    model.eval()
    ys: dict[str, list] = {t: [] for t in tasks}
    ps: dict[str, list] = {t: [] for t in tasks}
    for batch in DataLoader(dataset, batch_size=batch_size):
        logits = crop_averaged_logits(model, batch["x"], batch["lead_mask"], sample_mask=batch.get("sample_mask"),
                                      crop_samples=crop_samples, n_crops=n_crops)
        for name, t in tasks.items():
            ys[name].append(batch["y"][name].numpy())
            ps[name].append(probabilities(logits[name], _kind(t)).numpy())
    return {t: (np.concatenate(ys[t]), np.concatenate(ps[t])) for t in tasks}


def macro_auroc(predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean over tasks of the macro (over classes) AUROC."""
    return float(np.nanmean([np.nanmean(auroc(y, p)) for y, p in predictions.values()]))


def set_trainable(model: nn.Module, mode: str) -> None:
    """``probe`` freezes the encoders (and leaves decoders out); ``full`` trains everything but decoders."""
    for name, p in model.named_parameters():
        frozen = name.startswith("decoders.") or (mode == "probe" and name.startswith("encoders."))
        p.requires_grad_(not frozen)


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    enc = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoders.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoders.")]
    groups = [{"params": rest, "lr": cfg.lr}]
    if enc:
        groups.append({"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def class_weights_from(dataset: Dataset, tasks: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """pos_weight per binary/multilabel task from the training labels (negatives / positives)."""
    labels = {t: np.stack([dataset[i]["y"][t].numpy() for i in range(len(dataset))]) for t in tasks}
    return {t: positive_weights(labels[t]) for t, task in tasks.items() if _kind(task) != "multiclass"}


class _CachedPosteriors(Dataset):
    """Items whose ``x`` is a record's per-lead posteriors ``[12, 2D]`` from frozen encoders."""

    def __init__(self, model: LSEMVAE, dataset: Dataset, batch_size: int = 128):
        model.eval()
        self.items = []
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size):
                mu, logvar = model.encode(batch["x"], batch["lead_mask"])
                feats = torch.cat([mu, logvar], -1)
                for i in range(feats.shape[0]):
                    self.items.append({"x": feats[i], "lead_mask": batch["lead_mask"][i],
                                       "y": {t: v[i] for t, v in batch["y"].items()}})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class _ProbeOnCache(nn.Module):
    """forward_logits over cached posteriors: the model's own fusion and heads, nothing copied."""

    def __init__(self, model: LSEMVAE):
        super().__init__()
        self.model = model

    def forward_logits(self, feats: torch.Tensor, lead_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = feats.chunk(2, dim=-1)
        return self.model.fuse_and_predict(mu, logvar, lead_mask)[1]


#: Fewer validation cases than this in a class (its positives, or its negatives if rarer) and the choice of epoch
#: by validation AUROC means little: by Hanley & McNeil's (1982) formula the standard error of an AUROC of 0.8
#: with 30 cases of the rarer label (and many of the other) is about 0.05, as large as the differences between the
#: epochs early stopping chooses from; with 13 it is about 0.07 (and an AUROC of 1.000 there is no evidence).
MIN_VALIDATION_CASES = 30


def auroc_standard_error(auroc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC from ``n_pos`` positive and ``n_neg`` negative cases."""
    q1, q2 = auroc / (2 - auroc), 2 * auroc ** 2 / (1 + auroc)
    var = (auroc * (1 - auroc) + (n_pos - 1) * (q1 - auroc ** 2) + (n_neg - 1) * (q2 - auroc ** 2)) / (n_pos * n_neg)
    return float(math.sqrt(max(var, 0.0)))


def thin_validation(predictions: Mapping[str, tuple[np.ndarray, np.ndarray]], classes: Mapping[str, Any],
                    best_epoch: int, best_auroc: float) -> list[str]:
    """Warnings for classes whose validation labels are too few (:data:`MIN_VALIDATION_CASES`) for early stopping."""
    out = []
    for task, (y, _) in predictions.items():
        names = list(getattr(classes.get(task), "classes", ()) or ()) or [f"class {c}" for c in range(y.shape[1])]
        for c in range(y.shape[1]):
            pos, neg = int((y[:, c] == 1).sum()), int((y[:, c] == 0).sum())
            rare, label = min((pos, "positive"), (neg, "negative"))
            output = task if y.shape[1] == 1 else f"{task}:{names[c] if c < len(names) else c}"
            if rare < MIN_VALIDATION_CASES:
                se = auroc_standard_error(0.8, max(rare, 1), max(pos + neg - rare, 1))
                out.append(f"early stopping on little evidence: the validation part has only {rare} {label} label(s) "
                           f"for {output} ({pos} positive, {neg} negative; fewer "
                           f"than {MIN_VALIDATION_CASES}). The validation AUROC that chose epoch {best_epoch} "
                           f"({best_auroc:.3f}) has a standard error of about {se:.2f} (Hanley-McNeil at AUROC 0.8), "
                           "as large as the differences between epochs, so the choice of epoch means little: give "
                           "validation more records (--val-fraction) or fix the number of epochs (--epochs)")
    return out


def finetune(model: nn.Module, train_set: Dataset, val_set: Dataset, tasks: Mapping[str, Any], cfg: FinetuneConfig,
             *, progress: bool = True, log: list | None = None) -> dict[str, Any]:
    """Train with early stopping on validation macro AUROC; the model ends with its best weights.

    ``probe`` on an LS-EMVAE encodes every record once with the frozen encoders (whole signal,
    no augmentation, as the paper's probe) and trains fusion + heads on those posteriors: the
    same optimisation as running the frozen encoders every step, at a fraction of the cost.
    Returns ``{"best_epoch", "best_val_auroc", "history", "predict_kwargs", "warnings"}`` (the crop
    averaging to use with :func:`predict` on test, the same as validation used; ``warnings``: classes
    with too few validation labels for the choice of epoch to mean anything, also logged).
    """
    if len(train_set) == 0:
        raise LSEMVAEError("fine-tuning set is empty: check the folds, lead set and label fraction")
    history = log if log is not None else []
    if cfg.probe_first and cfg.mode == "full" and isinstance(model, LSEMVAE):
        finetune(model, train_set, val_set, tasks, cfg.model_copy(update={"mode": "probe", "probe_first": False}),
                 progress=progress, log=history)
    torch.manual_seed(cfg.seed)
    set_trainable(model, cfg.mode)
    weights = class_weights_from(train_set, tasks)
    crop, n_crops = cfg.augment.crop_samples, cfg.eval_crops
    trained = model
    if cfg.mode == "probe" and isinstance(model, LSEMVAE):
        train_set, val_set = _CachedPosteriors(model, train_set), _CachedPosteriors(model, val_set)
        trained, crop, n_crops = _ProbeOnCache(model), None, 1
        cfg = cfg.model_copy(update={"augment": AugmentConfig()})
    optimizer = make_optimizer(model, cfg)
    best = {"auroc": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    steps = 0
    for epoch in tqdm(range(1, cfg.epochs + 1), desc=f"finetune ({cfg.mode})", disable=not progress):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen)
        train = train_one_epoch(trained, loader, optimizer, tasks, class_weights=weights, max_grad_norm=cfg.grad_clip,
                                augmentation=cfg.augment, generator=gen)
        steps += len(loader)
        val_predictions = predict(trained, val_set, tasks, crop_samples=crop, n_crops=n_crops)
        val = macro_auroc(val_predictions)
        history.append({"mode": cfg.mode, "epoch": epoch, "train_loss": train["loss"], "val_macro_auroc": val})
        if val > best["auroc"]:
            best = {"auroc": val, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        elif epoch - best["epoch"] >= cfg.patience and steps >= cfg.min_steps:
            break
    model.load_state_dict(best["state"])
    warnings = thin_validation(val_predictions, tasks, best["epoch"], best["auroc"])
    for warning in warnings:
        logger.warning("%s", warning)
    return {"best_epoch": best["epoch"], "best_val_auroc": best["auroc"], "history": history,
            "predict_kwargs": {"crop_samples": crop, "n_crops": n_crops}, "warnings": warnings}



#: ``faithful`` is the paper's probe protocol (Adam 1e-4, batch 32, 50 epochs,
#: frozen encoders); we still keep the best validation epoch rather than the last.
FINETUNE_PROFILES: dict[str, FinetuneConfig] = {
    # Weight decay 0.05 with the compact profile's head dropout 0.5: the larger leads+fused head
    # otherwise peaks within a few epochs (chosen on PTB-XL fold-9 validation, see git log).
    "compact": FinetuneConfig(weight_decay=0.05),
    "faithful": FinetuneConfig(mode="probe", epochs=50, batch_size=32, lr=1e-4, weight_decay=0.0, patience=50,
                               eval_crops=1, augment=AugmentConfig()),
}
