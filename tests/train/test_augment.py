"""Augmentations that mimic other hospitals, on a real PTB-XL record in millimetres."""

from __future__ import annotations

import pytest
import torch

from lsemvae.data.cache import CohortDataset, build_cohort
from lsemvae.data.sources import ptbxl_index
from lsemvae.model.config import get_profile
from lsemvae.train.augment import AugmentConfig, augment, random_lowpass, rotate_frontal_axis


@pytest.fixture(scope="module")
def batch(ptbxl_root, tmp_path_factory):
    refs = ptbxl_index(ptbxl_root)[:4]
    cohort = build_cohort(refs, [], get_profile("compact").preprocess_config(), tmp_path_factory.mktemp("c"),
                          name="aug", progress=False)
    items = [CohortDataset(cohort, tasks=[])[i] for i in range(4)]
    return torch.stack([i["x"] for i in items]), torch.stack([i["lead_mask"] for i in items])


def test_axis_rotation_moves_the_axis_and_keeps_einthoven(batch):
    x, mask = batch
    assert torch.allclose(rotate_frontal_axis(x, torch.zeros(4), mask), x, atol=1e-5)
    residual = lambda v: v[:, 2] - (v[:, 1] - v[:, 0])  # noqa: E731  (Einthoven: III = II - I, up to the recording)
    turned = rotate_frontal_axis(x, torch.full((4,), 60.0), mask)
    assert torch.allclose(residual(turned), residual(x), atol=1e-4)  # the identities hold as well as they did
    ideal = x.clone()
    ideal[:, 2] = x[:, 1] - x[:, 0]
    assert torch.allclose(rotate_frontal_axis(ideal, torch.full((4,), 60.0), mask)[:, 0], -ideal[:, 2], atol=1e-4)
    assert (turned[:, 0] - x[:, 0]).abs().max() > 1.0  # lead I now sees what -III saw: the vector turned 60 degrees
    assert torch.equal(turned[:, 6:], x[:, 6:])  # precordial leads untouched
    no_ii = mask.clone()
    no_ii[:, 1] = False
    assert torch.equal(rotate_frontal_axis(x, torch.full((4,), 30.0), no_ii), x)  # needs I and II


def test_lowpass_removes_what_lies_above_the_cut_off(batch):
    x, _ = batch
    out = random_lowpass(x, 1.0, (0.4, 0.4), torch.Generator().manual_seed(0))
    spectrum = torch.fft.rfft(out, dim=-1).abs()
    above = torch.linspace(0, 1, spectrum.shape[-1]) > 0.41
    assert spectrum[..., above].max() < 1e-3 * spectrum.max() and (out - x).abs().max() > 0.01
    assert torch.equal(random_lowpass(x, 0.0, (0.4, 0.4), torch.Generator().manual_seed(0)), x)


def test_options_left_at_zero_change_nothing_and_gain_scales_every_lead_alike(batch):
    x, mask = batch
    base = AugmentConfig(crop_samples=500, scale_jitter=0.1, noise_std=0.05)
    same = base.model_copy(update={"gain_jitter": 0.0, "axis_rotation_deg": 0.0, "lowpass_share": 0.0})
    a = augment(x, base, torch.Generator().manual_seed(3), lead_mask=mask)
    assert torch.equal(a, augment(x, same, torch.Generator().manual_seed(3), lead_mask=mask))
    gained = augment(x, AugmentConfig(gain_jitter=0.3), torch.Generator().manual_seed(1))
    ratio = gained[:, :6].abs().sum(-1) / x[:, :6].abs().sum(-1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4) and (ratio[:, 0] - 1).abs().max() > 0.01
