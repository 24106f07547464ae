"""Interpretability: HiME gate weights, per-lead integrated gradients, lead ablation.

Works on any classifier with ``forward_logits(x [B,12,T], lead_mask [B,12]) -> {task: [B,n]}``;
gate weights additionally need ``forward(x, lead_mask)`` to return an object with ``.gates``
``[B, G]`` (LS-EMVAE's ``ModelOutput``; component names from ``.mixture.names``).

Integrated gradients (written here with torch, no Captum): straight-line path from a zero
baseline to the input, target = the logit of one class (the positive class of a binary task).
The path integral is computed with ``n_steps`` Gauss-Legendre nodes in ``t`` with ``alpha = t**2``:
the path is unchanged, only the nodes are denser near the baseline, where networks with
GroupNorm change fastest (the normalisation makes them nearly scale-invariant away from 0).
Measured at 32 steps on randomly initialised models (4 records), the completeness error fell
from 24% to 7% of ``f(x) - f(0)`` for the compact LS-EMVAE and from 92% to 26% for the ReLU CNN
baseline; smooth (GELU/tanh) networks converge much faster than ReLU ones. The completeness
error is therefore always measured and reported, never assumed.

Lead share: a lead's attribution is its IG summed over time (these sum over leads to
``f(x) - f(0)``, completeness); its share is ``|A_lead| / sum_leads |A|``, so shares of the
present leads sum to 1 (absent leads are 0 in the input and get exactly 0). Unlike the paper's
IGAR (min-max scaling of the signed attributions), strongly negative evidence counts as
important.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lsemvae.leads import LEADS_12, lead_index
from lsemvae.train import metrics


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------

def to_probabilities(logits: Tensor | np.ndarray, kind: str) -> np.ndarray:
    """Sigmoid for binary/multi-label tasks, softmax over classes for multi-class."""
    t = torch.as_tensor(logits, dtype=torch.float32)
    p = torch.softmax(t, dim=-1) if kind == "multiclass" else torch.sigmoid(t)
    return p.detach().cpu().numpy().astype(np.float64)


@torch.no_grad()
def batched_logits(model: nn.Module, x: Tensor, lead_mask: Tensor, *, batch_size: int = 64) -> dict[str, np.ndarray]:
    """``forward_logits`` over ``x`` in chunks, model in eval mode: ``{task: [N, n_out]}``."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), batch_size):
        for task, v in model.forward_logits(x[i:i + batch_size], lead_mask[i:i + batch_size]).items():
            out.setdefault(task, []).append(v.float().cpu().numpy())
    return {task: np.concatenate(v) for task, v in out.items()}


def drop_leads(x: Tensor, lead_mask: Tensor, leads: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Copies of ``x`` and ``lead_mask`` with ``leads`` removed (masked and zeroed)."""
    rows = [lead_index(name) for name in leads]
    x, lead_mask = x.clone(), lead_mask.clone()
    x[:, rows] = 0.0
    lead_mask[:, rows] = False
    return x, lead_mask


# ---------------------------------------------------------------------------------------------
# gates
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def gate_weights(model: nn.Module, x: Tensor, lead_mask: Tensor, *, batch_size: int = 64
                 ) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Per-record gate weights ``[N, G]`` and component names, or None if the model has no gates."""
    kwargs = {"decode": False} if "decode" in inspect.signature(model.forward).parameters else {}
    model.eval()
    chunks, names = [], None
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size], lead_mask[i:i + batch_size], **kwargs)
        gates = getattr(out, "gates", None)
        if gates is None:
            return None
        chunks.append(gates.float().cpu().numpy())
        mixture = getattr(out, "mixture", None)
        names = tuple(getattr(mixture, "names", ())) or tuple(f"group_{k}" for k in range(gates.shape[1]))
    return np.concatenate(chunks), names


def gate_summary(gates: np.ndarray, y_true: np.ndarray, group_names: Sequence[str],
                 class_names: Sequence[str]) -> dict:
    """Mean gate weight per group overall and over the records positive for each class."""
    y = np.asarray(y_true, dtype=np.float64).reshape(len(gates), -1)
    per_class, n_pos = {}, {}
    for c, name in enumerate(class_names):
        pos = y[:, c] == 1
        n_pos[name] = int(pos.sum())
        if pos.any():
            per_class[name] = [float(v) for v in gates[pos].mean(0)]
    return {"groups": list(group_names), "mean": [float(v) for v in gates.mean(0)],
            "per_class": per_class, "n_pos": n_pos}


# ---------------------------------------------------------------------------------------------
# integrated gradients
# ---------------------------------------------------------------------------------------------

