"""Pretrained LS-EMVAE checkpoints in a format that cannot execute code; the shipped ones load by name.

A pretrained checkpoint is a folder:

  ``weights.safetensors``  every tensor of the model (safetensors: a JSON header and raw numbers, nothing to run)
  ``checkpoint.json``      what it is: model config, provenance (data seen, preprocessing, pretraining settings and
                           seed, code commit, command, numerical environment), the weights' sha256 and size, the
                           command that reproduces it and the evaluation figures of its card
  ``MODEL_CARD.md``        the model card, rendered from checkpoint.json (:mod:`lsemvae.pretrained.card`)

Folders beside this file are shipped with the package and load by their name (``compact-ptbxl-ludb``); any
other folder loads by its path, so a checkpoint pretrained elsewhere (a larger corpus, a GPU) is exported,
listed, verified and loaded the same way. The weights' sha256 is checked on every load: a damaged or
altered file is refused. :func:`lsemvae.train.checkpoint.load_checkpoint` dispatches here, so every
command that takes a checkpoint takes a name or a folder as well as a ``.pt`` file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

from lsemvae.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parent
FORMAT, FORMAT_VERSION = "lsemvae-pretrained", 1
WEIGHTS, META, CARD = "weights.safetensors", "checkpoint.json", "MODEL_CARD.md"

#: The shipped checkpoint each model profile starts from when the user names none (real data only:
#: the synthetic simulation keeps its own quick pretraining).
DEFAULTS = {"compact": "compact-ptbxl-ludb"}


def shipped_dirs() -> list[Path]:
    """Where shipped checkpoints live: beside this module, and in the installed distribution when this module
    was imported from a copy that carries only code (a Flower app bundle, FAB, holds no .safetensors: the
    ServerApp imports the bundle's lsemvae and finds the weights of the lsemvae installed beside it)."""
    dirs = [SHIPPED_DIR]
    try:
        dist = importlib.metadata.distribution("lsemvae-federated")
    except importlib.metadata.PackageNotFoundError:
        return dirs
    url = json.loads(dist.read_text("direct_url.json") or "{}")
    if url.get("dir_info", {}).get("editable") and url.get("url", "").startswith("file://"):
        dirs.append(Path(urllib.parse.unquote(urllib.parse.urlparse(url["url"]).path)) / "lsemvae" / "pretrained")
    else:
        dirs.append(Path(dist.locate_file("lsemvae/pretrained")))
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def _shipped() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in shipped_dirs():
        for p in sorted(d.iterdir()):
            if (p / META).is_file():
                found.setdefault(p.name, p)
    return found


def shipped() -> list[str]:
    """Names of the checkpoints shipped with the package."""
    return sorted(_shipped())


def is_name(spec: str | os.PathLike) -> bool:
    """A bare word (no folder part, no file suffix) names a shipped checkpoint, even where a file of that name
    exists here (write ./NAME for the file); anything else is a path."""
    text = os.fspath(spec)
    return bool(text) and os.sep not in text and "/" not in text and not Path(text).suffix and text not in (".", "..")


def locate(spec: str | os.PathLike) -> Path | None:
    """The folder of the pretrained checkpoint ``spec`` names (a shipped name, a folder, or its checkpoint.json);
    None when ``spec`` is a file of another kind (a ``.pt`` checkpoint). Unknown names and missing paths are
    refused with the list of shipped names."""
    if is_name(spec) and (folder := _shipped().get(os.fspath(spec))):
        return folder
    path = Path(spec)
    if path.is_dir():
        if not (path / META).is_file():
            raise ConfigError(f"{path}: a folder without {META}: not a pretrained checkpoint (give a checkpoint "
                              f"folder, a .pt file or a shipped name: {', '.join(shipped()) or 'none shipped'})")
        return path
    if path.name == META and path.is_file():
        return path.parent
    if path.is_file():
        return None
    names = ", ".join(shipped()) or "none"
    if is_name(spec):
        raise ConfigError(f"{os.fspath(spec)}: file not found, and no shipped checkpoint has this name; shipped: {names} "
                          "(`lsemvae pretrained list`)")
    raise ConfigError(f"{os.fspath(spec)}: file not found; give the .pt written by `lsemvae pretrain`, a folder written "
                      f"by `lsemvae pretrained export`, or a shipped name ({names})")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not an LS-EMVAE pretrained checkpoint of format {FORMAT} {FORMAT_VERSION} "
                          f"(found format {meta.get('format') if isinstance(meta, dict) else None!r})")
    for key in ("name", "model_config", "provenance", "weights"):
        if key not in meta:
            raise ConfigError(f"{path}: field {key!r} is missing")
    return meta


def read_weights(folder: Path, meta: dict[str, Any]) -> bytes:
    """The weights file's bytes after checking them against the recorded sha256 (read once: what is checked is
    what is loaded)."""
    path = folder / meta["weights"]["file"]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the weights ({err.strerror})") from None
    expected, found = meta["weights"]["sha256"], sha256_bytes(data)
    if found != expected:
        raise ConfigError(
            f"{path}: sha256 {found} does not match the {expected} recorded in {folder / META}: the weights were "
            f"damaged or altered, refusing to load them. Restore the file (git checkout / reinstall) or rebuild it "
            f"with `{meta.get('reproduce', 'lsemvae pretrained reproduce')}`")
    return data


def source(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What a run records about the checkpoint it started from."""
    return {"name": meta["name"], "path": str(folder), "sha256": meta["weights"]["sha256"],
            "shipped": folder.resolve().parent in shipped_dirs(), "pretrained_on": pretrained_on(meta["provenance"])}


def load(folder: Path) -> dict[str, Any]:
    """The checkpoint as :func:`lsemvae.train.checkpoint.load_checkpoint` returns one (weights verified)."""
    from safetensors.torch import load as load_safetensors

    from lsemvae.train.checkpoint import FORMAT_VERSION as PT_FORMAT

    meta = read_meta(folder)
    data = read_weights(folder, meta)
    try:
        state = load_safetensors(data)
    except Exception as err:  # a foreign file whose hash was recorded as it is
        raise ConfigError(f"{folder / meta['weights']['file']}: not readable safetensors ({err})") from None
    training = meta.get("training") or {}
    return {"format_version": PT_FORMAT, "model_config": meta["model_config"], "model_state": state,
            "optimizer_state": None, "epoch": int(training.get("best_epoch", 0)), "provenance": meta["provenance"],
            "state": training, "source": source(folder, meta)}


def pretrained_on(provenance: dict[str, Any]) -> str:
    """One line saying what data a checkpoint saw, e.g. ``ptb-xl (900 records) + ludb (199 records)``."""
    if is_synthetic(provenance):
        return "SYNTHETIC ECGs only (" + str(provenance.get("data", "synthetic cohort")) + ")"
    data = provenance.get("data")
    if isinstance(data, dict) and data:
        folds = provenance.get("excluded_folds") or []
        text = " + ".join(f"{name} ({d.get('records', '?')} records)" for name, d in data.items())
        return text + (f", PTB-XL fold(s) {', '.join(map(str, folds))} excluded" if folds and "ptb-xl" in data else "")
    keys = provenance.get("data_cache_keys")
    return " + ".join(keys) if keys else "not recorded"


def is_synthetic(provenance: dict[str, Any]) -> bool:
    """Pretrained on generated ECGs only (simulation/run.py's quick pretraining records this)."""
    # "data": "synthetic pretraining cohort" is what simulation/run.py recorded before "synthetic_data" existed
    return bool(provenance.get("synthetic_data")) or provenance.get("data") == "synthetic pretraining cohort"
