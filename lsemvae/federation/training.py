"""One site's local work in a round: DP-SGD fine-tuning of its groups, and aggregate-only evaluation.

Only the groups the site trains (its leads' encoders, the fusion, its tasks' heads) have
``requires_grad``: the rest of the model is frozen, so a 6-lead site cannot move a precordial
encoder, and Opacus computes per-sample gradients only where they are needed.

FedProx: the proximal term mu/2 ||w - w_global||^2 does not depend on any record, so it is
applied after the private step as a decoupled pull toward the global weights
(w <- w - lr * mu * (w - w_global)). Adding it to the per-sample loss instead would be wrong
under DP-SGD: Opacus' hooks would never see it and the noisy gradient would overwrite it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from lsemvae.federation.groups import group_of, groups_for
from lsemvae.model.losses import per_record_loss, positive_weights


@dataclass
class RoundResult:
    arrays: dict[str, np.ndarray]
    group_weights: dict[str, float]
    num_examples: int
    train_loss: float
    history: list | None
    seconds: float


@dataclass
class EvaluationResult:
    """The evaluation split's scores stay in here, at the site; only aggregates of them are sent."""

    loss: float
    n: int
    gates: dict[str, float]
    targets: dict[str, np.ndarray]   # task -> [N, C] labels (NaN = unlabelled)
    scores: dict[str, np.ndarray]    # task -> [N, C] probabilities


def task_kinds(tasks: dict) -> dict[str, str]:
    return {name: task.kind for name, task in tasks.items()}


# Parameters used directly by a module whose forward takes several tensors: Opacus cannot compute
# their per-sample gradients, so under DP they keep their (pretrained/global) value. The HiME gate's
# four group biases; the gate's scoring network (the rest of "fusion") does train.
DP_FROZEN = ("fusion.gate.group_bias",)


def freeze_outside(model: torch.nn.Module, groups: set[str], *, dp: bool) -> list[torch.nn.Parameter]:
    """Train only parameters of ``groups`` (minus DP_FROZEN under DP); return them."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(group_of(name) in groups and not (dp and name in DP_FROZEN))
        if p.requires_grad:
            trainable.append(p)
    return trainable


def trained_groups(model, data, site, *, train_encoders: bool) -> set[str]:
    """The groups a site trains in a round: its leads' encoders (unless a probe), fusion, its tasks' heads."""
    groups = groups_for(site.lead_names, data.tasks) & {group_of(k) for k in model.state_dict()}
    if not train_encoders:  # federated probe: the pretrained encoders stay fixed and are not sent
        groups = {g for g in groups if not g.startswith("encoders.")}
    return groups


def train_round(model, data, site, *, lr: float, batch_size: int, local_epochs: int, proximal_mu: float,
                dp: bool, noise_multiplier: float | None, history: list | None, seed: int | None,
                train_encoders: bool = True) -> RoundResult:
    """Fine-tune ``model`` (already holding the global weights) on the site's training split.

    Under DP, batches and noise come from the site's own OS randomness (``seed`` must be None); without
    DP, ``seed`` makes the round reproducible.
    """
    from lsemvae.privacy.dp import make_private, plain_state_dict
    from lsemvae.privacy.randomness import os_seed

    if dp and seed is not None:
        raise ValueError("a DP round takes no seed: its randomness is the site's own (lsemvae.privacy.randomness)")
    seed = os_seed() if seed is None else seed
    started = time.perf_counter()
    groups = trained_groups(model, data, site, train_encoders=train_encoders)
    trainable = freeze_outside(model, groups, dp=dp)
    model.train()   # Opacus checks the mode when it wraps the model (the site may have just evaluated it)
    global_copy = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_set = data.dataset(data.train_idx, site.lead_names)
    loader = DataLoader(train_set, batch_size=min(batch_size, len(train_set)), shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(trainable, lr=lr)
    session = None
    torch.manual_seed(seed)
    if dp:   # Poisson batches and noise from OS randomness (make_private replaces the loader)
        model, optimizer, loader, session = make_private(
            model, optimizer, loader, noise_multiplier=noise_multiplier, max_grad_norm=site.privacy.max_grad_norm,
            history=history, accountant=site.privacy.accountant)
    model.train()
    pull = _proximal_pull(model, global_copy, lr * proximal_mu)
    kinds, weights = task_kinds(data.tasks), _positive_weights(data)
    total, count = 0.0, 0
    for _ in range(local_epochs):
        for batch in loader:
            loss = _step(model, batch, kinds, weights, optimizer, session)
            pull()
            total, count = total + float(loss.detach().sum()), count + int(loss.numel())
    state = plain_state_dict(model)
    return RoundResult(
        arrays={k: v.numpy() for k, v in state.items() if group_of(k) in groups},
        group_weights={g: w for g, w in data.group_weights(site.lead_names).items() if g in groups},
        num_examples=len(data.train_idx),
        train_loss=total / count if count else math.nan,
        history=session.history if session is not None else None,
        seconds=time.perf_counter() - started,
    )


def _step(model, batch, kinds: dict, weights: dict, optimizer, session):
    """One optimiser step on a batch (DP: clip, noise from a fresh OS seed, step); its per-record losses."""
    optimizer.zero_grad()
    out = model(batch["x"], batch["lead_mask"], decode=False)
    loss = per_record_loss(out.logits, batch["y"], kinds, weights)
    if session is not None:
        session.backward(loss)
        session.step()
    else:
        loss.mean().backward()
        optimizer.step()
    return loss


def _positive_weights(data) -> dict:
    """Per task, negatives / positives among the site's training labels (class balance of its own data)."""
    return {t: positive_weights(np.asarray(data.cohort.labels[t])[data.train_idx])
            for t, task in data.tasks.items() if task.kind != "multiclass"}


