"""The LS-EMVAE module: shapes, masking, routing by lead name, gradients, Opacus, profiles."""

import pytest
import torch

from lsemvae.leads import LEAD_GROUPS, LEADS_12, LIMB_LEADS
from lsemvae.model.config import PROFILES, get_profile
from lsemvae.model.losses import mixture_kl_bound, kl_standard_normal, vae_objective
from lsemvae.model.lsemvae import build_model, parameter_count, round_bytes

TASKS = {"superclass": {"kind": "multilabel", "n_outputs": 5}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(get_profile("compact", tasks=TASKS, n_samples=400))


def _batch(b=4, t=400, six=False):
    x = torch.randn(b, 12, t)
    mask = torch.ones(b, 12, dtype=torch.bool)
    if six:
        mask[:, 6:] = False
        x[:, 6:] = 0
    return x, mask


@pytest.mark.parametrize("six", [False, True])
def test_shapes_6l_and_12l(model, six):
    x, mask = _batch(six=six)
    out = model(x, mask)
    d = model.config.latent_dim
    assert out.mu_leads.shape == (4, 12, d) and out.mu.shape == (4, d) and out.logvar.shape == (4, d)
    assert out.recon.shape == (4, 12, model.config.beat_samples)
    assert out.z.shape == (len(LEAD_GROUPS), 4, d)
    assert out.gates.shape == (4, 4) and torch.allclose(out.gates.sum(1), torch.ones(4))
    assert out.logits["superclass"].shape == (4, 5)
    if six:
        assert (out.gates[:, 2:] == 0).all()


def test_state_dict_prefixes_are_the_federation_groups(model):
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"encoders", "fusion", "decoders", "heads"}
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("encoders.")} == set(LEADS_12)
    assert any(k.startswith("heads.superclass.") for k in model.state_dict())


def test_each_lead_reaches_its_own_encoder(model):
    model.eval()
    x, mask = _batch(b=2)
    out = model(x, mask, decode=False)
    for i, lead in enumerate(LEADS_12):
        mu, _ = model.encoders[lead](x[:, i : i + 1])
        assert torch.allclose(out.mu_leads[:, i], mu, atol=1e-6), lead


def test_permuting_rows_and_relaying_by_lead_index_changes_nothing(model):
    from lsemvae.leads import lead_index, to_12
    model.eval()
    x, mask = _batch(b=1)
    perm = [5, 3, 11, 0, 7, 1, 9, 2, 10, 4, 8, 6]
    names = [LEADS_12[i] for i in perm]
    relaid, m12 = to_12(x[0, perm].numpy(), names)  # a file with another channel order, laid out by name
    a = model(x, mask, decode=True)
    b = model(torch.from_numpy(relaid)[None], torch.from_numpy(m12)[None], decode=True)
    assert torch.allclose(a.mu, b.mu, atol=1e-6) and torch.allclose(a.recon, b.recon, atol=1e-6)
    assert lead_index("aVL") == 4 and lead_index("aVF") == 5  # the paper's swap cannot happen


def test_masked_lead_equals_absent_lead_and_gets_no_gradient(model):
    model.train()
    x, mask = _batch(b=2)
    mask[0, LEADS_12.index("V3")] = False
    x2 = x.clone()
    x2[0, LEADS_12.index("V3")] = 123.0  # whatever is in a masked slot must not matter
    model.eval()
    a, b = model(x, mask), model(x2, mask)
    assert torch.allclose(a.mu[0], b.mu[0], atol=1e-6) and torch.allclose(a.recon[0], b.recon[0], atol=1e-6)


def test_gradient_reaches_present_encoders_only(random_heads_model):
    model = random_heads_model
    model.train()
    model.zero_grad()
    x, mask = _batch(six=True)
    out = model(x, mask)
    loss, _ = vae_objective(out, torch.randn(4, 12, model.config.beat_samples), beta=1.0,
                            objective=model.config.objective)
    (loss + out.logits["superclass"].sum()).backward()
    for lead in LEADS_12:
        grads = [p.grad for p in model.encoders[lead].parameters()]
        if lead in LIMB_LEADS:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), lead
        else:
            assert all(g is None or g.abs().sum() == 0 for g in grads), lead
    # the gate's output layer starts at zero (equal weights), so at step 0 only it can receive gradient
    assert model.fusion.gate.score[-1].weight.grad.abs().sum() > 0


