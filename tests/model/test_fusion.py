"""Fusion maths against closed forms, masking and routing by lead name."""

import math

import pytest
import torch

from lsemvae.leads import LEAD_GROUPS, LEADS_12
from lsemvae.model.fusion import (
    expert_dropout, group_poe, hime_fusion, hime_gated_fusion, masked_softmax, moe_fusion, poe, poe_fusion,
)


def _experts(m=12, b=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, b, d, generator=g), torch.randn(m, b, d, generator=g).clamp(-2, 2)


def test_poe_matches_closed_form_with_prior():
    mu, lv = _experts(m=3, b=1, d=1)
    mask = torch.ones(3, 1, dtype=torch.bool)
    p_mu, p_lv = poe(mu, lv, mask)
    prec = [math.exp(-lv[i, 0, 0].item()) for i in range(3)]
    total = sum(prec) + 1.0  # the prior N(0, 1) adds precision 1 and mean 0
    expected_mu = sum(p * mu[i, 0, 0].item() for i, p in enumerate(prec)) / total
    assert p_mu.item() == pytest.approx(expected_mu, rel=1e-5)
    assert p_lv.item() == pytest.approx(-math.log(total), rel=1e-5)


def test_prior_expert_participates():
    # one expert N(2, 1): PoE with the prior N(0, 1) is N(1, 1/2), not N(2, 1)
    mu, lv = torch.full((1, 1, 1), 2.0), torch.zeros(1, 1, 1)
    p_mu, p_lv = poe(mu, lv, torch.ones(1, 1, dtype=torch.bool))
    assert p_mu.item() == pytest.approx(1.0)
    assert p_lv.exp().item() == pytest.approx(0.5)
    # no expert at all: the prior itself
    p_mu, p_lv = poe(mu, lv, torch.zeros(1, 1, dtype=torch.bool))
    assert p_mu.item() == 0.0 and p_lv.item() == 0.0


@pytest.mark.parametrize("fusion", [poe_fusion, moe_fusion, hime_fusion])
def test_masked_expert_equals_removed_expert(fusion):
    mu, lv = _experts()
    mask = torch.ones(12, 3, dtype=torch.bool)
    mask[LEADS_12.index("V2")] = False
    mu[LEADS_12.index("V2")] = float("nan")  # garbage in a masked slot must not leak
    keep = [i for i, lead in enumerate(LEADS_12) if lead != "V2"]
    masked = fusion(mu, lv, mask, LEADS_12)
    removed = fusion(mu[keep], lv[keep], mask[keep], [LEADS_12[i] for i in keep])
    if fusion is moe_fusion:  # moe has one component per row: compare the mixtures' means
        assert torch.allclose(masked.mean(), removed.mean(), atol=1e-6)
    else:
        assert torch.allclose(masked.mu, removed.mu, atol=1e-6)
        assert torch.allclose(masked.logvar, removed.logvar, atol=1e-6)
        assert torch.allclose(masked.weights, removed.weights)


def test_moe_is_equal_mixture_of_lead_times_prior():
    mu, lv = _experts(m=12, b=2, d=3)
    mask = torch.zeros(12, 2, dtype=torch.bool)
    mask[:6] = True  # 6 limb leads
    mix = moe_fusion(mu, lv, mask)
    assert torch.allclose(mix.weights[:6], torch.full((6, 2), 1 / 6))
    assert (mix.weights[6:] == 0).all()
    prec = torch.exp(-lv[:6]) + 1.0
    expected_mean = ((torch.exp(-lv[:6]) * mu[:6]) / prec).mean(0)
    assert torch.allclose(mix.mean(), expected_mean, atol=1e-6)


def test_hime_groups_by_lead_name_not_position():
    mu, lv = _experts()
    mask = torch.ones(12, 3, dtype=torch.bool)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3)).tolist()
    leads_perm = [LEADS_12[i] for i in perm]
    a = hime_fusion(mu, lv, mask, LEADS_12)
    b = hime_fusion(mu[perm], lv[perm], mask[perm], leads_perm)
    assert torch.allclose(a.mu, b.mu, atol=1e-6) and torch.allclose(a.logvar, b.logvar, atol=1e-6)
    # group "augmented" is the PoE of exactly aVR, aVL, aVF (+ prior)
    rows = [LEADS_12.index(l) for l in LEAD_GROUPS["augmented"]]
    g_mu, _ = poe(mu[rows], lv[rows], mask[rows])
    assert torch.allclose(a.mu[list(LEAD_GROUPS).index("augmented")], g_mu, atol=1e-6)


def test_missing_groups_get_zero_weight_and_rest_renormalise():
    mu, lv = _experts()
    mask = torch.zeros(12, 3, dtype=torch.bool)
    mask[:6] = True  # 6-lead: only the limb and augmented groups
    mix = hime_fusion(mu, lv, mask)
    assert torch.allclose(mix.weights[:2], torch.full((2, 3), 0.5)) and (mix.weights[2:] == 0).all()
    logits = torch.randn(4, 3)
    gated = hime_gated_fusion(mu, lv, mask, LEADS_12, lambda m, v: logits)
    assert (gated.weights[2:] == 0).all()
    assert torch.allclose(gated.weights[:2], torch.softmax(logits[:2], 0))


def test_masked_softmax_uniform_when_nothing_available():
    w = masked_softmax(torch.randn(4, 2), torch.zeros(4, 2, dtype=torch.bool))
    assert torch.allclose(w, torch.full((4, 2), 0.25))


def test_group_poe_reports_presence():
    mu, lv = _experts(b=1)
    mask = torch.zeros(12, 1, dtype=torch.bool)
    mask[LEADS_12.index("V5")] = True
    _, g_lv, present = group_poe(mu, lv, mask, LEADS_12)
    assert present[:, 0].tolist() == [False, False, False, True]
    assert (g_lv[:3] == 0).all()  # empty groups are the prior


def test_expert_dropout_keeps_at_least_one_present_lead():
    mask = torch.zeros(500, 12, dtype=torch.bool)
    mask[:, :6] = True
    kept = expert_dropout(mask, 0.05, torch.Generator().manual_seed(0))
    assert (kept.sum(1) >= 1).all()
    assert not (kept & ~mask).any()
    kept = expert_dropout(mask, 0.75, torch.Generator().manual_seed(0))
    assert 0.7 < kept[:, :6].float().mean().item() < 0.82
