"""Per-parameter-group aggregation: pure functions over dicts of numpy arrays, no Flower.

A site sends only the groups it trained (its leads' encoders, the fusion gates, its tasks'
heads) together with, per group, the number of examples that trained it. Each parameter is
averaged over the sites that sent it, weighted by those counts; a parameter nobody sent keeps
its global value. On top of that average, a server optimiser (FedAvg: take it; FedAvgM: add it to a
momentum of the earlier rounds' updates, Hsu et al. 2019; FedAdam and FedYogi: treat ``average - global``
as a pseudo-gradient, Reddi et al. 2021) gives the next global weights. FedProx differs only on the
client (proximal term), so it aggregates as FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from lsemvae.federation.groups import group_of

Arrays = dict[str, np.ndarray]
Strategy = Literal["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"]
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi")


class AggregationError(ValueError):
    """A contribution does not fit the global model (unknown key, wrong shape, bad weight)."""


@dataclass(frozen=True)
class Contribution:
    """One site's reply: the arrays it trained and, per group, how many examples trained it."""

    site: str
    arrays: Mapping[str, np.ndarray]
    group_weights: Mapping[str, float]


def check_contribution(c: Contribution, global_arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse keys the global model lacks, shapes that differ, groups without a positive weight."""
    for key, value in c.arrays.items():
        if key not in global_arrays:
            raise AggregationError(f"site {c.site!r} sent unknown parameter {key!r}")
        if tuple(value.shape) != tuple(global_arrays[key].shape):
            raise AggregationError(
                f"site {c.site!r} sent {key!r} with shape {tuple(value.shape)}, "
                f"the global model has {tuple(global_arrays[key].shape)}"
            )
        if not np.all(np.isfinite(value)):
            raise AggregationError(f"site {c.site!r} sent non-finite values in {key!r}")
        weight = c.group_weights.get(group_of(key))
        if weight is None or not np.isfinite(weight) or weight <= 0:
            raise AggregationError(
                f"site {c.site!r} sent {key!r} but no positive example count for group {group_of(key)!r}"
            )


def weighted_average(contributions: list[Contribution], global_arrays: Mapping[str, np.ndarray]) -> tuple[Arrays, dict[str, list[str]]]:
    """Average each parameter over the sites that sent it, weighted by their group's example count.

    Each contribution must have passed :func:`check_contribution` (the server round checks every reply
    once, when it arrives, and turns a bad one into that site's failure).

    Returns the averaged arrays (only keys at least one site sent) and, per group, the sites
    that contributed to it (for the log and the metrics file). Sums run in site-name order, not
    arrival order: float addition is not associative, and the model must not depend on timing.
    """
    contributions = sorted(contributions, key=lambda c: c.site)
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    contributors: dict[str, list[str]] = {}
    for c in contributions:
        for group in sorted({group_of(k) for k in c.arrays}):
            contributors.setdefault(group, []).append(c.site)
        for key, value in c.arrays.items():
            w = float(c.group_weights[group_of(key)])
            acc = value.astype(np.float64) * w
            sums[key] = sums[key] + acc if key in sums else acc
            totals[key] = totals.get(key, 0.0) + w
    averaged = {k: (sums[k] / totals[k]).astype(global_arrays[k].dtype) for k in sums}
    return averaged, contributors


@dataclass
class ServerOptimizerState:
    """First and second moments of the adaptive server optimiser, per parameter, and its step."""

    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    steps: int = 0


@dataclass(frozen=True)
class ServerOptimizer:
    """Hyperparameters of the server step (defaults from Reddi et al. 2021, tau for stability).

    FedAvgM uses ``beta1`` as its momentum and steps at rate 1 (FedAvg's own step; ``lr`` is FedAdam's and
    FedYogi's): ``m <- beta1 m + (average - global)``, ``global <- global + m``.
    """

    strategy: Strategy = "fedavg"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")


def server_step(
    global_arrays: Mapping[str, np.ndarray],
    averaged: Mapping[str, np.ndarray],
    opt: ServerOptimizer,
    state: ServerOptimizerState,
) -> tuple[Arrays, ServerOptimizerState]:
    """Next global arrays from the current ones and this round's average. Pure: inputs untouched.

    Only keys present in ``averaged`` move; the moments of the others are left as they were, so
    a group nobody trained this round is not pushed by stale momentum.
    """
    new = {k: np.array(v, copy=True) for k, v in global_arrays.items()}
    if opt.strategy in ("fedavg", "fedprox"):
        for k, v in averaged.items():
            new[k] = np.array(v, dtype=global_arrays[k].dtype, copy=True)
        return new, ServerOptimizerState(dict(state.m), dict(state.v), state.steps + 1)
    m, v = dict(state.m), dict(state.v)
    if opt.strategy == "fedavgm":
        for k, avg in averaged.items():
            x = global_arrays[k].astype(np.float64)
            m[k] = opt.beta1 * m.get(k, np.zeros_like(x)) + (avg.astype(np.float64) - x)
            new[k] = (x + m[k]).astype(global_arrays[k].dtype)
        return new, ServerOptimizerState(m, v, state.steps + 1)
    for k, avg in averaged.items():
        x = global_arrays[k].astype(np.float64)
        delta = avg.astype(np.float64) - x
        m_prev = m.get(k, np.zeros_like(x))
        v_prev = v.get(k, np.full_like(x, opt.tau**2))
        m[k] = opt.beta1 * m_prev + (1 - opt.beta1) * delta
        d2 = delta * delta
        if opt.strategy == "fedadam":
            v[k] = opt.beta2 * v_prev + (1 - opt.beta2) * d2
        else:  # fedyogi: v moves toward d2 additively, which limits how fast it can shrink
            v[k] = v_prev - (1 - opt.beta2) * d2 * np.sign(v_prev - d2)
        new[k] = (x + opt.lr * m[k] / (np.sqrt(v[k]) + opt.tau)).astype(global_arrays[k].dtype)
    return new, ServerOptimizerState(m, v, state.steps + 1)


def aggregate_round(
    global_arrays: Mapping[str, np.ndarray],
    contributions: list[Contribution],
    opt: ServerOptimizer,
    state: ServerOptimizerState,
) -> tuple[Arrays, ServerOptimizerState, dict[str, list[str]]]:
    """One round: per-group weighted average, then the server step. No contributions: no change."""
    if not contributions:
        return {k: np.array(v, copy=True) for k, v in global_arrays.items()}, state, {}
    averaged, contributors = weighted_average(contributions, global_arrays)
    new, new_state = server_step(global_arrays, averaged, opt, state)
    return new, new_state, contributors


def weighted_mean(values: list[float], weights: list[float]) -> float:
    """Example-weighted mean of per-site scalars (losses); NaN when there is nothing to weigh."""
    pairs = [(v, w) for v, w in zip(values, weights) if w > 0 and np.isfinite(v)]
    if not pairs:
        return float("nan")
    return float(np.average([p[0] for p in pairs], weights=[p[1] for p in pairs]))
