"""The wire format of model arrays: one packed buffer with its layout, float16 compression (run config
``update-dtype``), validation and aggregation. (The real ClientApp accepting float16 only when the
instruction says so: tests/reliability/test_malformed_messages.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.errors import ConfigError
from lsemvae.federation.codec import ArraySpec, CodecError, encode, pack, unpack
from lsemvae.site import federation_config
from lsemvae.federation.aggregation import Contribution, ServerOptimizer, ServerOptimizerState, aggregate_round


def decode(wire: dict[str, np.ndarray], dtype: str, *, sender: str) -> dict[str, np.ndarray]:
    """The arrays as a receiver gets them: packed as they travel, then unpacked."""
    return unpack(*pack(wire, dtype), dtype, sender=sender)


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


@pytest.mark.parametrize("sent, agreed", [("float16", "float32"), ("float32", "float16")])
def test_receiver_refuses_arrays_in_another_dtype_than_agreed(sent, agreed):
    buffer, layout = pack(_weights(), sent)
    with pytest.raises(CodecError, match=rf"the server sent arrays that are not {agreed}.*encoders\.I\.conv\.weight \({sent}\)"):
        unpack(buffer, layout, agreed, sender="the server")


def test_a_packed_buffer_is_read_only_as_its_layout_says():
    w = _weights()
    buffer, layout = pack(w, "float32")
    assert buffer.dtype == np.uint8 and buffer.size == sum(v.nbytes for v in w.values())
    assert [s.name for s in layout] == sorted(w)
    back = unpack(buffer, layout, "float32", sender="x")
    assert all(np.array_equal(back[k], v) for k, v in w.items())
    with pytest.raises(CodecError, match="bytes but its layout describes"):
        unpack(buffer[:-4], layout, "float32", sender="x")
    with pytest.raises(CodecError, match="names an array twice"):
        unpack(buffer, [layout[0], layout[0], *layout[2:]], "float32", sender="x")
    with pytest.raises(CodecError, match="one uint8 vector"):
        unpack(buffer.view(np.float32), layout, "float32", sender="x")
    with pytest.raises(ValueError):
        ArraySpec(name="../etc/passwd", dtype="float32", shape=(1,))


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
