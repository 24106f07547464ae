"""Server state checkpoint: an atomic round trip of everything the server needs to resume."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.errors import ConfigError
from lsemvae.federation.aggregation import ServerOptimizerState
from lsemvae.federation.state import STATE_FILE, ServerState, load_state, save_state


def test_state_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    rng.integers(0, 10, 5)
    state = ServerState(round=4, model={"fusion.w": rng.normal(size=(3, 2)).astype(np.float32)},
                        opt=ServerOptimizerState({"fusion.w": np.ones((3, 2))}, {"fusion.w": np.full((3, 2), 2.0)}, 4),
                        rng=rng.bit_generator.state, model_config="{}", preprocess_config="{}",
                        run_config={"strategy": "fedadam"}, metrics=[{"round": 1, "auroc": {"a": 0.7}}],
                        node_sites={"12": "aspire"})
    save_state(tmp_path, state)
    assert not list(tmp_path.glob("*.tmp"))
    back = load_state(tmp_path)
    np.testing.assert_array_equal(back.model["fusion.w"], state.model["fusion.w"])
    np.testing.assert_array_equal(back.opt.v["fusion.w"], state.opt.v["fusion.w"])
    assert back.opt.steps == 4 and back.round == 4 and back.metrics == state.metrics and back.node_sites == state.node_sites
    assert back.generator().integers(0, 1000) == rng.integers(0, 1000)   # the RNG continues where it stopped


def test_missing_or_corrupt_state_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no server state"):
        load_state(tmp_path)
    (tmp_path / STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(ConfigError, match="not a readable server state"):
        load_state(tmp_path)
