"""Write a pretraining checkpoint (``lsemvae pretrain``'s ``best.pt``) as a pretrained-checkpoint folder, and
reproduce a folder from its data by rerunning the pretraining it records.

Exporting the same tensors gives the same bytes (safetensors orders its header), so "reproduced bit for bit"
is a sha256 comparison.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lsemvae.errors import ConfigError
from lsemvae.pretrained import CARD, FORMAT, FORMAT_VERSION, META, WEIGHTS, read_meta, sha256_bytes

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")  # a bare word: see lsemvae.pretrained.is_name

#: ``lsemvae pretrain`` data flag of each cohort name its provenance records (``folder:<path>`` -> --folder)
SOURCE_FLAGS = {"ptb-xl": "--ptbxl", "ludb": "--ludb"}


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf (an R^2 of a lead no record has) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """checkpoint.json and the card rendered from it (the card never disagrees with the JSON)."""
    import json

    from lsemvae.pretrained.card import render

    _write(folder / META, (json.dumps(_finite(meta), indent=2, allow_nan=False) + "\n").encode())
    _write(folder / CARD, render(meta).encode())


def data_flags(provenance: dict[str, Any]) -> list[str]:
    """The data flags of the recorded pretraining command (``--ptbxl ROOT`` ...), as they were typed."""
    words = shlex.split(provenance.get("command") or "")
    flags = set(SOURCE_FLAGS.values()) | {"--folder"}
    return [part for flag, value in zip(words, words[1:]) if flag in flags for part in (flag, value)]


def reproduce_command(name: str, provenance: dict[str, Any]) -> str:
    return shlex.join(["lsemvae", "pretrained", "reproduce", name, *data_flags(provenance)])


def export(ckpt: dict[str, Any], out: Path, *, name: str, notes: list[str] | None = None) -> Path:
    """Write ``ckpt`` (a dict from :func:`~lsemvae.train.checkpoint.load_checkpoint`) to the folder ``out``.

    The evaluation figures of an earlier export into ``out`` are kept only when the weights are the same
    bytes (they were measured on exactly those weights)."""
    from safetensors.torch import save

    if not NAME_PATTERN.match(name):
        raise ConfigError(f"checkpoint name {name!r}: use lower-case letters, digits and '-' (at most 64), "
                          "e.g. compact-mimic-iv-ecg")
    if ckpt.get("model_config", {}).get("architecture", "lsemvae") != "lsemvae" or ckpt["model_config"].get("tasks"):
        raise ConfigError("export takes a pretraining checkpoint (lsemvae pretrain's best.pt): this one has task "
                          "heads or is another architecture")
    # clones: safetensors refuses tensors that share memory, and a state dict may hold views
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in ckpt["model_state"].items()}
    data = save(tensors)
    digest = sha256_bytes(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = read_meta(out) if (out / META).is_file() else None
    evaluation = previous.get("evaluation", []) if previous and previous["weights"]["sha256"] == digest else []
    provenance = ckpt.get("provenance") or {}
    state = ckpt.get("state") or {}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "weights": {"file": WEIGHTS, "sha256": digest, "bytes": len(data), "tensors": len(tensors),
                    "parameters": int(sum(t.numel() for t in tensors.values())),
                    "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})},
        "model_config": ckpt["model_config"],
        "provenance": provenance,
        "training": {"best_epoch": state.get("best_epoch", ckpt.get("epoch")), "best_val_loss": state.get("best_val_loss"),
                     "best_metrics": state.get("best_metrics", {})},
        "reproduce": reproduce_command(name, provenance),
        "notes": list(notes or (previous or {}).get("notes", [])),
        "evaluation": evaluation,
    }
    _write(out / WEIGHTS, data)
    write_meta(out, meta)
    return out


# ----------------------------------------------------------------------------- reproduce

def pretrain_argv(meta: dict[str, Any], data: dict[str, list[str]], out: Path) -> list[str]:
    """``lsemvae pretrain`` arguments that redo the recorded pretraining on ``data`` (flag -> roots) into ``out``.

    Refuses when this code would train differently from what the checkpoint records (settings without a flag,
    another model profile): the weights could then not match, whatever the data."""
    from lsemvae.data.preprocess import PIPELINE_VERSION
    from lsemvae.model.config import get_profile
    from lsemvae.train.pretrain import PretrainConfig

    prov, model = meta["provenance"], meta["model_config"]
    recorded = prov.get("pretrain_config")
    if not recorded or not prov.get("data"):
        raise ConfigError(f"{meta['name']}: its provenance does not record the pretraining settings and data "
                          "(written before `lsemvae pretrain` recorded them): it cannot be reproduced by command")
    sources = [SOURCE_FLAGS.get(c, "--folder") for c in prov["data"]]
    missing = [f for f in dict.fromkeys(sources) if not data.get(f)]
    if missing:
        raise ConfigError(f"{meta['name']} was pretrained on {', '.join(prov['data'])}: pass {' and '.join(missing)} "
                          f"(it was made with: {prov.get('command')})")
    cfg = PretrainConfig(epochs=recorded["epochs"], batch_size=recorded["batch_size"], lr=recorded["lr"],
                         seed=recorded["seed"]).model_dump(mode="json")
    # a setting added after the recording reads as its default, which (new options are off by default) is what ran
    recorded = PretrainConfig.model_validate(recorded).model_dump(mode="json")
    ours = get_profile(model["profile"], fusion=model["fusion"], amplitude=model["amplitude"]).model_dump(mode="json")
    for what, mine, theirs in (("pretraining settings", cfg, recorded), ("model profile", ours, model),
                               ("preprocessing pipeline", PIPELINE_VERSION, prov.get("pipeline_version"))):
        if mine != theirs:
            diff = ({k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
                    if isinstance(mine, dict) else f"{theirs} recorded, {mine} here")
            raise ConfigError(f"{meta['name']}: this code's {what} differ from the recorded ones ({diff}): check out "
                              f"commit {(prov.get('code') or {}).get('commit')} to reproduce it")
    threads = (prov.get("environment") or {}).get("torch_threads")
    argv = ["pretrain"]
    for flag in dict.fromkeys(sources):
        argv += [part for root in data[flag] for part in (flag, str(root))]
    argv += ["--profile", model["profile"], "--fusion", model["fusion"], "--amplitude", model["amplitude"],
             "--epochs", str(recorded["epochs"]), "--batch-size", str(recorded["batch_size"]), "--lr", repr(recorded["lr"]),
             "--seed", str(recorded["seed"]), "--val-fraction", repr(prov.get("val_fraction", 0.1)),
             "--exclude-folds", *map(str, prov.get("excluded_folds", [])), "--out", str(out)]
    return argv + (["--threads", str(threads)] if threads else [])


def compare_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Largest absolute difference over all tensors, and the tensor where it is."""
    if set(a) != set(b):
        return {"same_tensors": False, "only_in_first": sorted(set(a) - set(b))[:5], "only_in_second": sorted(set(b) - set(a))[:5]}
    worst, where, scale = 0.0, None, 0.0
    for k in sorted(a):
        d = float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0
        scale = max(scale, float(a[k].float().abs().max()) if a[k].numel() else 0.0)
        if d > worst:
            worst, where = d, k
    return {"same_tensors": True, "max_abs_diff": worst, "at": where, "max_abs_weight": scale}