def test_kl_is_on_the_sampled_components(model):
    model.train()
    x, mask = _batch()
    out = model(x, mask)
    mix = out.mixture
    expected = sum(mix.weights[k] * kl_standard_normal(mix.mu[k], mix.logvar[k]) for k in range(mix.mu.shape[0]))
    assert torch.allclose(mixture_kl_bound(mix), expected)
    # the decoded samples are drawn from those same components
    std = torch.exp(0.5 * mix.logvar)
    zscore = (out.z - mix.mu) / std
    assert zscore.abs().max() < 7 and 0.7 < zscore.std() < 1.3


def test_eval_is_deterministic(model):
    model.eval()
    x, mask = _batch()
    a, b = model.forward_logits(x, mask), model.forward_logits(x, mask)
    assert torch.equal(a["superclass"], b["superclass"])


def test_opacus_validator_accepts_model(model):
    from opacus.validators import ModuleValidator
    model.train()
    ModuleValidator.validate(model, strict=True)


def test_compact_fits_a_federated_round_budget():
    m = build_model(get_profile("compact", tasks=TASKS))
    assert m.config.head_input == "leads+fused" and parameter_count(m, ("heads.",)) == (13 * 64 + 1) * 5
    assert round_bytes(m) == 2_101_544 < 5_000_000
    assert round_bytes(m) == 4 * parameter_count(m, ("encoders.", "fusion.", "heads."))


def test_faithful_profile_counts_paper_parameters():
    cfg = get_profile("faithful", tasks={"ph": {"kind": "multiclass", "n_outputs": 2}})
    with torch.device("meta"):
        m = build_model(cfg)
    assert parameter_count(m.encoders["I"]) == 20_488_352
    assert parameter_count(m, ("decoders.",)) == 10_290_353
    assert parameter_count(m, ("heads.",)) == 196_994  # 1536 -> 128 -> 2 probe
    assert m.encoders["I"].fc_mu.in_features == 40_000


def test_unknown_fusion_is_a_config_error():
    from lsemvae.errors import ConfigError
    with pytest.raises(ConfigError, match="fusion"):
        get_profile("compact", fusion="sum")
    assert set(PROFILES) == {"compact", "faithful"}


@pytest.fixture(scope="module")
def random_heads_model():
    """The compact model with random heads standing in for trained ones (new heads start at zero)."""
    torch.manual_seed(0)
    m = build_model(get_profile("compact", tasks=TASKS, n_samples=400, head_init="random"))
    assert m.config.head_input == "leads+fused"  # the compact default
    return m


def test_leads_plus_fused_head_sees_every_present_lead_in_its_slot(random_heads_model):
    m = random_heads_model.eval()
    d = m.config.latent_dim
    x, mask = _batch(six=True)
    out = m(x, mask, decode=False)
    feats = m.head_features(out.mu, out.mu_leads, mask)
    assert feats.shape == (4, 13 * d) and m.heads["superclass"].net[-1].in_features == 13 * d
    slots = feats[:, : 12 * d].reshape(4, 12, d)
    for i, lead in enumerate(LEADS_12):
        if lead in LIMB_LEADS:
            assert torch.allclose(slots[:, i], out.mu_leads[:, i]), lead
        else:
            assert (slots[:, i] == 0).all(), lead
    assert torch.allclose(feats[:, 12 * d :], out.mu)


def test_leads_plus_fused_logits_depend_on_each_limb_lead_even_with_a_one_hot_gate(random_heads_model):
    """A gate that puts all weight on one group (the observed collapse) must not hide the other leads."""
    m = random_heads_model.eval()
    x, mask = _batch(b=2, six=True)
    with torch.no_grad():
        mu_leads, logvar_leads = m.encode(x, mask)
    mu_leads.requires_grad_(True)
    with torch.no_grad():
        m.fusion.gate.group_bias.copy_(torch.tensor([-50.0, 50.0, 0.0, 0.0]))  # all weight on aVR/aVL/aVF
    try:
        mixture, logits = m.fuse_and_predict(mu_leads, logvar_leads, mask)
        assert mixture.weights[0].max() < 1e-6
        logits["superclass"].sum().backward()
    finally:
        with torch.no_grad():
            m.fusion.gate.group_bias.zero_()
    per_lead = mu_leads.grad.abs().sum((0, 2))
    for i, lead in enumerate(LEADS_12):
        assert (per_lead[i] > 0) == (lead in LIMB_LEADS), lead


