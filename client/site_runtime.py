"""Which site this ClientApp is, and its local data, model and ledger.

Deployment: ``client/run.py`` puts ``site``, ``site-config`` and ``state-dir`` in the SuperNode's
node config. Simulation: the node config holds ``partition-id``/``num-partitions``; partition
``i`` becomes the ``i``-th site of the run config's ``sim-sites``, read from ``sites-dir``, with
its state under ``sim-state-dir`` (so simulations never touch a real site's ledger).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsemvae.errors import ConfigError
from lsemvae.federation import keys as K
from lsemvae.site import SiteConfig, federation_config, load_site_config, site_config_path


def resolve_site(node_config: dict[str, Any], run_config: dict[str, Any]) -> SiteConfig:
    if "site-config" in node_config:
        cfg = load_site_config(str(node_config["site-config"]))
        if node_config.get("site") and node_config["site"] != cfg.name:
            raise ConfigError(f"node config names site {node_config['site']!r} but {node_config['site-config']} is {cfg.name!r}")
        if node_config.get("state-dir"):
            cfg = cfg.model_copy(update={"state_dir": Path(str(node_config["state-dir"]))})
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
        update: dict[str, Any] = {"state_dir": state / cfg.name, "anchor_dir": state / "ledger-anchors"}
        if fed.sim_epsilon > 0:
            update["privacy"] = cfg.privacy.model_copy(update={"epsilon": fed.sim_epsilon})
        return cfg.model_copy(update=update)
    raise ConfigError("node config has neither `site-config` (start the SuperNode with client/run.py) "
                      "nor `partition-id` (simulation)")


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


@functools.lru_cache(maxsize=4)
def _load(site_json: str, preprocess_json: str) -> SiteData:
    """Cached per process (simulation actors keep it between rounds); on disk by build_cohort."""
    from lsemvae.data.cache import build_cohort, patient_split
    from lsemvae.data.preprocess import PreprocessConfig
    from lsemvae.federation.sitedata import index_site, site_tasks

    cfg = SiteConfig.model_validate_json(site_json)
    pre = PreprocessConfig.model_validate_json(preprocess_json)
    tasks = site_tasks(cfg)
    refs = index_site(cfg)
    cohort = build_cohort(refs, tasks, pre, cfg.cache_dir, name=cfg.name, progress=False)
    if len(cohort) == 0:
        raise ConfigError(f"site {cfg.name}: no usable records after preprocessing ({len(cohort.skipped)} skipped)")
    train_idx, eval_idx, _ = patient_split(cohort, cfg.data.val_fraction, seed=0)
    return SiteData(cohort, tasks, train_idx, eval_idx)


def load_site_data(cfg: SiteConfig, preprocess_config_json: str) -> SiteData:
    return _load(cfg.model_dump_json(), preprocess_config_json)


def model_from_config(config_json: str):
    from lsemvae.model.config import ModelConfig
    from lsemvae.model.lsemvae import build_model

    return build_model(ModelConfig.model_validate(json.loads(config_json)))


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


def site_info(site: SiteConfig, *, dp: bool) -> dict[str, Any]:
    return {K.SITE_NAME: site.name, K.SITE_LEADS: list(site.lead_names), K.SITE_TASKS: list(site.task_names), K.SITE_DP: dp}


def site_training_lock(site: SiteConfig):
    """Exclusive per-site lock (``<state_dir>/.training.lock``) held from the budget check to the ledger record.
    A process that dies releases it; one that hangs makes later rounds time out (fail safe)."""
    from lsemvae.privacy.ledger import sidecar_lock
    return sidecar_lock(site.state_dir / "training")
