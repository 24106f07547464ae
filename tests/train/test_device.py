"""--device and --precision: names resolved with clear errors, mixed precision really on, inputs follow the model."""

from __future__ import annotations

import pytest
import torch

from lsemvae.errors import ConfigError
from lsemvae.train.device import check_precision, model_device, place, resolve_device
from lsemvae.train.pretrain import PretrainConfig, Runtime, train_epoch

from tests.train.test_pretrain import Generated, _model

CPU = torch.device("cpu")


def test_device_names_and_what_to_do_when_one_is_missing():
    assert resolve_device("cpu") == CPU
    with pytest.raises(ConfigError, match="--device 'tpu': choose one of auto, cpu, cuda, mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") in (CPU, torch.device("mps"))
        with pytest.raises(ConfigError, match="no CUDA device; use --device cpu"):
            resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="--precision 'fp8': choose one of fp32, bf16, fp16"):
        check_precision("fp8", CPU)


def test_a_model_placed_on_the_cpu_takes_its_inputs_there():
    model = place(_model(), "cpu")
    assert model_device(model) == CPU and model_device(torch.nn.Identity()) == CPU


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_pretraining_runs_under_autocast(precision):
    """One epoch in reduced precision: finite, and not the fp32 numbers (autocast really changed the arithmetic)."""
    if precision == "fp16" and not torch.amp.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast")
    data, cfg = Generated(16, 0), PretrainConfig(epochs=1, batch_size=8, seed=1)
    rows = {}
    for p in ("fp32", precision):
        model = _model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        runtime = Runtime(precision=check_precision(p, CPU))
        scaler = torch.amp.GradScaler("cpu") if p == "fp16" else None
        rows[p] = train_epoch(model, data, cfg, optimizer, 1, progress=False, runtime=runtime, scaler=scaler)
    assert all(torch.isfinite(torch.tensor(v)) for v in rows[precision].values())
    assert rows[precision]["train_loss"] == pytest.approx(rows["fp32"]["train_loss"], rel=0.05)
    assert rows[precision]["train_loss"] != rows["fp32"]["train_loss"]
