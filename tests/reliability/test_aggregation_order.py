"""Aggregation does not depend on the order in which replies arrive.

Floating-point addition is not associative, so summing site updates in arrival order would make the
global model depend on network timing (and on the random node ids a restarted SuperNode gets).
The aggregate is summed in the order of a stable key, the site name: every permutation of the
same replies gives bitwise the same weights, the same optimiser state and the same contributor lists.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lsemvae.federation.groups import group_of
from lsemvae.federation.aggregation import Contribution, ServerOptimizer, ServerOptimizerState, aggregate_round, weighted_average

KEYS = {"encoders.I.conv.weight": (6, 1, 5), "encoders.V1.conv.weight": (6, 1, 5), "fusion.gate.weight": (4, 8),
        "heads.right_heart.weight": (1, 8)}


def _global(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.normal(size=s).astype(np.float32) for k, s in KEYS.items()}


def _replies(rng: np.random.Generator) -> list[Contribution]:
    """Five sites (one 6-lead) with non-integer weights. One fusion weight cancels catastrophically across
    sites (+1e17, -1e17 and small values): its float64 sum, hence its float32 average, depends on the order.
    Ordinary values differ only in float64 bits that the cast to float32 usually hides."""
    out = []
    for i, extreme in enumerate([1e17, 1.0, -1e17, 3.0, 0.5]):
        keys = [k for k in KEYS if not (i == 2 and k.startswith("encoders.V1"))]
        arrays = {k: rng.normal(size=KEYS[k]).astype(np.float32) for k in keys}
        arrays["fusion.gate.weight"][0, 0] = extreme
        weights = {group_of(k): float(rng.uniform(1, 50)) for k in keys}
        if abs(extreme) > 1e3:
            weights["fusion"] = 20.0        # the two extremes cancel exactly when added to each other first
        out.append(Contribution(f"site-{'edcba'[i]}", arrays, weights))
    return out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def test_summation_order_matters_for_these_inputs():
    """Guard: the inputs are such that naive arrival-order summation does give different bits."""
    rng = np.random.default_rng(11)
    replies = _replies(rng)
    key = "fusion.gate.weight"
    means = set()
    for perm in itertools.permutations(replies):
        acc, total = np.zeros(KEYS[key]), 0.0
        for c in perm:
            acc = acc + c.arrays[key].astype(np.float64) * c.group_weights["fusion"]
            total += c.group_weights["fusion"]
        means.add((acc / total).astype(np.float32).tobytes())
    assert len(means) > 1


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedyogi"])
def test_every_reply_order_gives_bitwise_the_same_aggregate(strategy):
    rng = np.random.default_rng(3)
    global_arrays, replies = _global(rng), _replies(rng)
    opt = ServerOptimizer(strategy, lr=0.05)
    state = ServerOptimizerState()
    # a second round too, so the adaptive moments built from the first aggregate are compared as well
    ref_model, ref_state, ref_contributors = aggregate_round(global_arrays, replies, opt, state)
    ref_model2, ref_state2, _ = aggregate_round(ref_model, replies[::-1], opt, ref_state)
    assert ref_contributors["encoders.V1"] == ["site-a", "site-b", "site-d", "site-e"]   # sorted by site, c has no V1
    for perm in itertools.permutations(replies):
        model, st, contributors = aggregate_round(global_arrays, list(perm), opt, state)
        assert _same(model, ref_model), [c.site for c in perm]
        assert _same(st.m, ref_state.m) and _same(st.v, ref_state.v)
        assert contributors == ref_contributors
        model2, st2, _ = aggregate_round(model, list(perm), opt, st)
        assert _same(model2, ref_model2) and _same(st2.m, ref_state2.m)


def test_weighted_average_leaves_the_callers_list_alone():
    rng = np.random.default_rng(5)
    global_arrays, replies = _global(rng), _replies(rng)
    order = [c.site for c in replies]
    weighted_average(replies, global_arrays)
    assert [c.site for c in replies] == order
