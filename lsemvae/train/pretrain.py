"""Central pretraining of LS-EMVAE on 12-lead ECGs (no labels needed).

Per epoch: expert dropout (keep ``objective.expert_keep_prob``, >= 1 lead kept), augmentation,
beta(t) KL annealing, AdamW, gradient clipping; then validation on held-out patients. Every
epoch writes ``last.pt`` (full training state) and a JSON line to ``metrics.jsonl``; ``best.pt``
is the epoch with the lowest validation loss **at the final beta** (so annealing cannot make an
early epoch look best). Randomness of epoch ``t`` comes from generators seeded by (seed, t), so
``resume`` continues exactly as an uninterrupted run would.

Collapse is made visible: validation reports reconstruction R^2 per lead (from all 12 leads and
from the 6 limb leads only, i.e. reconstructing V1-V6 from the limb leads) and the number of
active latent dimensions (Burda et al. 2016: Var_x(E_q[z]) > 0.01).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from lsemvae.config import StrictModel
from lsemvae.errors import LSEMVAEError
from lsemvae.leads import LEADS_12, LIMB_LEADS, lead_index
from lsemvae.model.fusion import expert_dropout
from lsemvae.model.losses import kl_beta, vae_objective
from lsemvae.model.lsemvae import LSEMVAE
from lsemvae.train.augment import AugmentConfig, augment
from lsemvae.train.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from lsemvae.train.device import autocast, grad_scaler, loader_options, to_device
from lsemvae.train.distributed import (
    EpochBatches, Processes, all_sum, epoch_order, gather_rows, gather_shards, shard,
)


class PretrainConfig(StrictModel):
    epochs: int = Field(40, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: epoch t trains at lr * (1 + cos(pi * (t - 1) / epochs)) / 2")
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    augment: AugmentConfig = AugmentConfig(crop_samples=500, scale_jitter=0.1, noise_std=0.05)


def epoch_lr(cfg: PretrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based); a function of the epoch alone, so ``resume`` follows it exactly."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
    return cfg.lr


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def _target(batch: dict, model: LSEMVAE) -> torch.Tensor:
    return batch["beat"] if model.config.recon_target == "beat" else batch["x"]


@dataclass(frozen=True)
class Runtime:
    """Where and how pretraining runs (``--device``, ``--precision``, ``--loader-workers``, torchrun's processes).
    The default, one CPU process in fp32 reading batches in the main process, is what ran before these existed."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    loader_workers: int = 0
    procs: Processes = Processes()


class PretrainObjective(nn.Module):
    """The model and its pretraining loss as one module. DistributedDataParallel wraps this, so its search for
    parameters without a gradient starts from the loss: the compact profile's fusion gate is in the model's outputs
    but not in its loss (uniform bound weights), and a search from the outputs would wait for its gradient forever."""

    def __init__(self, model: LSEMVAE):
        super().__init__()
        self.model = model

    def forward(self, x, lead_mask, fusion_mask, target, target_mask, *, beta: float, noise=None):
        out = self.model(x, lead_mask, fusion_mask=fusion_mask, noise=noise)
        return vae_objective(out, target, beta=beta, objective=self.model.config.objective, target_mask=target_mask)


def train_epoch(model, dataset: Dataset, cfg: PretrainConfig, optimizer, epoch: int, *, progress: bool = True,
                runtime: Runtime = Runtime(), scaler=None) -> dict[str, float]:
    """One epoch. ``model`` is an :class:`LSEMVAE` or, under torchrun, its :class:`PretrainObjective` in
    DistributedDataParallel: ``cfg.batch_size`` records per process, and every process draws the whole batch's
    randomness (:mod:`lsemvae.train.distributed`)."""
    objective = PretrainObjective(model) if isinstance(model, LSEMVAE) else model
    core = getattr(objective, "module", objective).model
    procs = runtime.procs
    objective.train()
    torch.manual_seed(cfg.seed * 7919 + epoch)  # reparameterisation noise
    sampler = EpochBatches(epoch_order(len(dataset), cfg.batch_size * procs.world, epoch_generator(cfg.seed, epoch)),
                           procs)
    # its own generator: a DataLoader without one draws its workers' seed from the global RNG, the noise's
    loader = DataLoader(dataset, batch_sampler=sampler, generator=epoch_generator(cfg.seed, epoch, stream=2),
                        **loader_options(runtime.device, runtime.loader_workers))
    gen = epoch_generator(cfg.seed, epoch, stream=1)
    beta = kl_beta(epoch, core.config.objective)
    sums: dict[str, float] = {}
    n = 0
    for batch, share in tqdm(zip(loader, sampler.shares()), total=len(sampler), desc=f"pretrain epoch {epoch}",
                             leave=False, disable=not (progress and procs.main)):
        x, mask = gather_rows(batch["x"], share, procs), gather_rows(batch["lead_mask"], share, procs)
        keep = expert_dropout(mask, core.config.objective.expert_keep_prob, gen)
        x = augment(x, cfg.augment, gen)
        if procs.world > 1:  # this process' rows of the batch, and of its sampling noise
            x, keep = x[share.rows], keep[share.rows]
        batch = to_device(batch, runtime.device)
        noise = _rows_of_noise(share) if procs.world > 1 else None
        with autocast(runtime.device, runtime.precision):
            loss, parts = objective(to_device(x, runtime.device), batch["lead_mask"], to_device(keep, runtime.device),
                                    _target(batch, core), batch.get("beat_mask"), beta=beta, noise=noise)
        if not math.isfinite(loss.item()):
            raise LSEMVAEError(f"pretraining loss is {loss.item()} at epoch {epoch}: lower --lr or check the data")
        _step(objective, loss if procs.world == 1 else loss * share.weight, optimizer, cfg, scaler)
        b = share.count
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * b
        n += b
    keys = list(sums)
    totals = all_sum([sums[k] for k in keys] + [n], procs)
    sums, n = dict(zip(keys, totals[:-1])), totals[-1]
    return {f"train_{k}": v / max(n, 1) for k, v in sums.items()}


def _step(model, loss: torch.Tensor, optimizer, cfg: PretrainConfig, scaler) -> None:
    """Backward, clip, step; with a loss scaler (fp16) the gradients are unscaled before clipping."""
    optimizer.zero_grad()
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()


def _rows_of_noise(share):
    """Sampling noise drawn for the whole batch (as one process draws it), this process' rows kept."""
    def noise(mu: torch.Tensor) -> torch.Tensor:
        whole = torch.randn((mu.shape[0], share.size, *mu.shape[2:]), dtype=mu.dtype, device=mu.device)
        return whole[:, share.rows.to(mu.device)]
    return noise


@torch.no_grad()
def validate(model: LSEMVAE, dataset: Dataset, *, batch_size: int = 128, runtime: Runtime = Runtime()) -> dict[str, Any]:
    """Loss at beta_max, R^2 per lead (12 -> 12 and 6 limb -> 12), KL, active latent dimensions.

    Several processes validate every ``world``-th record each; the per-record outputs are gathered back in order,
    so every process computes the metrics of the whole validation set."""
    model = getattr(model, "module", model)
    procs = runtime.procs
    model.eval()
    obj = model.config.objective
    limb = torch.zeros(12, dtype=torch.bool, device=runtime.device)
    limb[[lead_index(l) for l in LIMB_LEADS]] = True
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "align": 0.0}
    outputs: dict[str, list] = {"target": [], "recon12": [], "recon6": [], "mask": [], "mu": []}
    n = 0
    part = dataset if procs.world == 1 else Subset(dataset, shard(len(dataset), procs))
    for batch in DataLoader(part, batch_size=batch_size, **loader_options(runtime.device, runtime.loader_workers)):
        batch = to_device(batch, runtime.device)
        x, mask = batch["x"], batch["lead_mask"]
        with autocast(runtime.device, runtime.precision):
            out = model(x, mask)
            _, parts = vae_objective(out, _target(batch, model), beta=obj.beta_max, objective=obj)
            recon6 = model(x, mask & limb).recon
        for k in sums:
            sums[k] += parts[k] * x.shape[0]
        n += x.shape[0]
        for k, v in (("target", _target(batch, model)), ("recon12", out.recon), ("recon6", recon6), ("mask", mask),
                     ("mu", out.mu)):
            outputs[k].append(v.float() if v.is_floating_point() else v)
    totals = all_sum(list(sums.values()) + [n], procs)
    sums, n = dict(zip(sums, totals[:-1])), totals[-1]
    whole = {k: gather_shards(torch.cat(v), len(dataset), procs).cpu() for k, v in outputs.items()}
    target, mask = whole["target"], whole["mask"]
    active = int((whole["mu"].var(0) > 0.01).sum())
    metrics = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
    metrics["val_r2_12to12"] = reconstruction_r2(whole["recon12"], target, mask)
    metrics["val_r2_6to12"] = reconstruction_r2(whole["recon6"], target, mask)
    metrics["val_r2_mean"] = float(np.nanmean(list(metrics["val_r2_12to12"].values())))
    metrics["val_r2_precordial_from_limb"] = float(np.nanmean([metrics["val_r2_6to12"][l] for l in LEADS_12[6:]]))
    metrics["val_active_dims"] = active
    metrics["latent_dim"] = model.config.latent_dim
    return metrics


