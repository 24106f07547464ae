"""Server state checkpoint: an atomic round trip of everything the server needs to resume."""

from __future__ import annotations

import numpy as np
import pytest

from lsemvae.errors import ConfigError
from lsemvae.federation.aggregation import ServerOptimizerState
from lsemvae.federation.state import FORMAT, STATE_FILE, ServerState, load_state, save_state


def test_state_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    rng.integers(0, 10, 5)
    state = ServerState(round=4, model={"fusion.w": rng.normal(size=(3, 2)).astype(np.float32)},
                        opt=ServerOptimizerState({"fusion.w": np.ones((3, 2))}, {"fusion.w": np.full((3, 2), 2.0)}, 4),
                        rng=rng.bit_generator.state, model_config="{}", preprocess_config="{}",
                        run_config={"strategy": "fedadam"}, metrics=[{"round": 1, "auroc": {"a": 0.7}}],
                        node_sites={"12": "aspire"}, site_epsilon={"aspire": 2.5}, checked_nodes={"12": "aspire"})
    save_state(tmp_path, state)
    assert not list(tmp_path.glob("*.tmp"))
    back = load_state(tmp_path)
    np.testing.assert_array_equal(back.model["fusion.w"], state.model["fusion.w"])
    np.testing.assert_array_equal(back.opt.m["fusion.w"], state.opt.m["fusion.w"])
    np.testing.assert_array_equal(back.opt.v["fusion.w"], state.opt.v["fusion.w"])
    assert back.opt.steps == 4 and back.round == 4 and back.metrics == state.metrics and back.node_sites == state.node_sites
    assert back.job_id == state.job_id and back.site_epsilon == state.site_epsilon
    assert back.checked_nodes == state.checked_nodes and back.run_config == state.run_config
    assert (back.model_config, back.preprocess_config) == (state.model_config, state.preprocess_config)
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o077 == 0           # the coordinator's own, like a site's files
    assert back.generator().integers(0, 1000) == rng.integers(0, 1000)   # the RNG continues where it stopped


def test_missing_or_corrupt_state_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no server state"):
        load_state(tmp_path)
    (tmp_path / STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(ConfigError, match=r"not a readable server state \(IndexError: "):
        load_state(tmp_path)


def test_a_state_that_would_run_code_or_has_another_format_is_refused(tmp_path):
    """weights_only: a state file holding any object but tensors and plain data is refused, never unpickled."""
    import torch

    torch.save({"format": FORMAT, "meta": "{}", "payload": ConfigError("planted")}, tmp_path / STATE_FILE)
    with pytest.raises(ConfigError, match=r"not a readable server state \(UnpicklingError: .*Weights only load failed"):
        load_state(tmp_path)
    torch.save({"format": 1, "meta": "{}"}, tmp_path / STATE_FILE)
    with pytest.raises(ConfigError, match=rf"{STATE_FILE} has format 1, expected {FORMAT}$"):
        load_state(tmp_path)


def test_a_crash_while_saving_leaves_the_previous_round(tmp_path, monkeypatch):
    """The state is written to a temp file and renamed: a crash in torch.save never leaves half a state."""
    import torch

    state = ServerState(round=1, model={"fusion.w": np.zeros((2, 2), np.float32)}, opt=ServerOptimizerState(),
                        rng=np.random.default_rng(0).bit_generator.state, model_config="{}", preprocess_config="{}",
                        run_config={})
    save_state(tmp_path, state)
    before = (tmp_path / STATE_FILE).read_bytes()
    real_save = torch.save

    def crash(obj, fh):
        real_save(obj, fh)
        fh.flush()
        raise OSError("power cut")

    monkeypatch.setattr(torch, "save", crash)
    state.round = 2
    with pytest.raises(OSError, match="power cut"):
        save_state(tmp_path, state)
    assert (tmp_path / STATE_FILE).read_bytes() == before and load_state(tmp_path).round == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
