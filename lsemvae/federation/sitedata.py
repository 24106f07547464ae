"""A site's data as the federation sees it: record index, tasks and the train/evaluation split.

Glue between a :class:`~lsemvae.site.SiteConfig` and the data layer (``lsemvae.data``): the
preflight and the ClientApp both call these, so they check and train on the same records.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lsemvae.errors import ConfigError
from lsemvae.site import SiteConfig


def site_tasks(cfg: SiteConfig) -> dict[str, Any]:
    """``{head name: Task}``: a label column bound to a head name, a built-in multi-label task bound to label
    columns (one per class), or the task's built-in rule.

    A column bound to a head takes the head's name as its class too: the head means what the federation
    says it means, whatever the site calls the column (``ph`` at one site, ``rv_dilated`` at another).
    """
    from lsemvae.data.tasks import bound_task, column_task, get_task

    out = {}
    for binding in cfg.tasks:
        if binding.column:
            out[binding.name] = dataclasses.replace(column_task(binding.column), name=binding.name,
                                                    classes=(binding.name,))
        elif binding.columns:
            out[binding.name] = bound_task(binding.name, binding.columns)
        else:
            out[binding.name] = get_task(binding.name)
    return out


def index_site(cfg: SiteConfig) -> list:
    """The site's records (``RecordRef`` list), filtered as the site config says."""
    from lsemvae.data import sources

    d = cfg.data
    if not d.root.exists():
        raise ConfigError(f"data.root: {d.root} does not exist")
    if d.format == "manifest":
        columns = [c for b in cfg.tasks for c in ([b.column] if b.column else b.columns or [])]
        refs = sources.manifest_index(d.root, d.labels, id_column=d.id_column, patient_column=d.patient_column,
                                      label_columns=columns or None)
    elif d.format == "ptbxl":
        refs = sources.ptbxl_index(d.root, rate=d.ptbxl_rate)
        if d.ptbxl_sites is not None:
            keep = set(d.ptbxl_sites)
            refs = [r for r in refs if r.meta.get("site") is not None and int(r.meta["site"]) in keep]
    else:
        refs = sources.ludb_index(d.root)
    refs = sorted(refs, key=lambda r: r.record_id)
    if d.max_records:
        refs = refs[: d.max_records]
    return sources.with_gain_correction(refs, d.gain_correction) if d.gain_correction != 1.0 else refs


def label_matrix(refs: list, task) -> np.ndarray:
    """``[N, n_outputs]`` labels of ``task`` from the records' metadata (NaN = unknown)."""
    if not refs:
        return np.zeros((0, task.n_outputs), np.float32)
    return np.stack([task(r.meta) for r in refs])
