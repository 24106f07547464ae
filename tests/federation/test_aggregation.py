"""Per-group aggregation against np.average, with groups respected; no Flower involved."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.federation.groups import group_of, groups_for, select
from lsemvae.federation.aggregation import (
    check_contribution,
    AggregationError,
    Contribution,
    ServerOptimizer,
    ServerOptimizerState,
    aggregate_round,
    server_step,
    weighted_average,
    weighted_mean,
)

rng = np.random.default_rng(0)


def model_like() -> dict[str, np.ndarray]:
    keys = {
        "encoders.I.conv.weight": (4, 1, 3), "encoders.V1.conv.weight": (4, 1, 3),
        "fusion.gate.weight": (4, 8), "heads.right_heart.weight": (1, 8), "heads.phenotype.weight": (3, 8),
        "decoders.I.weight": (8, 8),
    }
    return {k: rng.normal(size=s).astype(np.float32) for k, s in keys.items()}


def test_group_of_names_lead_task_and_roots():
    assert group_of("encoders.aVL.conv.0.weight") == "encoders.aVL"
    assert group_of("heads.right_heart.0.bias") == "heads.right_heart"
    assert group_of("fusion.gate.weight") == "fusion"
    assert group_of("decoders.weight") == "decoders"
    assert groups_for(["i", "AVF"], ["right_heart"]) == {"encoders.I", "encoders.aVF", "fusion", "heads.right_heart"}


def test_average_matches_np_average_and_respects_groups():
    g = model_like()
    twelve = select(model_like(), groups_for(["I", "V1"], ["right_heart", "phenotype"]))
    six = select(model_like(), groups_for(["I"], ["right_heart"]))
    c12 = Contribution("a", twelve, {"encoders.I": 30, "encoders.V1": 30, "fusion": 30,
                                     "heads.right_heart": 20, "heads.phenotype": 10})
    c6 = Contribution("b", six, {"encoders.I": 90, "fusion": 90, "heads.right_heart": 60})
    avg, contributors = weighted_average([c12, c6], g)
    k = "encoders.I.conv.weight"
    np.testing.assert_allclose(avg[k], np.average([twelve[k], six[k]], axis=0, weights=[30, 90]), rtol=1e-6)
    k = "heads.right_heart.weight"
    np.testing.assert_allclose(avg[k], np.average([twelve[k], six[k]], axis=0, weights=[20, 60]), rtol=1e-6)
    # groups only one site trained are that site's values, untouched by the other
    np.testing.assert_array_equal(avg["encoders.V1.conv.weight"], twelve["encoders.V1.conv.weight"])
    np.testing.assert_array_equal(avg["heads.phenotype.weight"], twelve["heads.phenotype.weight"])
    assert "decoders.I.weight" not in avg
    assert contributors["encoders.V1"] == ["a"] and contributors["encoders.I"] == ["a", "b"]
    assert avg[k].dtype == np.float32


def test_fedavg_round_keeps_untrained_groups():
    g = model_like()
    six = select(model_like(), groups_for(["I"], ["right_heart"]))
    new, state, _ = aggregate_round(g, [Contribution("b", six, {"encoders.I": 5, "fusion": 5, "heads.right_heart": 5})],
                                    ServerOptimizer("fedavg"), ServerOptimizerState())
    np.testing.assert_array_equal(new["encoders.V1.conv.weight"], g["encoders.V1.conv.weight"])
    np.testing.assert_array_equal(new["decoders.I.weight"], g["decoders.I.weight"])
    np.testing.assert_array_equal(new["encoders.I.conv.weight"], six["encoders.I.conv.weight"])
    assert state.steps == 1


def test_no_contributions_is_no_change():
    g = model_like()
    new, state, contributors = aggregate_round(g, [], ServerOptimizer("fedadam"), ServerOptimizerState())
    assert contributors == {} and state.steps == 0
    for k in g:
        np.testing.assert_array_equal(new[k], g[k])


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_adaptive_step_moves_toward_average_and_is_pure(kind):
    g = {"fusion.w": np.zeros(3, np.float32), "encoders.I.w": np.ones(2, np.float32)}
    avg = {"fusion.w": np.array([1.0, -1.0, 0.0], np.float32)}
    opt = ServerOptimizer(kind, lr=0.1)
    state = ServerOptimizerState()
    new, s1 = server_step(g, avg, opt, state)
    assert np.all(np.sign(new["fusion.w"][:2]) == np.array([1, -1])) and new["fusion.w"][2] == 0
    np.testing.assert_array_equal(new["encoders.I.w"], g["encoders.I.w"])   # untouched group
    assert state.m == {} and s1.steps == 1 and "encoders.I.w" not in s1.m
    # first Adam step with v0 = tau^2: x1 = lr * (1-b1) d / (sqrt(b2 tau^2 + (1-b2) d^2) + tau)
    d, tau = 1.0, opt.tau
    if kind == "fedadam":
        v1 = opt.beta2 * tau**2 + (1 - opt.beta2) * d * d
    else:
        v1 = tau**2 + (1 - opt.beta2) * d * d
    assert new["fusion.w"][0] == pytest.approx(0.1 * 0.1 * d / (np.sqrt(v1) + tau), rel=1e-5)


def test_fedavgm_adds_the_average_update_to_its_momentum():
    g = {"fusion.w": np.zeros(2, np.float32), "encoders.I.w": np.ones(2, np.float32)}
    opt = ServerOptimizer("fedavgm", beta1=0.5)
    x1, s1 = server_step(g, {"fusion.w": np.array([1.0, -2.0], np.float32)}, opt, ServerOptimizerState())
    np.testing.assert_allclose(x1["fusion.w"], [1.0, -2.0])            # round 1: FedAvg's step
    np.testing.assert_array_equal(x1["encoders.I.w"], g["encoders.I.w"])   # untouched group
    x2, s2 = server_step(x1, {"fusion.w": np.array([2.0, -2.0], np.float32)}, opt, s1)
    np.testing.assert_allclose(x2["fusion.w"], [1.0 + 0.5 * 1.0 + 1.0, -2.0 + 0.5 * -2.0 + 0.0])
    assert s2.steps == 2 and "encoders.I.w" not in s2.m
    plain, _ = server_step(x1, {"fusion.w": np.array([2.0, -2.0], np.float32)}, ServerOptimizer("fedavgm", beta1=0.0), s1)
    np.testing.assert_allclose(plain["fusion.w"], [2.0, -2.0])           # no momentum: FedAvg


def test_bad_contributions_are_refused_with_site_and_key():
    g = model_like()
    with pytest.raises(AggregationError, match="site 'x' sent unknown parameter 'encoders.II.w'"):
        check_contribution(Contribution("x", {"encoders.II.w": np.zeros(1)}, {"encoders.II": 1}), g)
    bad = {"fusion.gate.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(AggregationError, match="shape"):
        check_contribution(Contribution("x", bad, {"fusion": 1}), g)
    ok = {"fusion.gate.weight": np.zeros((4, 8), np.float32)}
    with pytest.raises(AggregationError, match="no positive example count for group 'fusion'"):
        check_contribution(Contribution("x", ok, {"fusion": 0}), g)
    with pytest.raises(AggregationError, match="non-finite"):
        check_contribution(Contribution("x", {"fusion.gate.weight": np.full((4, 8), np.nan, np.float32)}, {"fusion": 1}), g)
    with pytest.raises(ValueError, match="unknown strategy"):
        ServerOptimizer("fedsgd")  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [None, 0, -3, float("nan"), float("inf")])
def test_a_group_without_a_positive_finite_example_count_is_refused(weight):
    g = model_like()
    ok = {"fusion.gate.weight": np.zeros((4, 8), np.float32)}
    weights = {} if weight is None else {"fusion": weight}
    with pytest.raises(AggregationError, match="no positive example count for group 'fusion'"):
        check_contribution(Contribution("x", ok, weights), g)
    check_contribution(Contribution("x", ok, {"fusion": 1}), g)      # the smallest count that trains a group


def _two_steps(kind):
    """Two server steps on one scalar: a large pseudo-gradient, then a small one (d2 < v), by hand."""
    opt = ServerOptimizer(kind, lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    g = {"fusion.w": np.array([0.0], np.float32)}
    first, s1 = server_step(g, {"fusion.w": np.array([2.0], np.float32)}, opt, ServerOptimizerState())
    second, s2 = server_step(first, {"fusion.w": first["fusion.w"] + np.float32(0.01)}, opt, s1)
    return first, s1, second, s2


def test_fedadam_and_fedyogi_follow_reddi_et_al_step_by_step():
    """Reddi et al. 2021, Algorithm 2, written out: v0 = tau^2, m0 = 0; Adam averages d^2 into v, Yogi moves v
    toward d^2 by (1 - beta2) d^2 only, so after a large step v shrinks far more slowly."""
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.1
    x1 = {}
    for kind in ("fedadam", "fedyogi"):
        first, s1, second, s2 = _two_steps(kind)
        d1 = 2.0
        m1 = (1 - b1) * d1
        v1 = b2 * tau**2 + (1 - b2) * d1**2 if kind == "fedadam" else tau**2 + (1 - b2) * d1**2
        x1[kind] = lr * m1 / (np.sqrt(v1) + tau)
        assert first["fusion.w"][0] == pytest.approx(x1[kind], rel=1e-6)
        assert s1.m["fusion.w"][0] == pytest.approx(m1, rel=1e-12) and s1.v["fusion.w"][0] == pytest.approx(v1, rel=1e-12)
        d2 = float(first["fusion.w"][0] + np.float32(0.01)) - float(first["fusion.w"][0])
        m2 = b1 * m1 + (1 - b1) * d2
        v2 = b2 * v1 + (1 - b2) * d2**2 if kind == "fedadam" else v1 - (1 - b2) * d2**2
        assert s2.m["fusion.w"][0] == pytest.approx(m2, rel=1e-9) and s2.v["fusion.w"][0] == pytest.approx(v2, rel=1e-9)
        assert second["fusion.w"][0] == pytest.approx(float(first["fusion.w"][0]) + lr * m2 / (np.sqrt(v2) + tau), rel=1e-6)
        assert (s1.steps, s2.steps) == (1, 2)
        assert first["fusion.w"].dtype == np.float32
    assert x1["fedadam"] != x1["fedyogi"]


@pytest.mark.parametrize("kind", ["fedavg", "fedprox", "fedadam", "fedyogi"])
def test_a_server_step_shares_no_memory_with_its_inputs_and_keeps_their_dtype(kind):
    g = model_like()
    before = {k: v.copy() for k, v in g.items()}
    averaged = {"fusion.gate.weight": np.ones((4, 8), np.float64),     # float64, as a caller may hand it
                "encoders.I.conv.weight": np.full((4, 1, 3), 0.5, np.float32)}
    state = ServerOptimizerState(m={"heads.right_heart.weight": np.ones((1, 8))}, v={"heads.right_heart.weight": np.ones((1, 8))}, steps=4)
    new, after = server_step(g, averaged, ServerOptimizer(kind), state)
    for k in g:
        np.testing.assert_array_equal(g[k], before[k])
        assert not np.shares_memory(new[k], g[k]) and new[k].dtype == np.float32
    assert not any(np.shares_memory(new[k], averaged[k]) for k in averaged)
    assert after.steps == 5 and state.steps == 4
    # moments of a group nobody sent this round are carried over as they were
    np.testing.assert_array_equal(after.m["heads.right_heart.weight"], np.ones((1, 8)))
    np.testing.assert_array_equal(after.v["heads.right_heart.weight"], np.ones((1, 8)))
    if kind in ("fedavg", "fedprox"):
        np.testing.assert_array_equal(new["fusion.gate.weight"], np.ones((4, 8), np.float32))
    else:
        assert set(after.m) == {"heads.right_heart.weight", *averaged} and "fusion.gate.weight" not in state.m
        assert all(after.m[k].dtype == after.v[k].dtype == np.float64 for k in averaged)   # moments in float64


def test_aggregate_round_without_replies_returns_copies():
    g = model_like()
    new, state, _ = aggregate_round(g, [], ServerOptimizer("fedavg"), ServerOptimizerState(steps=3))
    assert state.steps == 3 and not any(np.shares_memory(new[k], g[k]) for k in g)


def test_weighted_mean_ignores_unweighted_and_non_finite_values():
    assert weighted_mean([1.0, 3.0], [1, 3]) == pytest.approx(2.5)
    assert weighted_mean([1.0, 100.0, float("nan")], [2, 0, 5]) == pytest.approx(1.0)
    assert np.isnan(weighted_mean([], [])) and np.isnan(weighted_mean([float("nan")], [1]))
    assert np.isnan(weighted_mean([5.0], [0]))          # a site that trained on nothing weighs nothing
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; choose one of fedavg, fedprox, fedavgm, fedadam, fedyogi"):
        ServerOptimizer("fedsgd")  # type: ignore[arg-type]


def test_a_mean_over_sites_that_all_weigh_nothing_is_nan():
    from lsemvae.federation.aggregation import weighted_mean

    assert np.isnan(weighted_mean([1.0, 2.0], [0, 0])) and weighted_mean([1.0, 3.0], [0, 2]) == 3.0
