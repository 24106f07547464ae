"""A site's side of the federation, apart from the round itself: which site, its data, its model, its disk.

Deployment: ``client/run.py`` puts ``site``, ``site-config`` and ``state-dir`` in the SuperNode's
node config. Simulation: the node config holds ``partition-id``/``num-partitions``; partition
``i`` becomes the ``i``-th site of the run config's ``sim-sites``, read from ``sites-dir``, with
its state under ``sim-state-dir`` (so simulations never touch a real site's ledger).

Everything the server chooses is bounded here by the site's :class:`~lsemvae.site.SiteLimits`: the
model is counted on the ``meta`` device before any memory is allocated, the preprocessing length is
capped, and at most ``max_cache_variants`` preprocessed caches are kept (least recently used goes).
The frozen encoders a site keeps live at ``<state_dir>/base/<digest>.npz``, the digest validated as
64 hex characters (never a path from the server).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsemvae.config import validate
from lsemvae.errors import ConfigError, LSEMVAEError
from lsemvae.federation.codec import digest, encode
from lsemvae.federation.messages import SiteInfo, TaskInfo
from lsemvae.fileio import atomic_open, private_dir
from lsemvae.site import SiteConfig, federation_config, load_site_config, site_config_path


class OutOfBounds(LSEMVAEError):
    """A server instruction asks for more than the site's limits allow."""


def resolve_site(node_config: dict[str, Any], run_config: dict[str, Any]) -> SiteConfig:
    if "site-config" in node_config:
        cfg = load_site_config(str(node_config["site-config"]))
        if node_config.get("site") and node_config["site"] != cfg.name:
            raise ConfigError(f"node config names site {node_config['site']!r} but {node_config['site-config']} is {cfg.name!r}")
        if node_config.get("state-dir"):
            cfg = validate(SiteConfig, {**cfg.model_dump(), "state_dir": Path(str(node_config["state-dir"]))},
                           source="node config state-dir")
        return cfg
    if "partition-id" in node_config:
        fed = federation_config(run_config)
        names = fed.sim_site_names
        pid, n = int(node_config["partition-id"]), int(node_config.get("num-partitions", len(names)))
        if n != len(names) or not fed.sites_dir or not fed.sim_state_dir:
            raise ConfigError(
                f"simulation: {n} simulated SuperNodes but sim-sites lists {len(names)} site(s) ({fed.sim_sites!r}); "
                "sites-dir and sim-state-dir must be set: start simulations with simulation/run.py")
        cfg = load_site_config(site_config_path(names[pid], fed.sites_dir))
        state = Path(fed.sim_state_dir)
        # a simulation is one job: it may spend the site's whole budget (sim-epsilon, else the config's)
        epsilon = fed.sim_epsilon or cfg.privacy.epsilon
        return cfg.model_copy(update={"state_dir": state / cfg.name, "anchor_dir": state / "ledger-anchors",
                                      "privacy": cfg.privacy.model_copy(update={"epsilon": epsilon, "run_epsilon": epsilon})})
    raise ConfigError("node config has neither `site-config` (start the SuperNode with client/run.py) "
                      "nor `partition-id` (simulation)")


# ----------------------------------------------------------------------------- data

@dataclass
class SiteData:
    """A site's preprocessed cohort and its patient-disjoint train/evaluation split."""

    cohort: Any
    tasks: dict[str, Any]
    train_idx: np.ndarray
    eval_idx: np.ndarray

    def dataset(self, indices: np.ndarray, leads: tuple[str, ...]):
        from lsemvae.data.cache import CohortDataset

        return CohortDataset(self.cohort, indices, leads=leads, tasks=list(self.tasks))

    def group_weights(self, leads: tuple[str, ...]) -> dict[str, float]:
        """Examples that train each group: records with the lead present, records labelled for the task."""
        from lsemvae.leads import lead_index

        idx = self.train_idx
        lead_mask = np.asarray(self.cohort.lead_mask)[idx]
        weights = {f"encoders.{lead}": float(lead_mask[:, lead_index(lead)].sum()) for lead in leads}
        weights["fusion"] = float(len(idx))
        for name in self.tasks:
            y = np.asarray(self.cohort.labels[name])[idx]
            weights[f"heads.{name}"] = float((~np.isnan(y).all(axis=1)).sum())
        return {g: w for g, w in weights.items() if w > 0}

    def patient_hashes(self, key: bytes) -> list[str]:
        """Keyed hashes of the cohort's patients (what the privacy ledger ties the budget to)."""
        return sorted({hmac.new(key, str(p).encode(), hashlib.sha256).hexdigest()[:16] for p in self.cohort.patient_ids})


@functools.lru_cache(maxsize=4)
def _load(site_json: str, preprocess_json: str) -> SiteData:
    """Cached per process (simulation actors keep it between rounds); on disk by build_cohort."""
    from lsemvae.data.cache import build_cohort, patient_split
    from lsemvae.data.preprocess import PreprocessConfig
    from lsemvae.federation.sitedata import index_site, site_tasks

    cfg = SiteConfig.model_validate_json(site_json)
    pre = PreprocessConfig.model_validate_json(preprocess_json)
    private_dir(cfg.state_dir)   # the cache holds the site's ECGs: never readable by other users
    tasks = site_tasks(cfg)
    refs = index_site(cfg)
    _evict_caches(cfg, keep=cfg.limits.max_cache_variants - 1)
    cohort = build_cohort(refs, tasks, pre, cfg.cache_dir, name=cfg.name, progress=False)
    os.utime(cfg.cache_dir / f"{cfg.name}-{cohort.key[:16]}")   # most recently used (see _evict_caches)
    if len(cohort) == 0:
        raise ConfigError(f"site {cfg.name}: no usable records after preprocessing ({len(cohort.skipped)} skipped)")
    # QC applies to the site's leads: a 6-lead site keeps records whose precordial leads failed (masked in the cache)
    train_idx, eval_idx, _ = patient_split(cohort, cfg.data.val_fraction, seed=0, leads=cfg.lead_names)
    return SiteData(cohort, tasks, train_idx, eval_idx)


