"""Per-group aggregation against np.average, with groups respected; no Flower involved."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.federation.groups import group_of, groups_for, select
from lsemvae.federation.aggregation import (
    AggregationError,
    Contribution,
    ServerOptimizer,
    ServerOptimizerState,
    aggregate_round,
    server_step,
    weighted_average,
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
        weighted_average([Contribution("x", {"encoders.II.w": np.zeros(1)}, {"encoders.II": 1})], g)
    bad = {"fusion.gate.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(AggregationError, match="shape"):
        weighted_average([Contribution("x", bad, {"fusion": 1})], g)
    ok = {"fusion.gate.weight": np.zeros((4, 8), np.float32)}
    with pytest.raises(AggregationError, match="no positive example count for group 'fusion'"):
        weighted_average([Contribution("x", ok, {"fusion": 0})], g)
    with pytest.raises(ValueError, match="unknown strategy"):
        ServerOptimizer("fedsgd")  # type: ignore[arg-type]
