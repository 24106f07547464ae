"""Training objectives as pure functions (no module state), shared by central training and federated sites.

Every loss is computed per record and then averaged, so per-sample gradients (Opacus) are those
of independent records.

Fused posterior and KL. The fusions return a mixture q = sum_k w_k q_k (HiME: one component per
anatomical group). We use the standard stratified mixture bound (MMVAE, Shi et al. 2019; MoPoE,
Sutter et al. 2021): sample z_k ~ q_k from **every** component and weight by w_k,

    ELBO >= sum_k w_k ( E_{q_k}[log p(x | z_k)] - KL(q_k || N(0, I)) ),

valid because KL is convex (KL(sum w_k q_k || p) <= sum w_k KL(q_k || p)). It is the KL of the
posterior actually sampled (the paper regularised an unsampled mean-of-experts), it has no
discrete sampling, so the gates receive gradient from reconstruction and KL alike, and it costs
only K decoder passes (K = 4 for HiME). For ``poe`` (K = 1) it is the exact ELBO. Task heads use
deterministic summaries: the mixture mean (compact: also every lead's own posterior mean).

Because the bound is linear in w, a gate trained on it drives w to a vertex: all weight on the
group that is cheapest to reconstruct from, and the other groups' encoders stop learning. With
``objective.bound_weights = "uniform"`` (compact) every present component counts equally (MMVAE's
uniform-mixture bound, still a valid ELBO for that mixture); the gate, initialised to equal
weights, then learns only from the task losses in fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lsemvae.model.config import ObjectiveConfig
from lsemvae.model.fusion import GaussianMixture


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


def mixture_kl_bound(mixture: GaussianMixture, weights: Tensor | None = None) -> Tensor:
    """``[B]``: sum_k w_k KL(q_k || N(0, I)), an upper bound on KL(q || N(0, I)) (``weights`` default: the mixture's)."""
    w = mixture.weights if weights is None else weights
    return (w * kl_standard_normal(mixture.mu, mixture.logvar)).sum(0)


def bound_weights(mixture: GaussianMixture, objective: ObjectiveConfig) -> Tensor:
    """``[K, B]`` weights of the stratified bound: the mixture's, or equal over its present components."""
    if objective.bound_weights == "gate":
        return mixture.weights
    present = (mixture.weights > 0).to(mixture.weights.dtype)
    return present / present.sum(0, keepdim=True).clamp_min(1.0)


def reconstruction_error(recon_components: Tensor, target: Tensor, weights: Tensor, lead_mask: Tensor) -> Tensor:
    """``[B]``: sum_k w_k * squared error over present leads and time.

    Leads present in the data are reconstructed whether or not their expert was dropped
    (cross-lead reconstruction); absent leads have no target and are ignored.
    """
    sq = (recon_components - target.unsqueeze(0)) ** 2  # [K, B, 12, T]
    per_lead = sq.sum(-1) * lead_mask.unsqueeze(0).to(sq.dtype)
    return (weights * per_lead.sum(-1)).sum(0)


def alignment_loss(mu_leads: Tensor, mu_fused: Tensor, lead_mask: Tensor) -> Tensor:
    """``[B]``: mean over present leads of ||mu_l - stopgrad(mu_fused)||^2 (summed over D).

    The target is detached (as pykale/cardiac; the paper's was not), so alignment moves each lead
    towards the consensus, not the consensus towards a lead.
    """
    d = ((mu_leads - mu_fused.detach().unsqueeze(1)) ** 2).sum(-1)
    m = lead_mask.to(d.dtype)
    return (d * m).sum(1) / m.sum(1).clamp_min(1.0)


def kl_beta(epoch: int, objective: ObjectiveConfig) -> float:
    """beta(t) = beta_max * min(t / anneal_epochs, 1), epochs counted from 1."""
    if objective.kl_anneal_epochs == 0:
        return objective.beta_max
    return objective.beta_max * min(epoch / objective.kl_anneal_epochs, 1.0)


def vae_objective(out, target: Tensor, *, beta: float, objective: ObjectiveConfig,
                  target_mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Pretraining loss from a :class:`~lsemvae.model.lsemvae.ModelOutput` and the recon target.

    ``target_mask`` ``[B, 12]``: leads that have a target (default: the input leads); it may
    include leads absent from the input, which are then reconstructed across leads.
    Returns the batch-mean loss and each term (batch means, unweighted) for logging.
    """
    mask = out.lead_mask if target_mask is None else target_mask.bool()
    weights = bound_weights(out.mixture, objective)
    recon = reconstruction_error(out.recon_components, target, weights, mask)
    kl = mixture_kl_bound(out.mixture, weights)
    align = alignment_loss(out.mu_leads, out.mu, out.lead_mask)
    per_record = objective.recon_weight * recon + beta * kl + objective.align_weight * align
    loss = per_record.mean()
    parts = {"loss": loss.item(), "recon": recon.mean().item(), "kl": kl.mean().item(),
             "align": align.mean().item(), "beta": beta}
    return loss, parts


def per_record_task_loss(logits: Tensor, target: Tensor, kind: str, *, pos_weight: Tensor | None = None) -> Tensor:
    """``[B]`` loss of one task per record; 0 for a record without a label for it.

    binary/multilabel: BCE with logits, averaged over the record's labelled outputs (``pos_weight``
    per output for class imbalance); multiclass: cross-entropy on the one-hot target (a record with any
    NaN is unlabelled). Per record, so DP-SGD's per-sample gradients are those of independent records.
    """
    if kind == "multiclass":
        valid = ~torch.isnan(target).any(-1)
        safe = torch.where(torch.isnan(target), torch.zeros_like(target), target)
        return F.cross_entropy(logits, safe.argmax(-1), reduction="none") * valid
    valid = ~torch.isnan(target)
    safe = torch.where(valid, target, torch.zeros_like(target))
    loss = F.binary_cross_entropy_with_logits(logits, safe, pos_weight=pos_weight, reduction="none")
    return (loss * valid).sum(-1) / valid.sum(-1).clamp_min(1)


def labelled(target: Tensor, kind: str) -> Tensor:
    """``[B]`` bool: records with a label for the task (any output, or all of them for multiclass)."""
    missing = torch.isnan(target)
    return ~missing.any(-1) if kind == "multiclass" else ~missing.all(-1)


def task_loss(logits: Tensor, target: Tensor, kind: str, *, pos_weight: Tensor | None = None) -> Tensor:
    """Batch loss of one task: the mean of :func:`per_record_task_loss` over the records labelled for it."""
    return per_record_task_loss(logits, target, kind, pos_weight=pos_weight).sum() / labelled(target, kind).sum().clamp_min(1)


def per_record_loss(logits: dict[str, Tensor], y: dict[str, Tensor], kinds: dict[str, str],
                    pos_weights: dict[str, Tensor] | None = None) -> Tensor:
    """``[B]``: the sum over tasks of :func:`per_record_task_loss` (what a federated site trains on)."""
    pos_weights = pos_weights or {}
    return sum(per_record_task_loss(logits[t], y[t], kind, pos_weight=pos_weights.get(t)) for t, kind in kinds.items())


def positive_weights(labels, *, max_weight: float = 20.0) -> Tensor:
    """pos_weight = negatives / positives per output column (NaN ignored), capped."""
    y = torch.as_tensor(labels, dtype=torch.float32)
    valid = ~torch.isnan(y)
    pos = torch.where(valid, y, torch.zeros_like(y)).sum(0)
    neg = valid.sum(0) - pos
    return (neg / pos.clamp_min(1.0)).clamp(1.0 / max_weight, max_weight)
