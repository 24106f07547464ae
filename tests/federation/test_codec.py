"""float16 update compression (run config ``update-dtype``): wire format, validation, aggregation, and the
real ClientApp accepting float16 arrays only when the run says so."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from lsemvae.errors import ConfigError
from lsemvae.federation import keys as K
from lsemvae.federation.codec import CodecError, decode, encode
from lsemvae.site import federation_config
from server.aggregation import Contribution, ServerOptimizer, ServerOptimizerState, aggregate_round


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"encoders.I.conv.weight": rng.normal(0, 0.3, (16, 1, 7)).astype(np.float32),
            "fusion.gate.bias": rng.normal(0, 1e-3, (4,)).astype(np.float32),
            "heads.right_heart.weight": rng.normal(0, 2.0, (1, 64)).astype(np.float32)}


def test_float16_halves_the_bytes_and_decodes_to_float32_within_rounding():
    w = _weights()
    wire = encode(w, "float16")
    assert all(v.dtype == np.float16 and v.flags.c_contiguous for v in wire.values())
    assert sum(v.nbytes for v in wire.values()) * 2 == sum(v.nbytes for v in w.values())
    back = decode(wire, "float16", sender="site a")
    for k, v in w.items():
        assert back[k].dtype == np.float32 and back[k].shape == v.shape
        # float16 has an 11-bit significand: relative rounding error at most 2**-11 (normal range)
        assert np.all(np.abs(back[k] - v) <= np.abs(v) * 2.0**-11 + 6e-8), k
        assert not np.array_equal(back[k], v)   # it is a lossy cast, not a no-op


def test_float32_is_exact_and_float64_state_goes_out_as_float32():
    w = _weights()
    assert all(np.array_equal(decode(encode(w, "float32"), "float32", sender="x")[k], v) for k, v in w.items())
    wire = encode({k: v.astype(np.float64) for k, v in w.items()}, "float32")
    assert {v.dtype for v in wire.values()} == {np.dtype(np.float32)}


@pytest.mark.parametrize("sent, agreed", [("float16", "float32"), ("float32", "float16"), ("float64", "float32")])
def test_receiver_refuses_arrays_in_another_dtype_than_agreed(sent, agreed):
    w = {k: v.astype(sent) for k, v in _weights().items()}
    with pytest.raises(CodecError, match=rf"the server sent arrays that are not {agreed}.*encoders\.I\.conv\.weight \({sent}\)"):
        decode(w, agreed, sender="the server")


def test_values_float16_cannot_hold_are_refused_not_sent_as_inf():
    with pytest.raises(CodecError, match="heads.x.weight.*float16's range"):
        encode({"heads.x.weight": np.array([1.0, 7e4], np.float32)}, "float16")
    with pytest.raises(CodecError, match="update-dtype must be one of float32, float16"):
        encode(_weights(), "bfloat16")


def test_run_config_key_defaults_to_float32_and_errors_name_it():
    assert federation_config({}).update_dtype == "float32"
    assert federation_config({"update-dtype": "float16"}).as_run_config()["update-dtype"] == "float16"
    with pytest.raises(ConfigError, match="update-dtype"):
        federation_config({"update-dtype": "int8"})


def test_aggregation_of_float16_updates_stays_float32_and_close_to_the_float32_average():
    global_w = _weights(0)
    sites = [_weights(1), _weights(2)]
    weights = [{"encoders.I": 30.0, "fusion": 30.0, "heads.right_heart": 30.0},
               {"encoders.I": 10.0, "fusion": 10.0, "heads.right_heart": 10.0}]

    def aggregate(dtype: str) -> dict[str, np.ndarray]:
        contribs = [Contribution(f"s{i}", decode(encode(s, dtype), dtype, sender=f"s{i}"), gw)
                    for i, (s, gw) in enumerate(zip(sites, weights))]
        new, _, _ = aggregate_round(global_w, contribs, ServerOptimizer("fedavg"), ServerOptimizerState())
        return new

    exact, half = aggregate("float32"), aggregate("float16")
    for k in global_w:
        assert half[k].dtype == np.float32
        np.testing.assert_allclose(exact[k], 0.75 * sites[0][k] + 0.25 * sites[1][k], rtol=1e-6, atol=1e-7)
        # each site's rounding error is at most 2**-11 of its own value; the average can cancel, its error cannot
        bound = (0.75 * np.abs(sites[0][k]) + 0.25 * np.abs(sites[1][k])) * 2.0**-11 + 1e-7
        assert np.all(np.abs(half[k] - exact[k]) <= bound), k


# ----------------------------------------------------------------------------- real ClientApp (slow)

from tests.federation.test_client_messages import task_identity, world  # noqa: E402, F401  (fixtures)


@pytest.mark.e2e
def test_client_accepts_float16_only_when_the_config_says_so(world):
    from client.client_app import app
    from lsemvae.federation.groups import federated
    from server.server_app import _array_record, train_config

    tmp, names, fed, state = world
    site = names[0]
    ctx = Context(run_id=91, node_id=1, node_config={"site": site, "site-config": str(tmp / "sites" / f"{site}.toml")},
                  state=RecordDict(), run_config=fed.as_run_config())
    half = _array_record(encode(federated(state.model), "float16"))

    def send(config_dtype: str | None) -> Message:
        cfg = train_config(fed, state, 1, seed=1)
        if config_dtype is None:
            del cfg[K.UPDATE_DTYPE]
        else:
            cfg[K.UPDATE_DTYPE] = config_dtype
        return app(Message(RecordDict({K.ARRAYS: half, K.CONFIG: cfg}), dst_node_id=1, message_type=K.TRAIN,
                           group_id="1"), ctx)

    for refused_under in ("float32", None, "bfloat16"):       # None: a server that does not send the key
        reply = send(refused_under)
        assert reply.has_error() and reply.error.code == K.ERR_BAD_MESSAGE, refused_under
        assert "update-dtype" in reply.error.reason
    reply = send("float16")
    assert not reply.has_error(), reply.error.reason
    up = reply.content[K.ARRAYS]
    assert {a.dtype for a in up.values()} == {"float16"}
    assert {k: tuple(a.shape) for k, a in up.items()} == {k: state.model[k].shape for k in up}


def test_digest_names_exactly_the_arrays_that_travel():
    from lsemvae.federation.codec import digest

    a = {"encoders.I.w": np.arange(6, dtype=np.float32).reshape(2, 3), "encoders.II.b": np.ones(3, np.float32)}
    same = dict(reversed(list(a.items())))                              # insertion order does not matter
    assert digest(a) == digest(same) and len(digest(a)) == 64
    for changed in ({**a, "encoders.II.b": np.ones(3, np.float16)},        # dtype (float16 on the wire)
                    {**a, "encoders.I.w": a["encoders.I.w"].reshape(3, 2)},  # shape
                    {**a, "encoders.I.w": a["encoders.I.w"] + 1e-6},         # a value
                    {"encoders.III.w": a["encoders.I.w"], "encoders.II.b": a["encoders.II.b"]}):  # a name
        assert digest(changed) != digest(a)
