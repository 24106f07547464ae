"""A site receiving malformed or mismatched server messages: each is refused with a clear error reply
(code ERR_BAD_MESSAGE naming what is wrong), nothing is spent from the privacy ledger, and the same
site then trains normally on a correct message: it keeps running.

The real ClientApp answers real Flower Messages built by the library's own server round, then broken
by hand (the JSON body, the packed arrays or their layout); nothing of ours is mocked.
(tests/federation/test_client_messages.py covers a wrong shape, an empty model config, a hostile digest,
out-of-bounds values and a refused non-DP request.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from client.client_app import app
from lsemvae.federation import keys as K
from lsemvae.federation.groups import federated
from lsemvae.federation.messages import TrainReply, from_content
from tests.federation.test_client_messages import context, message, site_cfg, task_identity, world  # noqa: F401

pytestmark = pytest.mark.e2e


def _with_body(msg: Message, change) -> Message:
    body = json.loads(msg.content.config_records[K.BODY][K.JSON])
    change(body)
    msg.content.config_records[K.BODY] = ConfigRecord({K.JSON: json.dumps(body)})
    return msg


def _arrays(world, change) -> tuple[dict, str]:
    arrays = dict(federated(world[3].model))
    return change(arrays, world[3].model)


def _unknown_param(arrays, model):
    return {**arrays, "encoders.V9.conv.weight": np.zeros((2, 2), np.float32)}, "encoders.V9.conv.weight"


def _decoder_param(arrays, model):
    key = next(k for k in model if k.startswith("decoders."))     # a real decoder tensor, right shape
    return {**arrays, key: model[key]}, key


def _head_shape(arrays, model):
    key = next(k for k in arrays if k.startswith("heads.") and k.endswith("weight"))
    return {**arrays, key: np.zeros((7, 3), np.float32)}, key


def _renamed(arrays, model):
    key = next(k for k in arrays if k.startswith("encoders.I."))
    out = dict(arrays)
    out["_module." + key] = out.pop(key)          # an Opacus-wrapped name leaking from a buggy server
    return out, "_module."


def _drop(field):
    return lambda body: body.pop(field)


def _set(field, value):
    return lambda body: body.__setitem__(field, value)


BODY_BROKEN = {
    "no server round": (_drop("server_round"), "server_round"),
    "no model config": (_drop("model_config_json"), "model_config_json"),
    "no preprocessing config": (_drop("preprocess_config_json"), "preprocess_config_json"),
    "no batch size": (_drop("batch_size"), "batch_size"),
    "no learning rate": (_drop("lr"), "lr"),
    "no local epochs": (_drop("local_epochs"), "local_epochs"),
    "no number of rounds": (_drop("num_server_rounds"), "num_server_rounds"),
    "no dp flag": (_drop("dp"), "dp"),
    "batch size not a number": (_set("batch_size", "many"), "batch_size"),
    "batch size zero": (_set("batch_size", 0), "batch_size"),
    "learning rate infinite": (_set("lr", float("inf")), "lr"),
    "round beyond the run": (_set("server_round", 99), "num_server_rounds"),
    "unknown instruction": (_set("eval_bins", 10), "eval_bins"),
    "wire dtype unknown": (_set("update_dtype", "bfloat16"), "update_dtype"),
    "model config not JSON": (_set("model_config_json", "{not json"), "model config"),
    "model config of another model": (_set("model_config_json", json.dumps({"latent_dim": "x"})), "model config"),
    "layout that lies about its bytes": (lambda b: b["layout"][0].__setitem__("shape", [10**6]), "bytes"),
}

ARRAYS_BROKEN = {
    "unknown parameter name": _unknown_param,
    "decoder parameter (never federated)": _decoder_param,
    "head of the wrong shape": _head_shape,
    "parameter under a wrapped name": _renamed,
}


def _reason(reply: Message):
    return (reply.error.code, reply.error.reason) if reply.has_error() else "accepted"


def test_each_malformed_train_message_is_refused_then_the_site_trains(world):
    tmp, names, fed, state = world
    site = names[0]
    cfg = site_cfg(world, site)
    ledger_before = cfg.ledger_path.read_bytes() if cfg.ledger_path.exists() else None
    ctx = context(world, site, run_id=77)
    problems = {}
    for case, (change, culprit) in BODY_BROKEN.items():
        reply = app(_with_body(message(world, K.TRAIN), change), ctx)
        if not (reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and culprit in reply.error.reason):
            problems[case] = _reason(reply)
    for case, breaker in ARRAYS_BROKEN.items():
        arrays, culprit = _arrays(world, breaker)
        reply = app(message(world, K.TRAIN, arrays=arrays), ctx)
        if not (reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and culprit in reply.error.reason):
            problems[case] = _reason(reply)
    good = message(world, K.TRAIN)
    packed = good.content.array_records[K.ARRAYS][K.PACKED].numpy()
    structural = {
        "no arrays record": RecordDict({K.BODY: good.content.config_records[K.BODY]}),
        "no body record": RecordDict({K.ARRAYS: good.content.array_records[K.ARRAYS]}),
        "arrays outside the packed buffer": RecordDict({K.BODY: good.content.config_records[K.BODY],
                                                        K.ARRAYS: ArrayRecord({K.PACKED: Array(packed), "extra": Array(packed[:4])})}),
        "packed buffer of floats": RecordDict({K.BODY: good.content.config_records[K.BODY],
                                               K.ARRAYS: ArrayRecord({K.PACKED: Array(packed.view(np.float32))})}),
    }
    for case, content in structural.items():
        reply = app(Message(content, dst_node_id=1, message_type=K.TRAIN, group_id="1"), ctx)
        if not (reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE):
            problems[case] = _reason(reply)
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    # nothing was spent on refused messages
    assert (cfg.ledger_path.read_bytes() if cfg.ledger_path.exists() else None) == ledger_before
    # the same site answers a correct message normally
    reply = app(message(world, K.TRAIN), ctx)
    assert not reply.has_error(), reply.error.reason
    assert from_content(reply.content, TrainReply, sender="site")[0].epsilon > 0
    # every refusal was logged at the site as well
    n = len(BODY_BROKEN) + len(ARRAYS_BROKEN) + len(structural)
    rows = [json.loads(line) for line in cfg.outgoing_log.read_text().splitlines()]
    refusals = [r for r in rows[-(n + 1):-1] if "error" in r]
    assert len(refusals) == n and all(r["error"]["code"] == K.ERR_BAD_MESSAGE for r in refusals)


def test_malformed_evaluate_message_is_refused(world):
    tmp, names, fed, state = world
    ctx = context(world, names[1], run_id=78)
    arrays, culprit = _arrays(world, _unknown_param)
    reply = app(message(world, K.EVALUATE, arrays=arrays), ctx)
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and culprit in reply.error.reason
    reply = app(_with_body(message(world, K.EVALUATE), _drop("model_config_json")), ctx)
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and "model_config_json" in reply.error.reason
    reply = app(message(world, K.EVALUATE), ctx)
    assert not reply.has_error(), reply.error.reason


def test_float16_arrays_are_accepted_only_when_the_instruction_says_so(world):
    tmp, names, fed, state = world
    ctx = context(world, names[0], run_id=91)
    half = message(world, K.TRAIN, update={"update_dtype": "float16"})     # float16 arrays, and the body says so
    reply = app(_with_body(message(world, K.TRAIN, update={"update_dtype": "float16"}), _set("update_dtype", "float32")),
                ctx)                                                       # float16 arrays, the body says float32
    assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE and "update-dtype" in reply.error.reason
    reply = app(half, ctx)
    assert not reply.has_error(), reply.error.reason
    body, arrays = from_content(reply.content, TrainReply, dtype="float16", sender="site")
    assert {s.dtype for s in body.layout} == {"float16"}
    assert {k: a.shape for k, a in arrays.items()} == {k: state.model[k].shape for k in arrays}
