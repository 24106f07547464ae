"""The torch ``Dataset`` over a cached cohort's rows."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lsemvae.data.cache.store import Cohort, RowReader
from lsemvae.errors import ConfigError
from lsemvae.leads import LEADS_12, lead_index, resolve_lead_set


class CohortDataset:
    """``torch.utils.data.Dataset`` over cohort rows ``indices``.

    Item: ``x`` [12, T], ``lead_mask`` [12], ``sample_mask`` [T], ``beat`` [12, Tb], ``beat_mask``
    [12], ``y`` {task: [n_out]}. ``leads`` restricts the input (e.g. ``"6L"``): other leads are
    zeroed in ``x`` and False in ``lead_mask``. ``beat`` keeps every recorded lead and
    ``beat_mask`` says which (the record's own lead mask), so a model can be scored on
    reconstructing leads its input lacks. ``tasks`` selects label keys (default: all).

    The large arrays (signals, sample masks, beats) are streamed row by row (:class:`RowReader`), so an epoch
    over any number of records keeps the process' memory flat.
    """

    def __init__(self, cohort: Cohort, indices: Sequence[int] | np.ndarray | None = None, *,
                 leads: str | Sequence[str] = LEADS_12, tasks: Sequence[str] | None = None):
        self.cohort = cohort
        self.indices = np.arange(len(cohort)) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(cohort)):
            raise ConfigError(f"indices out of range for a cohort of {len(cohort)} records")
        self.leads = resolve_lead_set(leads)
        self.requested = np.zeros(12, dtype=bool)
        self.requested[[lead_index(l) for l in self.leads]] = True
        self.tasks = list(tasks) if tasks is not None else list(cohort.labels)
        unknown = [t for t in self.tasks if t not in cohort.labels]
        if unknown:
            raise ConfigError(f"tasks {unknown} not in cohort {cohort.path.name} (has {list(cohort.labels)})")
        self._rows: dict[str, RowReader] | None = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": None}

    def _row(self, name: str, i: int) -> np.ndarray:
        if self._rows is None:
            self._rows = {n: RowReader(self.cohort.path / f"{n}.npy") for n in ("signals", "sample_mask", "beats")}
        return self._rows[name][i]

    def __getitem__(self, item: int) -> dict:
        import torch

        i = int(self.indices[item])
        recorded = np.array(self.cohort.lead_mask[i])
        mask = recorded & self.requested
        x = self._row("signals", i)
        x[~mask] = 0.0
        return {
            "x": torch.from_numpy(x),
            "lead_mask": torch.from_numpy(mask),
            "sample_mask": torch.from_numpy(self._row("sample_mask", i)),
            "beat": torch.from_numpy(self._row("beats", i)),
            "beat_mask": torch.from_numpy(recorded),
            "y": {t: torch.from_numpy(np.array(self.cohort.labels[t][i])) for t in self.tasks},
        }