def test_leads_plus_fused_is_per_sample_independent_and_opacus_valid(random_heads_model):
    from opacus.validators import ModuleValidator
    m = random_heads_model.eval()
    x, mask = _batch(b=3, six=True)
    a = m.forward_logits(x, mask)["superclass"]
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:]) * 5
    mask2 = mask.clone()
    mask2[2, 1:] = False  # another record's lead set must not matter either
    b = m.forward_logits(x2, mask2)["superclass"]
    assert torch.allclose(a[0], b[0], atol=1e-6) and not torch.allclose(a[1], b[1])
    m.train()
    ModuleValidator.validate(m, strict=True)


@pytest.mark.parametrize("bound", ["gate", "uniform"])
def test_uniform_bound_keeps_every_group_learning_under_a_collapsed_gate(bound):
    """With the gate's weights in the bound a collapsed gate starves the other groups' encoders of
    reconstruction gradient; with uniform bound weights every present group's encoders learn."""
    from lsemvae.model.config import ObjectiveConfig
    torch.manual_seed(0)
    m = build_model(get_profile("compact", n_samples=400, objective=ObjectiveConfig(bound_weights=bound, align_weight=0.0)))
    with torch.no_grad():
        m.fusion.gate.group_bias.copy_(torch.tensor([50.0, -50.0, -50.0, -50.0]))  # all weight on I/II/III
    x, mask = _batch()
    loss, _ = vae_objective(m(x, mask), torch.randn(4, 12, m.config.beat_samples), beta=1.0, objective=m.config.objective)
    loss.backward()
    grad = {lead: sum(p.grad.abs().sum().item() for p in m.encoders[lead].parameters()) for lead in LEADS_12}
    assert min(grad[l] for l in ("I", "II", "III")) > 0
    starved = max(grad[l] for l in LEADS_12[3:])
    assert (starved > 1e-3) if bound == "uniform" else (starved < 1e-12)


def test_gate_starts_at_equal_weights():
    torch.manual_seed(0)
    m = build_model(get_profile("compact", n_samples=400)).eval()
    x, mask = _batch()
    assert torch.allclose(m(x, mask).gates, torch.full((4, 4), 0.25))


def test_new_heads_start_at_zero_and_send_no_gradient_into_the_encoders(model):
    """A zero start: logits are 0 for every record, and the first step moves only the heads' output layer."""
    m = model.train()
    m.zero_grad()
    x, mask = _batch(six=True)
    logits = m.forward_logits(x, mask)["superclass"]
    assert (logits == 0).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    assert m.heads["superclass"].net[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.encoders.parameters())
    m.zero_grad()
    torch.manual_seed(0)
    rand = build_model(get_profile("compact", tasks=TASKS, n_samples=400, head_init="random"))
    assert rand.heads["superclass"].net[-1].weight.abs().sum() > 0


def test_amplitude_encoder_sees_shape_through_the_convolutions_and_size_as_three_numbers():
    from lsemvae.model.encoders import LeadEncoder
    torch.manual_seed(0)
    cfg = get_profile("compact", n_samples=400)
    enc = LeadEncoder(cfg).eval()
    x = torch.randn(3, 1, 400)
    mu, _ = enc(x)
    mu2, _ = enc(2.0 * x)
    assert not torch.allclose(mu, mu2, atol=1e-4)  # a taller lead is a different lead
    # the convolutional path is scale-free (it sees the lead at unit RMS) ...
    rms = x.pow(2).mean(-1, keepdim=True).sqrt()
    rms2 = (2 * x).pow(2).mean(-1, keepdim=True).sqrt()
    assert torch.allclose(enc.features(x / rms), enc.features(2 * x / rms2), atol=1e-5)
    # ... and the size enters only through the three extra inputs of the posterior layers
    assert enc.fc_mu.in_features == 2 * cfg.encoder_channels[-1] + 3
    with torch.no_grad():
        enc.fc_mu.weight[:, -3:] = 0
    assert torch.allclose(enc(x)[0], enc(2.0 * x)[0], atol=1e-4)


def test_amplitude_model_is_opacus_valid_and_absent_leads_stay_finite():
    from opacus.validators import ModuleValidator
    torch.manual_seed(0)
    m = build_model(get_profile("compact", tasks=TASKS, n_samples=400))
    x, mask = _batch(six=True)
    mask[0, 1] = False  # a lead absent from one record only: its zeros still pass through the encoder
    x[0, 1] = 0
    out = m(x, mask)
    assert torch.isfinite(out.mu).all() and torch.isfinite(out.logits["superclass"]).all()
    m.train()
    ModuleValidator.validate(m, strict=True)
