"""From-scratch 1-D ResNet baseline: interface, lead masking, Opacus compatibility, learning."""

from __future__ import annotations

import numpy as np
import torch
from opacus.validators import ModuleValidator
from sklearn.metrics import roc_auc_score

from lsemvae.leads import lead_index
from lsemvae.train.baselines import ResNet1D, count_parameters

# One intra-op thread: on this shared 2-core machine two threads contending with other jobs ran
# small convolutions about 20x slower than one.
torch.set_num_threads(1)


def _mask(b, leads=("I", "II", "III", "aVR", "aVL", "aVF")):
    m = torch.zeros(b, 12, dtype=torch.bool)
    m[:, [lead_index(n) for n in leads]] = True
    return m


def test_shapes_parameter_count_and_opacus_validator():
    model = ResNet1D({"superclass": 5, "right_heart": 1}, leads="6L")
    out = model.forward_logits(torch.randn(3, 12, 500), _mask(3))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"superclass": (3, 5), "right_heart": (3, 1)}
    assert 500_000 <= count_parameters(model) <= 800_000
    assert ModuleValidator.validate(model, strict=False) == []


def test_absent_and_unconfigured_leads_do_not_affect_output():
    torch.manual_seed(0)
    model = ResNet1D({"t": 1}, leads="6L").eval()
    x = torch.randn(2, 12, 400)
    mask = _mask(2)
    base = model.forward_logits(x, mask)["t"]
    x2 = x.clone()
    x2[:, 6:] = 100.0  # precordial leads are not inputs of a 6-lead model
    x2[1, lead_index("aVL")] = 50.0  # masked as absent in record 1 below
    mask2 = mask.clone()
    mask2[1, lead_index("aVL")] = False
    out2 = model.forward_logits(x2, mask2)["t"]
    assert torch.allclose(out2[0], base[0], atol=1e-6)
    x3 = x.clone()
    x3[1, lead_index("aVL")] = 0.0
    assert torch.allclose(out2[1], model.forward_logits(x3, mask)["t"][1], atol=1e-5)


def test_learns_a_separable_task():
    """Positives carry a 5 Hz burst in lead II; 60 steps of Adam separate them on held-out data."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, t = 160, 128
    y = (rng.random(n) < 0.5).astype(np.float32)
    x = rng.normal(0, 1, (n, 12, t)).astype(np.float32)
    x[:, lead_index("II")] += 2.0 * y[:, None] * np.sin(np.linspace(0, 10 * np.pi, t, dtype=np.float32))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    mask = _mask(n)
    model = ResNet1D({"t": 1}, widths=(16, 32), dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        idx = torch.randint(0, 120, (32,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model.forward_logits(x[idx], mask[idx])["t"][:, 0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        score = model.forward_logits(x[120:], mask[120:])["t"][:, 0].numpy()
    assert roc_auc_score(y[120:].numpy(), score) > 0.95


def test_checkpoint_round_trip_through_the_shared_checkpoint_code(tmp_path):
    from lsemvae.train.checkpoint import load_checkpoint, save_checkpoint
    from lsemvae.train.baselines import build_resnet1d

    torch.manual_seed(0)
    model = ResNet1D({"t": 2}, leads=["I", "II"], widths=(8, 16)).eval()
    save_checkpoint(tmp_path / "cnn.pt", model=model, epoch=3)
    ckpt = load_checkpoint(tmp_path / "cnn.pt")
    assert ckpt["model_config"]["architecture"] == "resnet1d"
    clone = build_resnet1d(ckpt["model_config"]).eval()
    clone.load_state_dict(ckpt["model_state"])
    x = torch.randn(2, 12, 100)
    assert torch.equal(clone.forward_logits(x, _mask(2))["t"], model.forward_logits(x, _mask(2))["t"])
