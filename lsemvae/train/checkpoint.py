"""Checkpoints that describe themselves: weights, model config, provenance and training state.

A checkpoint is a plain dict saved with ``torch.save`` and loaded with ``weights_only=True``
(tensors, numbers, strings and containers only: no pickled objects), written atomically
(temporary file, fsync, rename) so a crash never leaves half a checkpoint. Pretrained checkpoints
meant to be shared are folders of safetensors + JSON instead (:mod:`lsemvae.pretrained`); loading
takes either.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lsemvae.errors import ConfigError
from lsemvae.model.config import ModelConfig
from lsemvae.model.lsemvae import LSEMVAE, build_model

FORMAT_VERSION = 1


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def capture_rng() -> dict[str, Any]:
    state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [state[0], torch.from_numpy(state[1].astype(np.int64)), int(state[2]), int(state[3]), float(state[4])],
        "python": _python_state(),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | Path, *, model: LSEMVAE, epoch: int, optimizer: torch.optim.Optimizer | None = None,
                    provenance: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> Path:
    """Write ``path`` atomically. ``provenance``: preprocessing config + version, data cache keys;
    ``state``: trainer bookkeeping (best loss so far, metrics...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": model.config.model_dump(mode="json"),
        "model_state": on_cpu(model.state_dict()),
        "optimizer_state": on_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "epoch": int(epoch),
        "rng": capture_rng(),
        "provenance": provenance or {},
        "state": state or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def on_cpu(state: Any) -> Any:
    """A state (tensors in dicts and lists) with every tensor on the CPU: a checkpoint written on a GPU loads on any
    machine (CPU tensors are kept as they are, so a CPU checkpoint is unchanged)."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(on_cpu(v) for v in state)
    return state


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint by ``.pt`` path, pretrained-checkpoint folder or shipped name (:mod:`lsemvae.pretrained`,
    sha256 checked). ``ckpt["source"]`` says which one was loaded (name, path, sha256), for provenance."""
    from lsemvae.pretrained import locate, load, pretrained_on, sha256_bytes

    folder = locate(path)  # unknown names and missing paths are refused here, listing the shipped names
    if folder is not None:
        return load(folder)
    path = Path(path)
    data = path.read_bytes()
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: say so instead of a pickle traceback
        raise ConfigError(f"{path}: not a readable LS-EMVAE checkpoint ({err.__class__.__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not an LS-EMVAE checkpoint of format {FORMAT_VERSION}")
    ckpt["source"] = {"path": str(path.resolve()), "sha256": sha256_bytes(data),
                      "pretrained_on": pretrained_on(ckpt.get("provenance") or {})}
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], **config_updates) -> LSEMVAE:
    """Rebuild the model from its recorded config (optionally with e.g. other ``tasks``).

    Loading is strict for everything except the task heads, which may differ between the
    pretraining and the fine-tuning tasks; any other missing or unexpected key is an error.
    """
    cfg = ModelConfig.model_validate({**ckpt["model_config"], **config_updates})
    pre = (ckpt.get("provenance") or {}).get("preprocess_config")
    recorded = pre.get("amplitude", "standardised") if pre else cfg.amplitude  # older pipelines standardised
    if recorded != cfg.amplitude:
        raise ConfigError(f"checkpoint was trained on {recorded} signals but its model config reads {cfg.amplitude}: "
                          "preprocess with the model's own settings (ModelConfig.preprocess_config())")
    model = build_model(cfg)
    load_pretrained(model, ckpt["model_state"])
    return model


def preprocess_config(ckpt: dict[str, Any], model_config: Any = None):
    """The preprocessing a checkpoint's model needs: the config recorded with it, else derived from its
    model config (``model_config``, or the checkpoint's own). The one place this is decided."""
    from lsemvae.data.preprocess import PreprocessConfig

    recorded = (ckpt.get("provenance") or {}).get("preprocess_config")
    if recorded:
        return PreprocessConfig.model_validate(recorded)
    cfg = model_config if model_config is not None else ModelConfig.model_validate(ckpt["model_config"])
    return cfg.preprocess_config() if hasattr(cfg, "preprocess_config") else PreprocessConfig()


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    body = {k: v for k, v in state.items() if not k.startswith("heads.")}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as err:  # shape mismatches are raised even when strict=False
        raise ConfigError(f"checkpoint does not match the model (another profile or latent size?): "
                          f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}") from None
    missing = [k for k in missing if not k.startswith("heads.")]
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(was it written for another profile or latent size?)"
        )
