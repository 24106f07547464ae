"""The whole server state, checkpointed atomically after every round, and resumed from.

One file, ``<out-dir>/server-state.pt``: global weights of the full model (decoders included,
so the final model is complete), the server optimiser's moments, the last completed round,
the server RNG, the metric rows so far, which node was which site, every site's highest reported
epsilon, and the model/preprocessing configs and run config of the run. Written atomically
(:func:`lsemvae.fileio.atomic_open`): a crash leaves the previous round's state or this one's, never
half of one; readable by the coordinator's user only. Loaded with ``torch.load(weights_only=True)``:
tensors and plain data only, so a planted file cannot run code.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsemvae.errors import ConfigError
from lsemvae.federation.aggregation import ServerOptimizerState
from lsemvae.fileio import atomic_open

STATE_FILE = "server-state.pt"
FORMAT = 2   # 2: job id, site epsilons and checked nodes are part of every state


@dataclass
class ServerState:
    round: int                               # last completed round (0 = none yet)
    model: dict[str, np.ndarray]             # full state_dict of the global model
    opt: ServerOptimizerState
    rng: dict[str, Any]                      # numpy Generator state (seeds sent to sites)
    model_config: str                        # JSON of ModelConfig
    preprocess_config: str                   # JSON of PreprocessConfig
    run_config: dict[str, Any]
    job_id: str = field(default_factory=lambda: secrets.token_hex(8))   # kept across resume: sites plan per job
    metrics: list[dict] = field(default_factory=list)
    node_sites: dict[str, str] = field(default_factory=dict)   # node id -> site name (as last reported)
    site_epsilon: dict[str, float] = field(default_factory=dict)   # site -> highest cumulative epsilon reported
    checked_nodes: dict[str, str] = field(default_factory=dict)  # node id -> site whose task heads fit this job

    def generator(self) -> np.random.Generator:
        gen = np.random.default_rng()
        gen.bit_generator.state = self.rng
        return gen


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


def save_state(out_dir: Path, state: ServerState) -> Path:
    path = out_dir / STATE_FILE
    payload = {
        "format": FORMAT,
        "round": state.round,
        "model": _tensors(state.model),
        "opt_m": _tensors(state.opt.m),
        "opt_v": _tensors(state.opt.v),
        "opt_steps": state.opt.steps,
        # JSON strings: plain data of any depth, loadable with weights_only=True
        "meta": json.dumps({"job_id": state.job_id, "rng": state.rng, "model_config": state.model_config,
                            "preprocess_config": state.preprocess_config, "run_config": state.run_config,
                            "metrics": state.metrics, "node_sites": state.node_sites,
                            "site_epsilon": state.site_epsilon, "checked_nodes": state.checked_nodes}),
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_state(out_dir: Path) -> ServerState:
    path = out_dir / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"resume: no server state at {path}; run without resume=true to start fresh")
    try:
        p = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(p["meta"])
    except Exception as err:
        raise ConfigError(f"resume: {path} is not a readable server state ({type(err).__name__}: {err})") from None
    if p.get("format") != FORMAT:
        raise ConfigError(f"resume: {path} has format {p.get('format')}, expected {FORMAT}")
    return ServerState(
        round=int(p["round"]), model=_arrays(p["model"]),
        opt=ServerOptimizerState(_arrays(p["opt_m"]), _arrays(p["opt_v"]), int(p["opt_steps"])),
        rng=meta["rng"], model_config=meta["model_config"], preprocess_config=meta["preprocess_config"],
        run_config=meta["run_config"], metrics=meta["metrics"], node_sites=meta["node_sites"],
        site_epsilon=meta["site_epsilon"], checked_nodes=meta["checked_nodes"], job_id=meta["job_id"],
    )