def reconstruction_r2(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Per lead: 1 - SSE / SST over the records that have the lead (SST around the lead's mean waveform)."""
    out = {}
    for i, lead in enumerate(LEADS_12):
        m = mask[:, i]
        if m.sum() < 2:
            out[lead] = float("nan")
            continue
        t, r = target[m, i], recon[m, i]
        sst = ((t - t.mean(0)) ** 2).sum()
        out[lead] = float(1.0 - ((r - t) ** 2).sum() / sst.clamp_min(1e-12))
    return out


def pretrain(model: LSEMVAE, train_set: Dataset, val_set: Dataset, cfg: PretrainConfig, out_dir: str | Path, *,
             provenance: dict[str, Any] | None = None, resume: bool = False, progress: bool = True,
             runtime: Runtime = Runtime()) -> dict[str, Any]:
    """Train, validate and checkpoint every epoch under ``out_dir``; return the best epoch's metrics.

    Under torchrun every process trains and validates; rank 0 alone writes ``out_dir`` and shows progress."""
    out_dir = Path(out_dir)
    main = runtime.procs.main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    model.to(runtime.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = grad_scaler(runtime.device, runtime.precision)
    last, metrics_path = out_dir / "last.pt", out_dir / "metrics.jsonl"
    start, state = 1, {"best_val_loss": float("inf"), "best_epoch": 0, "best_metrics": {}}
    if resume:
        ckpt = load_checkpoint(last)
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        restore_rng(ckpt["rng"])
        start, state = ckpt["epoch"] + 1, dict(ckpt["state"])
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
    elif main and metrics_path.exists():
        metrics_path.unlink()  # a fresh run: its log starts empty
    trained = _parallel(model, runtime)
    provenance = {**(provenance or {}), "pretrain_config": cfg.model_dump(mode="json")}
    for epoch in tqdm(range(start, cfg.epochs + 1), desc="pretrain", disable=not (progress and main),
                      initial=start - 1, total=cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg, epoch)
        row = {"epoch": epoch, **train_epoch(trained, train_set, cfg, optimizer, epoch, progress=progress,
                                             runtime=runtime, scaler=scaler),
               **validate(model, val_set, runtime=runtime)}
        if row["val_loss"] < state["best_val_loss"]:
            state = {"best_val_loss": row["val_loss"], "best_epoch": epoch, "best_metrics": row}
            if main:
                save_checkpoint(out_dir / "best.pt", model=model, epoch=epoch, provenance=provenance, state=state)
        if scaler is not None:
            state = {**state, "grad_scaler": scaler.state_dict()}
        if main:
            save_checkpoint(last, model=model, epoch=epoch, optimizer=optimizer, provenance=provenance, state=state)
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
    return state


def _parallel(model: LSEMVAE, runtime: Runtime):
    """The model's :class:`PretrainObjective` in DistributedDataParallel under torchrun (parameters outside the loss,
    the fusion gate, and encoders of leads absent from a batch get no gradient, hence ``find_unused_parameters``);
    the model itself for one process."""
    if runtime.procs.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(PretrainObjective(model), device_ids=ids, find_unused_parameters=True)


#: Training settings per model profile; ``faithful`` keeps the paper's code's (AdamW, lr 5e-4, weight decay
#: 1e-5, 100 epochs, gradient clip 1.0), with its broken gradient accumulation (gradients zeroed every batch,
#: so only every second batch counted) replaced by plain batches of 128 and no augmentation.
PRETRAIN_PROFILES: dict[str, PretrainConfig] = {
    "compact": PretrainConfig(),
    "faithful": PretrainConfig(epochs=100, batch_size=128, lr=5e-4, weight_decay=1e-5, grad_clip=1.0, augment=AugmentConfig()),
}
