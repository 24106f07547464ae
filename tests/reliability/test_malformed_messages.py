"""A site receiving malformed or mismatched server messages: each is refused with a clear error reply
(code ERR_BAD_MESSAGE naming what is wrong), nothing is spent from the privacy ledger, and the same
site (same SuperNode context) then trains normally on a correct message: it keeps running.

The real ClientApp answers real Flower Messages built by the ServerApp's own functions, then broken
by hand; nothing of ours is mocked. (tests/federation/test_client_messages.py covers a wrong shape,
an empty model config and a refused non-DP request.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.client_app import app
from lsemvae.federation import keys as K
from lsemvae.federation.groups import federated
from lsemvae.site import load_site_config
from server.server_app import _array_record, train_config
from tests.federation.test_client_messages import task_identity, world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


def _message(world, kind: str, *, arrays: dict | None, config: ConfigRecord | None, server_round: int = 1) -> Message:
    content = RecordDict()
    if arrays is not None:
        content[K.ARRAYS] = _array_record(arrays)
    if config is not None:
        content[K.CONFIG] = config
    return Message(content, dst_node_id=1, message_type=kind, group_id=str(server_round))


def _good(world, server_round: int = 1) -> tuple[dict, ConfigRecord]:
    _, _, fed, state = world
    return dict(federated(state.model)), train_config(fed, state, server_round, seed=server_round)


def _without(cfg: ConfigRecord, key: str) -> ConfigRecord:
    return ConfigRecord({k: v for k, v in cfg.items() if k != key})


def _with(cfg: ConfigRecord, **values) -> ConfigRecord:
    return ConfigRecord({**dict(cfg.items()), **{k.replace("_", "-"): v for k, v in values.items()}})


def _unknown_param(arrays, cfg):
    return {**arrays, "encoders.V9.conv.weight": np.zeros((2, 2), np.float32)}, cfg, "encoders.V9.conv.weight"


def _decoder_param(arrays, cfg, model):
    key = next(k for k in model if k.startswith("decoders."))     # a real decoder tensor, right shape
    return {**arrays, key: model[key]}, cfg, key


def _head_shape(arrays, cfg):
    key = next(k for k in arrays if k.startswith("heads.") and k.endswith("weight"))
    return {**arrays, key: np.zeros((7, 3), np.float32)}, cfg, key


def _renamed(arrays, cfg):
    key = next(k for k in arrays if k.startswith("encoders.I."))
    out = dict(arrays)
    out["_module." + key] = out.pop(key)          # an Opacus-wrapped name leaking from a buggy server
    return out, cfg, "_module." + key


BROKEN = {
    "unknown parameter name": _unknown_param,
    "decoder parameter (never federated)": _decoder_param,
    "head of the wrong shape": _head_shape,
    "parameter under a wrapped name": _renamed,
    "no server round": lambda a, c: (a, _without(c, K.ROUND), K.ROUND),
    "no model config": lambda a, c: (a, _without(c, K.MODEL_CONFIG), K.MODEL_CONFIG),
    "no preprocessing config": lambda a, c: (a, _without(c, K.PREPROCESS_CONFIG), K.PREPROCESS_CONFIG),
    "no batch size": lambda a, c: (a, _without(c, K.BATCH_SIZE), K.BATCH_SIZE),
    "no learning rate": lambda a, c: (a, _without(c, K.LR), K.LR),
    "no local epochs": lambda a, c: (a, _without(c, K.LOCAL_EPOCHS), K.LOCAL_EPOCHS),
    "no number of rounds": lambda a, c: (a, _without(c, K.NUM_ROUNDS), K.NUM_ROUNDS),
    "batch size not a number": lambda a, c: (a, _with(c, **{K.BATCH_SIZE: "many"}), K.BATCH_SIZE),
    "batch size zero": lambda a, c: (a, _with(c, **{K.BATCH_SIZE: 0}), K.BATCH_SIZE),
    "model config not JSON": lambda a, c: (a, _with(c, **{K.MODEL_CONFIG: "{not json"}), K.MODEL_CONFIG),
    "model config of another model": lambda a, c: (a, _with(c, **{K.MODEL_CONFIG: json.dumps({"latent_dim": "x"})}),
                                                   K.MODEL_CONFIG),
}


def test_each_malformed_train_message_is_refused_then_the_site_trains(world):
    tmp, names, fed, state = world
    site = names[0]
    cfg = load_site_config(tmp / "sites" / f"{site}.toml")
    ledger_before = cfg.ledger_path.read_bytes() if cfg.ledger_path.exists() else None
    context = Context(run_id=77, node_id=1, node_config={"site": site, "site-config": str(tmp / "sites" / f"{site}.toml")},
                      state=RecordDict(), run_config=fed.as_run_config())
    problems = {}
    for case, breaker in BROKEN.items():
        args = (*_good(world), state.model) if breaker is _decoder_param else _good(world)
        arrays, config, culprit = breaker(*args)
        reply = app(_message(world, K.TRAIN, arrays=arrays, config=config), context)
        if not (reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and culprit in reply.error.reason):
            problems[case] = (reply.error.code, reply.error.reason) if reply.has_error() else "accepted"
    # no arrays / no config record at all
    arrays, config = _good(world)
    for case, msg in {"no arrays record": _message(world, K.TRAIN, arrays=None, config=config),
                      "no config record": _message(world, K.TRAIN, arrays=arrays, config=None)}.items():
        reply = app(msg, context)
        if not (reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE):
            problems[case] = (reply.error.code, reply.error.reason) if reply.has_error() else "accepted"
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    # nothing was spent on refused messages
    assert (cfg.ledger_path.read_bytes() if cfg.ledger_path.exists() else None) == ledger_before
    # the same site, same SuperNode context, answers a correct message normally
    reply = app(_message(world, K.TRAIN, arrays=arrays, config=config), context)
    assert not reply.has_error(), reply.error.reason
    assert reply.content[K.METRICS][K.EPSILON] > 0
    # every refusal was logged at the site as well
    rows = [json.loads(line) for line in cfg.outgoing_log.read_text().splitlines()]
    refusals = [r for r in rows[-(len(BROKEN) + 3):-1] if "error" in r]
    assert len(refusals) == len(BROKEN) + 2 and all(r["error"]["code"] == K.ERR_BAD_MESSAGE for r in refusals)


def test_malformed_evaluate_message_is_refused(world):
    tmp, names, fed, state = world
    site = names[1]
    context = Context(run_id=78, node_id=1, node_config={"site": site, "site-config": str(tmp / "sites" / f"{site}.toml")},
                      state=RecordDict(), run_config=fed.as_run_config())
    arrays, config = _good(world)
    for arrays_, config_, culprit in (_unknown_param(arrays, config), (arrays, _without(config, K.MODEL_CONFIG), K.MODEL_CONFIG)):
        reply = app(_message(world, K.EVALUATE, arrays=arrays_, config=config_), context)
        assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and culprit in reply.error.reason
    reply = app(_message(world, K.EVALUATE, arrays=arrays, config=config), context)
    assert not reply.has_error(), reply.error.reason
