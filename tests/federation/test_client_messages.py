"""The real ClientApp answering real server messages, in process: what leaves a site, and what it refuses.

The server side of each message is built by the library's own server round (instruction, broadcast,
outgoing_content), so the test exercises the same contract as a deployment without a network.
Everything a site sends goes through the outgoing-message inspection of ``helpers.check_outgoing``.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.audit import summarise
from client.client_app import app
from lsemvae.federation import keys as K
from lsemvae.federation.groups import federated, group_of, groups_for
from lsemvae.federation.messages import EvaluateReply, Instruction, TrainReply, from_content, packed_bytes
from lsemvae.federation.server_round import Outgoing, broadcast, initial_state, instruction, outgoing_content, update_holders
from lsemvae.leads import PRECORDIAL_LEADS
from lsemvae.site import federation_config, load_site_config
from tests.federation.helpers import check_outgoing, write_checkpoint, write_sites

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def task_identity():
    """The identity Flower's runtime gives a ServerApp process (needed to create instruction messages)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def world(tmp_path_factory, task_identity):
    tmp = tmp_path_factory.mktemp("clientmsg")
    names = write_sites(tmp, n_sites=3, records=16, epsilon=2.0)   # site 3 (clinic_c) records 6 leads
    # encoders train under DP here (not the auto default): the routing of each lead's encoder is under test
    fed = federation_config({"checkpoint": str(write_checkpoint(tmp / "ckpt.pt")), "num-server-rounds": 2,
                             "batch-size": 8, "min-sites": 1, "train-encoders": True})
    return tmp, names, fed, initial_state(fed)


def site_cfg(world, site: str):
    return load_site_config(world[0] / "sites" / f"{site}.toml")


def context(world, site: str, run_id: int = 1, fed=None) -> Context:
    tmp, _, default_fed, _ = world
    node_config = {"site": site, "site-config": str(tmp / "sites" / f"{site}.toml")}
    return Context(run_id=run_id, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=(fed or default_fed).as_run_config())


def message(world, kind: str, server_round: int = 1, *, arrays=None, update=None, fed=None, holders=()) -> Message:
    _, _, default_fed, state = world
    fed = fed or default_fed
    out = broadcast(fed, state.model, instruction(fed, state, server_round, seed=server_round), [1], set(holders))[1]
    out = Outgoing(out.instruction.model_copy(update=update or {}), out.arrays if arrays is None else arrays)
    return Message(outgoing_content(out), dst_node_id=1, message_type=kind, group_id=str(server_round))


def raw_message(world, kind: str, body_update: dict) -> Message:
    """A message whose JSON body the typed model would not even build (hostile input)."""
    msg = message(world, kind)
    body = json.loads(msg.content.config_records[K.BODY][K.JSON]) | body_update
    msg.content.config_records[K.BODY] = ConfigRecord({K.JSON: json.dumps(body)})
    return msg


def call(world, site: str, kind: str, server_round: int = 1, *, run_id: int = 1, fed=None, **kwargs) -> Message:
    return app(message(world, kind, server_round, fed=fed, **kwargs), context(world, site, run_id, fed))


def body(reply: Message, model):
    assert not reply.has_error(), reply.error.reason
    return from_content(reply.content, model, sender="site")