def _path_nodes(n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes alpha in (0, 1) and weights for integrating d/dalpha along the path (alpha = t^2)."""
    u, w = np.polynomial.legendre.leggauss(n_steps)
    t, w = (u + 1) / 2, w / 2
    return t**2, w * 2 * t


def integrated_gradients(model: nn.Module, x: Tensor, lead_mask: Tensor, task: str, output: int, *,
                         n_steps: int = 32, baseline: Tensor | None = None) -> tuple[Tensor, dict]:
    """IG of logit ``output`` of ``task`` w.r.t. ``x``: attributions ``[B, 12, T]`` and a completeness check.

    The check gives, per record, ``sum(attr)`` and ``f(x) - f(baseline)`` and their difference.
    Records are independent in the model's forward (per-sample normalisation), so the gradient of
    the batch sum is each record's own gradient.
    """
    model.eval()
    base = torch.zeros_like(x) if baseline is None else baseline
    diff = x - base
    total = torch.zeros_like(x)
    alphas, weights = _path_nodes(n_steps)
    for a, w in zip(alphas.tolist(), weights.tolist()):
        xa = (base + a * diff).detach().requires_grad_(True)
        value = model.forward_logits(xa, lead_mask)[task][:, output]
        (grad,) = torch.autograd.grad(value.sum(), xa)
        total += w * grad
    attr = (total * diff).detach()
    with torch.no_grad():
        delta = (model.forward_logits(x, lead_mask)[task][:, output]
                 - model.forward_logits(base, lead_mask)[task][:, output])
    summed = attr.sum(dim=(1, 2))
    check = {"sum_attr": summed.numpy(), "delta_f": delta.numpy(), "error": (summed - delta).abs().numpy()}
    return attr, check


def lead_shares(attr: Tensor | np.ndarray) -> np.ndarray:
    """Each lead's share of total |attribution| ``[B, 12]`` (rows sum to 1; all-zero rows stay 0)."""
    a = np.abs(np.asarray(torch.as_tensor(attr).sum(-1), dtype=np.float64))
    total = a.sum(-1, keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


def ig_lead_shares(model: nn.Module, x: Tensor, lead_mask: Tensor, y_true: np.ndarray, task: str,
                   class_names: Sequence[str], *, n_steps: int = 32, batch_size: int = 16,
                   max_per_class: int | None = None, seed: int = 0) -> dict:
    """IG lead shares per class (target = that class's logit, over the records positive for it).

    ``overall`` is the mean of the per-class shares (each class weighted equally). The leads
    listed are those present in any record. ``max_per_class`` caps the cost (a seeded sample of
    each class's positives). Completeness errors are reported relative to ``median |f(x) - f(0)|``.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(len(x), -1)
    present = lead_mask.any(0).numpy()
    leads = [LEADS_12[i] for i in range(12) if present[i]]
    per_class, n_used, errors, deltas = {}, {}, [], []
    for c, name in enumerate(class_names):
        rows = np.nonzero(y[:, c] == 1)[0]
        if max_per_class is not None and len(rows) > max_per_class:
            rows = np.sort(np.random.default_rng(seed + c).choice(rows, max_per_class, replace=False))
        n_used[name] = int(len(rows))
        if not len(rows):
            continue
        shares = []
        for i in range(0, len(rows), batch_size):
            idx = torch.as_tensor(rows[i:i + batch_size])
            attr, check = integrated_gradients(model, x[idx], lead_mask[idx], task, c, n_steps=n_steps)
            shares.append(lead_shares(attr))
            errors.append(check["error"])
            deltas.append(np.abs(check["delta_f"]))
        per_class[name] = [float(v) for v in np.concatenate(shares).mean(0)[present]]
    overall = np.mean(list(per_class.values()), axis=0).tolist() if per_class else []
    err = np.concatenate(errors) if errors else np.array([np.nan])
    scale = float(np.median(np.concatenate(deltas))) if deltas else float("nan")
    return {"leads": leads, "overall": [float(v) for v in overall], "per_class": per_class, "n_records": n_used,
            "n_steps": int(n_steps),
            "completeness": {"median_abs_error": float(np.median(err)), "max_abs_error": float(np.max(err)),
                             "median_abs_delta_f": scale,
                             "median_rel_error": float(np.median(err) / scale) if scale else None}}


# ---------------------------------------------------------------------------------------------
# lead ablation
# ---------------------------------------------------------------------------------------------

LogitsFn = Callable[[nn.Module, Tensor, Tensor], dict[str, np.ndarray]]


def lead_ablation(model: nn.Module, x: Tensor, lead_mask: Tensor, y_true: np.ndarray, task: str, *,
                  kind: str = "multilabel", leads: Sequence[str] | None = None,
                  logits_fn: LogitsFn = batched_logits) -> dict:
    """Macro AUROC with all leads and with each present lead removed (masked and zeroed), and the change.

    ``logits_fn(model, x, lead_mask) -> {task: logits}`` scores the records; pass the evaluation's
    own scoring (e.g. crop averaging) so ``full`` equals the reported test AUROC.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(len(x), -1)
    present = lead_mask.any(0).numpy()
    leads = [LEADS_12[i] for i in range(12) if present[i]] if leads is None else list(leads)

    def macro(xx, mm) -> float:
        p = to_probabilities(logits_fn(model, xx, mm)[task], kind)
        return float(np.nanmean(metrics.auroc(y, p)))

    full = macro(x, lead_mask)
    drop = {}
    for lead in leads:
        value = macro(*drop_leads(x, lead_mask, [lead]))
        drop[lead] = {"macro_auroc": value, "delta": value - full}
    return {"full": full, "drop": drop}