def _proximal_pull(model, global_copy: dict, rate: float):
    """FedProx's decoupled pull towards the global weights after each step (nothing when ``rate`` is 0)."""
    named = dict(model.named_parameters())
    targets = {n: named[n] for n in named if n.removeprefix("_module.") in global_copy} if rate > 0 else {}

    @torch.no_grad()
    def pull() -> None:
        for n, p in targets.items():
            p.sub_(rate * (p - global_copy[n.removeprefix("_module.")]))

    return pull


@torch.no_grad()
def evaluate(model, data, site, *, batch_size: int = 128) -> EvaluationResult:
    """Loss, mean HiME gate weight per lead group, labels and scores on the evaluation split.

    The caller releases only aggregates of these (lsemvae.federation.private_eval).
    """
    model.eval()
    loader = DataLoader(data.dataset(data.eval_idx, site.lead_names), batch_size=batch_size, shuffle=False)
    kinds = task_kinds(data.tasks)
    scores: dict[str, list] = {t: [] for t in data.tasks}
    targets: dict[str, list] = {t: [] for t in data.tasks}
    total, n = 0.0, 0
    gate_sum, groups = 0.0, ()
    for batch in loader:
        out = model(batch["x"], batch["lead_mask"], decode=False)
        loss = per_record_loss(out.logits, batch["y"], kinds)
        total, n = total + float(loss.sum()), n + int(loss.numel())
        gate_sum = gate_sum + out.gates.double().sum(0)
        groups = out.mixture.names
        for t, kind in kinds.items():
            p = torch.softmax(out.logits[t], -1) if kind == "multiclass" else torch.sigmoid(out.logits[t])
            scores[t].append(p.numpy())
            targets[t].append(batch["y"][t].numpy())
    gates = {g: float(w) / n for g, w in zip(groups, gate_sum)} if n else {}
    return EvaluationResult(
        loss=total / n if n else math.nan, n=n, gates=gates,
        targets={t: np.concatenate(v) for t, v in targets.items() if v},
        scores={t: np.concatenate(v).astype(np.float64) for t, v in scores.items() if v})
