"""The real ClientApp answering real server messages, in process: what leaves a site, and refusals.

The server side of each message is built by the ServerApp's own functions (initial_state,
train_config), so the test exercises the same contract as a deployment without a network.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from client.audit import summarise
from client.client_app import app
from lsemvae.federation import keys as K
from lsemvae.federation.groups import federated, group_of, groups_for
from lsemvae.leads import PRECORDIAL_LEADS
from lsemvae.site import federation_config, load_site_config
from server.server_app import _array_record, _update_holders, broadcast, initial_state, train_config
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


def call(world, site: str, kind: str, server_round: int = 1, *, arrays=None, config_update=None, run_id: int = 1,
         context: Context | None = None):
    tmp, _, fed, state = world
    cfg = train_config(fed, state, server_round, seed=server_round)
    for k, v in (config_update or {}).items():
        cfg[k] = v
    msg = Message(RecordDict({K.ARRAYS: _array_record(arrays if arrays is not None else federated(state.model)),
                              K.CONFIG: cfg}), dst_node_id=1, message_type=kind, group_id=str(server_round))
    node_config = {"site": site, "site-config": str(tmp / "sites" / f"{site}.toml")}
    context = context or Context(run_id=run_id, node_id=1, node_config=node_config, state=RecordDict(),
                                 run_config=fed.as_run_config())
    return app(msg, context)


def site_ids(tmp, site: str) -> set[str]:
    folder = next(p for p in (tmp / "cohort").iterdir() if p.name.lower() == site)
    with open(folder / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {r["record_id"] for r in rows} | {r["patient_id"] for r in rows}


def test_under_dp_the_default_federation_is_a_probe_and_sends_no_encoder(world):
    tmp, names, fed, state = world
    auto = federation_config({**fed.as_run_config(), "train-encoders": "auto"})
    assert auto.dp and train_config(auto, state, 1, seed=1)[K.TRAIN_ENCODERS] is False
    reply = call(world, names[0], K.TRAIN, config_update={K.TRAIN_ENCODERS: False})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert {group_of(k) for k in reply.content[K.ARRAYS]} == {"fusion", "heads.right_heart", "heads.left_atrial"}
    assert reply.content[K.METRICS][K.EPSILON] > 0


def test_under_the_probe_the_encoders_travel_once_and_the_site_keeps_them(world):
    tmp, names, fed, state = world
    probe = federation_config({**fed.as_run_config(), "train-encoders": False})
    site = names[1]
    node_config = {"site": site, "site-config": str(tmp / "sites" / f"{site}.toml")}

    def evaluate(holders):
        cfg = train_config(probe, state, 1, seed=1)
        contents, down = broadcast(probe, state.model, cfg, [1], holders)
        msg = Message(contents[1], dst_node_id=1, message_type=K.EVALUATE, group_id="1")
        ctx = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=probe.as_run_config())
        return app(msg, ctx), down[1], cfg[K.BASE_DIGEST]

    slim_first, _, _ = evaluate({1})          # the server thinks the site holds them; it does not yet
    assert slim_first.has_error() and slim_first.error.code == K.ERR_NO_BASE
    assert "the server sends them again" in slim_first.error.reason
    holders: set[int] = set()
    _update_holders(holders, {}, [{"node": 1, "code": K.ERR_NO_BASE}])
    full, full_bytes, base_digest = evaluate(holders)
    assert not full.has_error(), full.error.reason if full.has_error() else ""
    stored = load_site_config(tmp / "sites" / f"{site}.toml").state_dir / "base" / f"{base_digest}.npz"
    assert stored.is_file()
    _update_holders(holders, {1: full}, [])
    slim, slim_bytes, _ = evaluate(holders)
    assert not slim.has_error(), slim.error.reason if slim.has_error() else ""
    assert slim_bytes < full_bytes / 10                                   # gate + heads only
    # the site's copy gives exactly the model the full message gave
    for record in (K.METRICS, K.HISTOGRAMS, K.GATES):
        a, b = dict(full.content[record]), dict(slim.content[record])
        a.pop(K.SITE_SECONDS, None), b.pop(K.SITE_SECONDS, None)
        assert a == b, record
    # a damaged copy is removed and asked for again; encoders that do not match the digest are refused
    stored.write_bytes(stored.read_bytes()[:1000])
    damaged, _, _ = evaluate(holders)
    assert damaged.has_error() and damaged.error.code == K.ERR_NO_BASE and not stored.exists()
    cfg = train_config(probe, state, 1, seed=1)
    contents, _ = broadcast(probe, state.model, cfg, [1], set())
    cfg[K.BASE_DIGEST] = "0" * 64
    reply = app(Message(contents[1], dst_node_id=1, message_type=K.EVALUATE, group_id="1"),
                Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=probe.as_run_config()))
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and K.BASE_DIGEST in reply.error.reason


def test_six_lead_site_sends_only_its_groups_and_aggregates(world):
    tmp, names, fed, state = world
    site = names[2]
    cfg = load_site_config(tmp / "sites" / f"{site}.toml")
    assert cfg.lead_names == ("I", "II", "III", "aVR", "aVL", "aVF")
    reply = call(world, site, K.TRAIN)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    content = reply.content
    assert set(content.array_records) == {K.ARRAYS}
    sent_groups = {group_of(k) for k in content[K.ARRAYS]}
    assert sent_groups == groups_for(cfg.lead_names, ["right_heart", "left_atrial"])
    assert not any(g == f"encoders.{lead}" for g in sent_groups for lead in PRECORDIAL_LEADS)
    assert set(content[K.GROUP_WEIGHTS]) == sent_groups
    m = content[K.METRICS]
    assert 0 < m[K.EPSILON] <= 2.0 and m[K.NOISE_MULTIPLIER] > 0
    # the same summary the site writes to its outgoing-message log passes the inspection
    check_outgoing([summarise(reply)], site_groups=sent_groups, forbidden=site_ids(tmp, site))
    # the ledger on the site's disk holds the round
    ledger = json.loads((cfg.state_dir / "privacy-ledger.json").read_text())
    assert [e["round"] for e in ledger["body"]["events"] if e["kind"] == "round"] == [1]

    ev = call(world, site, K.EVALUATE)
    assert not ev.has_error()
    assert set(ev.content.array_records) == set()
    hist = ev.content[K.HISTOGRAMS]
    n_eval = ev.content[K.METRICS][K.NUM_EXAMPLES]
    for task in ("right_heart", "left_atrial"):
        counts = np.asarray(hist[f"{task}/pos"]) + np.asarray(hist[f"{task}/neg"])
        assert counts.sum() <= n_eval and len(counts) == fed.eval_bins
    # the gate's mean weight per lead group: an average over the evaluation records, none on groups not recorded
    gates = dict(ev.content[K.GATES])
    assert set(gates) == {"limb", "augmented", "septal", "lateral"} and abs(sum(gates.values()) - 1) < 1e-6
    assert gates["septal"] == gates["lateral"] == 0 and gates["limb"] > 0 and gates["augmented"] > 0
    check_outgoing([summarise(ev)], site_groups=sent_groups, forbidden=site_ids(tmp, site))
    log_rows = [json.loads(line) for line in cfg.outgoing_log.read_text().splitlines()]
    assert [r["message_type"] for r in log_rows] == [K.TRAIN, K.EVALUATE]


def test_site_at_its_budget_refuses_and_says_why(world):
    tmp, names, fed, state = world
    site = names[1]
    # One SuperNode context for the run: the noise multiplier is planned once, in round 1, for the
    # rounds announced then (1), so it spends the whole budget; a round 2 would exceed it.
    ctx = Context(run_id=5, node_id=1, node_config={"site": site, "site-config": str(tmp / "sites" / f"{site}.toml")},
                  state=RecordDict(), run_config=fed.as_run_config())
    assert not call(world, site, K.TRAIN, 1, context=ctx, config_update={K.NUM_ROUNDS: 1}).has_error()
    refused = call(world, site, K.TRAIN, 2, context=ctx)
    assert refused.has_error() and refused.error.code == K.ERR_BUDGET
    assert "privacy budget would be exceeded" in refused.error.reason
    cfg = load_site_config(tmp / "sites" / f"{site}.toml")
    rows = [json.loads(line) for line in cfg.outgoing_log.read_text().splitlines()]
    assert rows[-1]["error"]["code"] == K.ERR_BUDGET                       # the refusal is logged at the site too


def test_malformed_message_and_non_dp_are_refused(world):
    tmp, names, fed, state = world
    arrays = federated(state.model)
    key = next(k for k in arrays if k.startswith("fusion."))
    bad = dict(arrays, **{key: np.zeros((3, 3), np.float32)})
    reply = call(world, names[0], K.TRAIN, arrays=bad)
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and key in reply.error.reason
    reply = call(world, names[0], K.TRAIN, config_update={K.MODEL_CONFIG: ""})
    assert reply.has_error()
    # weights missing from the message are refused, not left as the site's random start
    partial = {k: v for k, v in arrays.items() if not k.startswith("encoders.V1.")}
    for kind in (K.TRAIN, K.EVALUATE):
        reply = call(world, names[0], kind, arrays=partial)
        assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE, kind
        assert "sent no weights" in reply.error.reason and "encoders.V1." in reply.error.reason
    # a site whose config forbids non-DP training refuses the server's request
    path = tmp / "sites" / f"{names[0]}.toml"
    path.write_text(path.read_text().replace("allow_non_dp = true", "allow_non_dp = false"))
    reply = call(world, names[0], K.TRAIN, config_update={K.DP: False})
    assert reply.has_error() and reply.error.code == K.ERR_NON_DP_REFUSED
