"""Integrated gradients (completeness, lead shares), lead ablation and gate summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lsemvae.leads import LEAD_GROUPS, lead_index
from lsemvae.train import interpret

II, AVF = lead_index("II"), lead_index("aVF")

# One intra-op thread: on this shared 2-core machine two threads contending with other jobs ran
# small convolutions about 20x slower than one.
torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Small smooth classifier with the shared interface (tanh: IG quadrature converges fast)."""

    def __init__(self, n_out=2):
        super().__init__()
        self.conv = nn.Conv1d(12, 8, 9, padding=4)
        self.head = nn.Linear(8, n_out)

    def forward_logits(self, x, lead_mask):
        h = torch.tanh(self.conv(x * lead_mask.unsqueeze(-1)))
        return {"t": self.head(h.mean(-1))}


def _data(n=160, t=64, seed=0):
    """Class 0 positives carry a burst in lead II, class 1 positives one in aVF. Limb leads present."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.5).astype(np.float32)
    x = rng.normal(0, 1, (n, 12, t)).astype(np.float32)
    x[:, II, 10:40] += 1.5 * y[:, :1]
    x[:, AVF, 30:60] += 1.5 * y[:, 1:]
    mask = np.zeros((n, 12), dtype=bool)
    mask[:, :6] = True
    x[:, 6:] = 0.0
    return torch.from_numpy(x), torch.from_numpy(mask), y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, mask, y = _data()
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.binary_cross_entropy_with_logits(net.forward_logits(x, mask)["t"], torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), _data(n=100, seed=1)


def test_ig_completeness_and_absent_leads_get_nothing(trained):
    net, (x, mask, _) = trained
    attr, check = interpret.integrated_gradients(net, x[:16], mask[:16], "t", 0, n_steps=32)
    assert attr.shape == (16, 12, 64)
    np.testing.assert_allclose(check["sum_attr"], check["delta_f"], atol=1e-3 * np.abs(check["delta_f"]).max() + 1e-5)
    assert torch.all(attr[:, 6:] == 0)


def test_lead_shares_sum_to_one_and_find_the_signal_lead(trained):
    net, (x, mask, y) = trained
    res = interpret.ig_lead_shares(net, x[:40], mask[:40], y[:40], "t", ["sig_II", "sig_aVF"], n_steps=16)
    assert res["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF"]
    for shares in res["per_class"].values():
        assert sum(shares) == pytest.approx(1.0, abs=1e-9)
    assert int(np.argmax(res["per_class"]["sig_II"])) == res["leads"].index("II")
    assert int(np.argmax(res["per_class"]["sig_aVF"])) == res["leads"].index("aVF")
    assert res["completeness"]["median_rel_error"] < 0.01
    s = interpret.lead_shares(torch.tensor([[[1.0, -3.0], [0.5, 0.5]] + [[0.0, 0.0]] * 10]))
    np.testing.assert_allclose(s[0, :2], [2 / 3, 1 / 3])


def test_ablating_the_signal_lead_lowers_auroc(trained):
    net, (x, mask, y) = trained
    res = interpret.lead_ablation(net, x, mask, y, "t", kind="multilabel")
    assert res["full"] > 0.95
    assert res["drop"]["II"]["delta"] < -0.2 and res["drop"]["aVF"]["delta"] < -0.2
    assert abs(res["drop"]["aVL"]["delta"]) < 0.05
    assert set(res["drop"]) == {"I", "II", "III", "aVR", "aVL", "aVF"}


def test_gate_weights_from_a_model_exposing_gates():
    from lsemvae.model.config import TaskHeadSpec, get_profile
    from lsemvae.model.lsemvae import build_model

    torch.manual_seed(0)
    model = build_model(get_profile("compact", tasks={"t": TaskHeadSpec(kind="multilabel", n_outputs=2)}))
    x = torch.randn(6, 12, 200)
    mask = torch.zeros(6, 12, dtype=torch.bool)
    mask[:, :6] = True  # limb leads only: the precordial groups must get zero weight
    gates, names = interpret.gate_weights(model, x, mask)
    assert names == tuple(LEAD_GROUPS) and gates.shape == (6, 4)
    np.testing.assert_allclose(gates.sum(1), 1.0, atol=1e-5)
    assert np.all(gates[:, 2:] == 0)
    summary = interpret.gate_summary(gates, np.array([[1, 0]] * 3 + [[0, 1]] * 3), names, ["a", "b"])
    np.testing.assert_allclose(summary["per_class"]["a"], gates[:3].mean(0), rtol=1e-6)
