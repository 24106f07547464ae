"""Opacus' per-sample gradients of the real LS-EMVAE, frozen as a site freezes it, equal the gradients
of each record taken alone.

A site's (epsilon, delta) rests on clipping every record's own gradient. A trainable parameter
whose per-sample gradient Opacus computed wrongly, or not at all (a layer its hooks do not see,
a frozen layer upstream, our fast Conv1d sampler), would be clipped wrongly and the epsilon in
the ledger would not hold. Checked for the federation's two modes: the probe (frozen encoders,
the default under DP) and full fine-tuning, on a 6-lead and a 12-lead site, on real PTB-XL ECGs.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lsemvae.federation.training import freeze_outside
from lsemvae.data.cache import CohortDataset, build_cohort
from lsemvae.data.sources import ptbxl_index
from lsemvae.data.tasks import get_task
from lsemvae.federation.groups import group_of, groups_for
from lsemvae.leads import resolve_lead_set
from lsemvae.model.config import TaskHeadSpec, get_profile
from lsemvae.model.losses import per_record_loss
from lsemvae.model.lsemvae import build_model
from lsemvae.privacy.dp import make_private

TASKS = {name: get_task(name) for name in ("right_heart", "left_atrial")}
KINDS = {name: task.kind for name, task in TASKS.items()}


@pytest.fixture(scope="module")
def batch(ptbxl_root, tmp_path_factory):
    """Six real 12-lead PTB-XL records, preprocessed as the compact model reads them, with labels."""
    refs = [r for r in ptbxl_index(ptbxl_root) if r.meta["ecg_id"] <= 6]
    cohort = build_cohort(refs, list(TASKS.values()), get_profile("compact").preprocess_config(),
                          tmp_path_factory.mktemp("cache"), name="grads", progress=False)
    return cohort


def _model(leads, train_encoders: bool):
    """The federation's model (fused-mean heads), heads started random so every group has a gradient."""
    torch.manual_seed(0)
    heads = {t: TaskHeadSpec(kind=task.kind, n_outputs=task.n_outputs) for t, task in TASKS.items()}
    model = build_model(get_profile("compact", tasks=heads, head_input="fused", head_init="random"))
    groups = groups_for(leads, TASKS)
    if not train_encoders:
        groups = {g for g in groups if not g.startswith("encoders.")}
    trainable = freeze_outside(model, groups, dp=True)
    for m in model.modules():  # Opacus' hooks need training mode: no dropout, so a record alone meets the same net
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model.train(), trainable


@pytest.mark.parametrize("train_encoders", [False, True], ids=["probe", "full"])
@pytest.mark.parametrize("leads", ["6L", "12L"])
def test_opacus_per_sample_gradients_equal_one_record_at_a_time(batch, leads, train_encoders):
    lead_names = resolve_lead_set(leads)
    data = next(iter(DataLoader(CohortDataset(batch, leads=lead_names, tasks=list(TASKS)), batch_size=len(batch))))
    pos = {t: torch.tensor([2.0]) for t in TASKS}

    model, trainable = _model(lead_names, train_encoders)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = []
    for i in range(len(batch)):   # the reference: each record's gradient on its own, plain autograd
        model.zero_grad()
        one = {k: (v[i:i + 1] if torch.is_tensor(v) else {t: y[i:i + 1] for t, y in v.items()}) for k, v in data.items()}
        per_record_loss(model(one["x"], one["lead_mask"], decode=False).logits, one["y"], KINDS, pos).sum().backward()
        expected.append([p.grad.clone() for p in trainable])

    model, trainable = _model(lead_names, train_encoders)
    opt = torch.optim.SGD(trainable, lr=0.0)
    private, opt, _, session = make_private(model, opt, DataLoader(TensorDataset(torch.zeros(len(batch), 1)), batch_size=2),
                                            noise_multiplier=1.0, max_grad_norm=1.0)
    session.backward(per_record_loss(private(data["x"], data["lead_mask"], decode=False).logits, data["y"], KINDS, pos))

    trained_groups = {group_of(n) for n in names}
    assert any(g.startswith("encoders.") for g in trained_groups) == train_encoders
    assert {"fusion", "heads.right_heart", "heads.left_atrial"} <= trained_groups
    for k, (name, p) in enumerate(zip(names, trainable)):
        assert p.grad_sample is not None, f"{name}: Opacus computed no per-sample gradient"
        got = p.grad_sample
        want = torch.stack([e[k] for e in expected])
        assert got.shape == want.shape, name
        scale = want.abs().max().clamp_min(1e-12)
        assert (got - want).abs().max() <= 1e-4 * scale + 1e-7, f"{name}: per-sample gradient differs"
    # every record has a non-zero gradient somewhere (the comparison above is not between zeros)
    assert all(sum(float(g.abs().sum()) for g in e) > 0 for e in expected)
