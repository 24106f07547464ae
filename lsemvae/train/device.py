"""Where a command's tensors live and in what precision: ``--device`` and ``--precision``.

``auto`` is the best device this machine has (CUDA, then Apple's MPS, then the CPU). Precision ``fp32`` touches
nothing (no autocast, no scaler): a CPU user who passes no flag runs exactly what ran before these options
existed. ``bf16`` and ``fp16`` run the forward pass and loss under :func:`torch.autocast` (weights, optimizer
and gradients stay fp32); ``fp16`` also scales the loss (:class:`torch.amp.GradScaler`) so small gradients do not
flush to zero. Differentially private training stays fp32: Opacus clips per-sample gradients whose norms
reduced precision would change (see README, "Pretraining at scale").
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import torch

from lsemvae.argtypes import int_at_least
from lsemvae.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto", *, local_rank: int | None = None) -> torch.device:
    """``auto``/``cpu``/``cuda``/``mps`` (or ``cuda:N``) -> a device this machine has; ``local_rank`` picks the GPU
    of one torchrun process."""
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise ConfigError(f"--device {name!r}: choose one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: this machine (torch {torch.__version__}) has no CUDA device; use "
                              "--device cpu, or install a CUDA build of torch on a GPU machine")
        if ":" in name:
            return torch.device(name)
        return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    if kind == "mps" and not _mps_available():
        raise ConfigError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu")
    return torch.device(kind)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for one without any): its inputs are moved there."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def place(model: torch.nn.Module, name: str = "auto") -> torch.nn.Module:
    """``model`` on the ``--device`` ``name``. Checkpoints load onto the CPU (:func:`~lsemvae.train.checkpoint.
    load_checkpoint` maps every tensor there), so any checkpoint runs on any device this way."""
    return model.to(resolve_device(name))


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def check_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"--precision {precision}: torch {torch.__version__} has no autocast on {device.type}; "
                          "use --precision fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """The forward pass' context: nothing for fp32, :func:`torch.autocast` otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (its range is too small for raw gradients); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensors, dicts and lists of them) on ``device``; a no-op on the CPU."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def loader_options(device: torch.device, workers: int) -> dict:
    """DataLoader settings: ``workers`` reading processes (0: the main process, as before), pinned memory for a
    GPU (its copies then overlap with compute)."""
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": False}


def add_device_arguments(p: argparse.ArgumentParser, *, precision: bool = True, loader: bool = True) -> None:
    """``--device`` (and ``--precision``, ``--loader-workers``) for a command that runs a model."""
    p.add_argument("--device", default="auto", metavar="|".join(DEVICES),
                   help="where the model runs: auto picks CUDA if this machine has it, else MPS, else the CPU; "
                        "cpu, cuda (cuda:N for one GPU) or mps")
    if precision:
        p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (default); bf16 or fp16 run the forward pass under autocast (fp16 with a loss "
                            "scaler): about twice the throughput on a recent GPU, weights and optimizer stay fp32")
    if loader:
        p.add_argument("--loader-workers", type=int_at_least(0), default=0, metavar="N",
                       help="processes that read and collate batches (default 0: the main process); 2-8 keep a "
                            "GPU fed")