def site_ids(tmp, site: str) -> set[str]:
    folder = next(p for p in (tmp / "cohort").iterdir() if p.name.lower() == site)
    with open(folder / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {r["record_id"] for r in rows} | {r["patient_id"] for r in rows}


def inspect(world, site: str, replies: list[Message], *, trained_groups=None) -> None:
    tmp, _, _, state = world
    check_outgoing([summarise(r) for r in replies], site=site_cfg(world, site), forbidden=site_ids(tmp, site),
                   model_shapes={k: v.shape for k, v in federated(state.model).items()}, trained_groups=trained_groups)


def test_under_dp_the_default_federation_is_a_probe_and_sends_no_encoder(world):
    tmp, names, fed, state = world
    auto = federation_config({**fed.as_run_config(), "train-encoders": "auto"})
    assert auto.dp and instruction(auto, state, 1, seed=1).train_encoders is False
    reply = call(world, names[0], K.TRAIN, fed=auto)
    got, arrays = body(reply, TrainReply)
    assert {group_of(k) for k in arrays} == {"fusion", "heads.right_heart", "heads.left_atrial"}
    assert got.epsilon > 0 and got.train_loss is None   # under DP the training loss stays at the site
    inspect(world, names[0], [reply], trained_groups={"fusion", "heads.right_heart", "heads.left_atrial"})


def test_under_the_probe_the_encoders_travel_once_and_the_site_keeps_them(world):
    tmp, names, fed, state = world
    probe = federation_config({**fed.as_run_config(), "train-encoders": False})
    site = names[1]

    def evaluate(holders):
        msg = message(world, K.EVALUATE, fed=probe, holders=holders)
        ins, _ = from_content(msg.content, Instruction, sender="server")
        return app(msg, context(world, site, fed=probe)), packed_bytes(msg.content), ins.base_digest

    slim_first, _, _ = evaluate({1})          # the server thinks the site holds them; it does not yet
    assert slim_first.has_error() and slim_first.error.code == K.ERR_NO_BASE
    assert slim_first.error.reason == K.CATEGORIES[K.ERR_NO_BASE]
    holders: set[int] = set()
    update_holders(holders, {}, [{"node": 1, "code": K.ERR_NO_BASE}])
    full, full_bytes, base_digest = evaluate(holders)
    full_body, _ = body(full, EvaluateReply)
    stored = site_cfg(world, site).state_dir / "base" / f"{base_digest}.npz"
    assert stored.is_file() and stored.stat().st_mode & 0o077 == 0    # private to the site
    update_holders(holders, {1: full}, [])
    slim, slim_bytes, _ = evaluate(holders)
    slim_body, _ = body(slim, EvaluateReply)
    assert slim_bytes < full_bytes / 10                                   # gate + heads only
    # the site's copy gives exactly the model the full message gave
    assert full_body.model_copy(update={"site_seconds": 0}) == slim_body.model_copy(update={"site_seconds": 0})
    # a damaged copy is removed and asked for again
    stored.write_bytes(stored.read_bytes()[:1000])
    damaged, _, _ = evaluate(holders)
    assert damaged.has_error() and damaged.error.code == K.ERR_NO_BASE and not stored.exists()
    # encoders that do not match the digest are refused
    reply = app(message(world, K.EVALUATE, fed=probe, update={"base_digest": "0" * 64}), context(world, site, fed=probe))
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and "digest" in reply.error.reason


def test_a_digest_is_never_a_path(world, tmp_path):
    """A hostile base-digest naming a file elsewhere is refused before any file is touched."""
    tmp, names, fed, state = world
    victim = tmp_path / "victim" / "important.npz"
    victim.parent.mkdir()
    np.savez(victim, encoders=np.zeros(3))
    state_dir = site_cfg(world, names[1]).state_dir
    relative = "../" * (len(state_dir.parts) + 2) + str(victim.with_suffix(""))[1:]
    reply = app(raw_message(world, K.EVALUATE, {"base_digest": relative}), context(world, names[1]))
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE
    assert "base_digest" in reply.error.reason and victim.is_file()


def test_six_lead_site_sends_only_its_groups_and_aggregates(world):
    tmp, names, fed, state = world
    site = names[2]
    cfg = site_cfg(world, site)
    assert cfg.lead_names == ("I", "II", "III", "aVR", "aVL", "aVF")
    reply = call(world, site, K.TRAIN)
    got, arrays = body(reply, TrainReply)
    sent_groups = {group_of(k) for k in arrays}
    assert sent_groups == groups_for(cfg.lead_names, ["right_heart", "left_atrial"])
    assert not any(g == f"encoders.{lead}" for g in sent_groups for lead in PRECORDIAL_LEADS)
    assert 0 < got.epsilon <= 2.0 and got.noise_multiplier > 0
    # the ledger on the site's disk holds the round; the site's files are private
    ledger = json.loads((cfg.state_dir / "privacy-ledger.json").read_text())
    assert [e["round"] for e in ledger["body"]["events"] if e["kind"] == "round"] == [1]
    assert cfg.state_dir.stat().st_mode & 0o077 == 0 and cfg.ledger_path.stat().st_mode & 0o077 == 0

    ev = call(world, site, K.EVALUATE)
    ev_body, ev_arrays = body(ev, EvaluateReply)
    assert ev_arrays == {}
    # the gate's mean weight per lead group: an average over the evaluation records, none on groups not recorded
    gates = ev_body.evaluation.gates
    assert set(gates) == {"limb", "augmented", "septal", "lateral"} and abs(sum(gates.values()) - 1) < 1e-6
    assert gates["septal"] == gates["lateral"] == 0 and gates["limb"] > 0 and gates["augmented"] > 0
    inspect(world, site, [reply, ev])
    log_rows = [json.loads(line) for line in cfg.outgoing_log.read_text().splitlines()]
    assert [r["message_type"] for r in log_rows] == [K.TRAIN, K.EVALUATE]
    assert cfg.outgoing_log.stat().st_mode & 0o077 == 0
    # the site's console line, in its own log
    assert "noise multiplier" in (cfg.state_dir / "site.log").read_text()


def test_evaluation_sends_only_k_anonymous_counts_on_the_sites_own_bins(world):
    tmp, names, fed, state = world
    site = names[0]
    path = tmp / "sites" / f"{site}.toml"
    original = path.read_text()
    try:
        path.write_text(original.replace("min_cell = 2", "min_cell = 3").replace("[evaluation]", "[evaluation]\nbins = 20")
                        .replace("val_fraction = 0.3", "val_fraction = 0.7"))
        reply = call(world, site, K.EVALUATE)
        inspect(world, site, [reply])     # what went out: only the policy's aggregates (gates by lead group)
        got, _ = body(reply, EvaluateReply)
        for hist in got.evaluation.histograms.values():
            reported = [c for c in [*hist.pos, *hist.neg] if c is not None]
            assert reported and all(min(c.counts) >= 3 and len(c.counts) <= 20 for c in reported)
        # the server cannot ask for finer bins: the instruction has no such field
        reply = app(raw_message(world, K.EVALUATE, {"eval_bins": 1_000_000}), context(world, site))
        assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE
        # fewer evaluation records than the site's minimum: refused
        path.write_text(original.replace("min_records = 4", "min_records = 1000"))
        reply = call(world, site, K.EVALUATE)
        assert reply.has_error() and reply.error.code == K.ERR_EVAL_REFUSED
        path.write_text(original.replace("[evaluation]", "[evaluation]\nenabled = false"))
        reply = call(world, site, K.EVALUATE)
        assert reply.has_error() and reply.error.code == K.ERR_EVAL_REFUSED
    finally:
        path.write_text(original)


def _replays(world, site: str, ins, sigma: float) -> list[dict[str, np.ndarray]]:
    """What the site's update would be if its DP randomness came from a seed the message carries
    (as it did before: DataLoader generator seed*1000+round, noise generator that + 1)."""
    from opacus import PrivacyEngine

    from lsemvae.federation.runtime import load_site_data, model_from_config
    from lsemvae.federation.site_round import _load_weights
    from lsemvae.federation.training import freeze_outside, task_kinds
    from lsemvae.model.losses import per_record_loss, positive_weights
    from lsemvae.privacy.dp import plain_state_dict

    _, _, fed, state = world
    cfg = site_cfg(world, site)
    data = load_site_data(cfg, ins.preprocess_config_json)
    out = []
    for seed in {ins.seed, ins.seed * 1000 + ins.server_round, ins.server_round, 0}:
        model = model_from_config(ins.model_config_json)
        _load_weights(model, federated(state.model))
        groups = groups_for(cfg.lead_names, data.tasks)
        trainable = freeze_outside(model, groups, dp=True)
        loader = torch.utils.data.DataLoader(data.dataset(data.train_idx, cfg.lead_names), batch_size=8, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        labels = {t: np.asarray(data.cohort.labels[t])[data.train_idx] for t in data.tasks}
        pos = {t: positive_weights(labels[t]) for t in data.tasks}
        torch.manual_seed(seed)
        model, opt, loader = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.Adam(trainable, lr=ins.lr), data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=cfg.privacy.max_grad_norm, noise_generator=torch.Generator().manual_seed(seed + 1))
        for batch in loader:
            opt.zero_grad()
            per_record_loss(model(batch["x"], batch["lead_mask"], decode=False).logits, batch["y"],
                            task_kinds(data.tasks), pos).mean().backward()
            opt.step()
        out.append({k: v.numpy() for k, v in plain_state_dict(model).items() if group_of(k) in groups})
    return out


def test_dp_noise_and_sampling_are_the_sites_own(world):
    """The same server message handled twice under DP gives two different updates, and neither is a replay
    of DP-SGD seeded from any value the message carries: the coordinator cannot subtract the noise."""
    tmp, names, fed, state = world
    site = names[0]
    first = call(world, site, K.TRAIN, update={"job_id": "11" * 8})
    second = call(world, site, K.TRAIN, update={"job_id": "11" * 8})
    (b1, a1), (b2, a2) = body(first, TrainReply), body(second, TrainReply)
    assert b1.noise_multiplier == b2.noise_multiplier > 0     # same plan, same message...
    assert any(not np.array_equal(a1[k], a2[k]) for k in a1)  # ...different noise and batches
    ins, _ = from_content(message(world, K.TRAIN).content, Instruction, sender="server")
    for replay in _replays(world, site, ins, b1.noise_multiplier):
        assert set(replay) == set(a1)
        assert any(not np.allclose(a1[k], replay[k], atol=1e-6) for k in a1)
        assert any(not np.allclose(a2[k], replay[k], atol=1e-6) for k in a2)


def test_site_at_its_budget_refuses_and_says_why(world):
    tmp, names, fed, state = world
    site = names[1]
    # The noise multiplier is planned once per job (kept on the site's disk), in round 1, for the rounds
    # announced then (1), so it spends the job's whole share (the whole budget here); that job's round
    # sent again would exceed the budget.
    one_round = federation_config({**fed.as_run_config(), "num-server-rounds": 1})
    assert not call(world, site, K.TRAIN, 1, fed=one_round, update={"job_id": "05" * 8}).has_error()
    refused = call(world, site, K.TRAIN, 2, update={"job_id": "05" * 8, "num_server_rounds": 1, "server_round": 1})
    assert refused.has_error() and refused.error.code == K.ERR_BUDGET
    assert refused.error.reason == K.CATEGORIES[K.ERR_BUDGET]
    cfg = site_cfg(world, site)
    rows = [json.loads(line) for line in cfg.outgoing_log.read_text().splitlines()]
    assert rows[-1]["error"]["code"] == K.ERR_BUDGET                       # the refusal is logged at the site too
    assert "budget would be exceeded" in (cfg.state_dir / "site.log").read_text()   # with its detail, locally


def test_malformed_message_and_non_dp_are_refused(world):
    tmp, names, fed, state = world
    arrays = federated(state.model)
    key = next(k for k in arrays if k.startswith("fusion."))
    bad = dict(arrays, **{key: np.zeros((3, 3), np.float32)})
    reply = call(world, names[0], K.TRAIN, arrays=bad)
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and key in reply.error.reason
    reply = call(world, names[0], K.TRAIN, update={"model_config_json": ""})
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE
    # weights missing from the message are refused, not left as the site's random start
    partial = {k: v for k, v in arrays.items() if not k.startswith("encoders.V1.")}
    for kind in (K.TRAIN, K.EVALUATE):
        reply = call(world, names[0], kind, arrays=partial)
        assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE, kind
        assert "sent no weights" in reply.error.reason and "encoders.V1." in reply.error.reason
    # a site whose config forbids non-DP training refuses the server's request
    path = tmp / "sites" / f"{names[0]}.toml"
    original = path.read_text()
    try:
        path.write_text(original.replace("allow_non_dp = true", "allow_non_dp = false"))
        reply = call(world, names[0], K.TRAIN, update={"dp": False})
        assert reply.has_error() and reply.error.code == K.ERR_NON_DP_REFUSED
    finally:
        path.write_text(original)


def test_server_values_are_bounded_by_the_sites_limits(world):
    """A model, preprocessing or schedule beyond the site's limits is refused before anything is allocated."""
    tmp, names, fed, state = world
    site = names[0]
    huge = json.loads(state.model_config) | {"latent_dim": 10_000_000}
    reply = call(world, site, K.TRAIN, update={"model_config_json": json.dumps(huge)})
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and "max_model_parameters" in reply.error.reason
    long = json.loads(state.preprocess_config) | {"fs": 2000, "seconds": 120.0}
    reply = call(world, site, K.TRAIN, update={"preprocess_config_json": json.dumps(long)})
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and "max_samples" in reply.error.reason
    reply = call(world, site, K.TRAIN, update={"local_epochs": 11})
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and "local-epochs 11" in reply.error.reason


def test_error_replies_carry_a_category_never_the_sites_detail(world, tmp_path):
    """A labels CSV with a duplicated record id: the reply names no record; the site's log does."""
    tmp, names, fed, state = world
    site = names[0]
    cfg = site_cfg(world, site)
    labels = cfg.data.labels
    original = labels.read_text()
    lines = original.splitlines()
    dup = lines[2].split(",")[0]
    try:
        labels.write_text("\n".join([*lines, lines[2]]) + "\n")
        from lsemvae.federation.runtime import _load

        _load.cache_clear()
        reply = call(world, site, K.TRAIN)
        assert reply.has_error() and reply.error.code == K.ERR_SITE_SETUP
        assert reply.error.reason == K.CATEGORIES[K.ERR_SITE_SETUP] and dup not in reply.error.reason
        assert dup in (cfg.state_dir / "site.log").read_text()
        inspect(world, site, [reply])
    finally:
        labels.write_text(original)
        _load.cache_clear()


def test_the_outgoing_audit_fails_closed(world, monkeypatch):
    """If the site cannot record what it is about to send, it sends nothing but an empty error."""
    tmp, names, fed, state = world

    def broken(path, text):
        raise OSError("disk full")

    monkeypatch.setattr("client.audit.append_private", broken)
    reply = call(world, names[0], K.EVALUATE)
    assert reply.has_error() and reply.error.code == K.ERR_AUDIT and not reply.has_content()


def test_a_train_reply_carries_the_evaluation_of_the_model_it_received(world):
    """Evaluation rides on the next round's train exchange: the same aggregates an evaluate message gives."""
    tmp, names, fed, state = world
    site = names[2]
    alone, _ = body(call(world, site, K.EVALUATE), EvaluateReply)
    trained, _ = body(call(world, site, K.TRAIN, update={"evaluate": True, "job_id": "ee" * 8}), TrainReply)
    assert trained.evaluation == alone.evaluation and trained.evaluation_refused is None
    path = tmp / "sites" / f"{site}.toml"
    original = path.read_text()
    try:   # a site whose policy refuses evaluation still trains, and says why it did not evaluate
        path.write_text(original.replace("[evaluation]", "[evaluation]\nenabled = false"))
        refused, _ = body(call(world, site, K.TRAIN, update={"evaluate": True, "job_id": "ef" * 8}), TrainReply)
        assert refused.evaluation is None and refused.evaluation_refused == K.ERR_EVAL_REFUSED
    finally:
        path.write_text(original)