def _evict_caches(site: SiteConfig, *, keep: int) -> None:
    """Keep at most ``keep`` of the site's other preprocessed caches (least recently used go first)."""
    if not site.cache_dir.is_dir():
        return
    caches = sorted((p for p in site.cache_dir.iterdir() if p.is_dir() and p.name.startswith(f"{site.name}-")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in caches[max(keep, 0):]:
        shutil.rmtree(old, ignore_errors=True)


def load_site_data(site: SiteConfig, preprocess_config_json: str) -> SiteData:
    """The site's cohort preprocessed as the server's config says, within the site's limits."""
    from lsemvae.data.preprocess import PreprocessConfig

    try:
        pre = PreprocessConfig.model_validate_json(preprocess_config_json)
    except ValueError as err:
        raise OutOfBounds(f"preprocess config is not valid: {str(err).splitlines()[0]}") from None
    if pre.n_samples > site.limits.max_samples:
        raise OutOfBounds(f"preprocess config asks for {pre.n_samples} samples per lead; this site allows at most "
                          f"{site.limits.max_samples} (limits.max_samples)")
    return _load(site.model_dump_json(), pre.model_dump_json())


# ----------------------------------------------------------------------------- model

def model_from_config(config_json: str, *, max_parameters: int | None = None):
    """Build the LS-EMVAE a config describes; counted on the ``meta`` device first when bounded."""
    import torch

    from lsemvae.model.config import ModelConfig
    from lsemvae.model.lsemvae import build_model

    try:
        cfg = ModelConfig.model_validate(json.loads(config_json))
    except ValueError as err:   # not JSON (JSONDecodeError) or not a model config (pydantic ValidationError)
        raise OutOfBounds(f"model config is not valid: {str(err).splitlines()[0]}") from None
    if max_parameters is not None:
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(cfg).parameters())
        if n > max_parameters:
            raise OutOfBounds(f"model config has {n:,} parameters; this site allows at most {max_parameters:,} "
                              "(limits.max_model_parameters)")
    return build_model(cfg)


def check_tasks_match(site: SiteConfig, data: SiteData, model) -> None:
    """The site's task heads must exist in the federation's model, with the same number of outputs."""
    for name, task in data.tasks.items():
        if name not in model.heads:
            raise ConfigError(f"site {site.name}: task {name!r} has no head in the federation's model "
                              f"(model heads: {', '.join(model.heads) or 'none'}); remove it from the site config "
                              "or ask the coordinator to add it to `tasks`")
        n_out = model.config.tasks[name].n_outputs
        if n_out != task.n_outputs:
            raise ConfigError(f"site {site.name}: task {name!r} has {task.n_outputs} outputs here, {n_out} in the model")


def site_info(site: SiteConfig, *, dp: bool) -> SiteInfo:
    """Who this site is, from its config alone: name, leads, heads with their kind and classes."""
    from lsemvae.federation.sitedata import site_tasks

    tasks = [TaskInfo(name=n, kind=t.kind, classes=list(t.classes)) for n, t in site_tasks(site).items()]
    return SiteInfo(name=site.name, leads=list(site.lead_names), tasks=tasks, dp=dp,
                    epsilon_budget=site.privacy.epsilon)


# ----------------------------------------------------------------------------- disk

def site_training_lock(site: SiteConfig):
    """Exclusive per-site lock (``<state_dir>/.training.lock``) held from the budget check to the ledger record.
    A process that dies releases it; one that hangs makes later rounds time out (fail safe)."""
    from lsemvae.privacy.ledger import sidecar_lock
    return sidecar_lock(private_dir(site.state_dir) / "training")


def keep_base(site: SiteConfig, base: dict[str, np.ndarray], expected: str, dtype: str) -> None:
    """Check the frozen encoders a message carried against their digest; keep a copy on the site's disk."""
    if digest(encode(base, dtype)) != expected:
        raise ValueError("the encoders sent do not match their digest")
    path = site.state_dir / "base" / f"{expected}.npz"
    if not path.is_file():
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **base)


def stored_base(site: SiteConfig, expected: str, dtype: str) -> dict[str, np.ndarray] | None:
    """The site's copy of the frozen encoders with this digest; None (and the damaged file removed) if unusable."""
    path = site.state_dir / "base" / f"{expected}.npz"
    try:
        with np.load(path) as stored:
            base = {k: stored[k] for k in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):   # missing, truncated or not an npz
        path.unlink(missing_ok=True)
        return None
    if digest(encode(base, dtype)) != expected:
        path.unlink(missing_ok=True)
        return None
    return base


def ledger_key(site: SiteConfig) -> bytes:
    """The secret that keys the patient hashes in the site's ledger anchors (kept in the anchor dir).

    Created once, exclusively (written to a temp file, then hard-linked into place), so concurrent
    first rounds of two processes agree on one key.
    """
    import secrets
    import tempfile

    path = private_dir(site.anchor_dir) / ".patient-key"
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_bytes()
