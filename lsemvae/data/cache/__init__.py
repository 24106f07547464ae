"""Preprocessed cohorts on disk as ``.npy`` arrays, built once and reused.

One module per concern, one entry point each:

* :mod:`~lsemvae.data.cache.build`: :func:`build_cohort` preprocesses records into a cache (in parallel,
  resumably, in flat memory) or reuses the one with the same key.
* :mod:`~lsemvae.data.cache.store`: what a cache directory holds; :func:`load_cohort` opens one (memory maps,
  and :class:`RowReader` to stream rows).
* :mod:`~lsemvae.data.cache.dataset`: :class:`CohortDataset`, the torch dataset over a cohort's rows.
* :mod:`~lsemvae.data.cache.splits`: :func:`cohort_split` and its parts: which rows a command trains,
  validates and tests on, and which records a model's leads can use.

One cache serves every lead set: a record with a lead that fails QC is kept with that lead masked
(``meta["lead_faults"]``); each consumer leaves out the records it cannot use with its own leads.
"""

from lsemvae.data.cache.build import build_cohort, cohort_key
from lsemvae.data.cache.dataset import CohortDataset
from lsemvae.data.cache.splits import (
    PATIENT_SPLIT, PTBXL_FOLDS, cohort_split, group_indices, has_ptbxl_folds, label_fraction, lead_fault_skips,
    patient_split, ptbxl_folds, usable_rows,
)
from lsemvae.data.cache.store import (
    CACHE_FORMAT, INDEX_FILE, CacheError, Cohort, RowReader, cohort_tasks, load_cohort, matching_cohort,
)

__all__ = [
    "CACHE_FORMAT", "INDEX_FILE", "PATIENT_SPLIT", "PTBXL_FOLDS", "CacheError", "Cohort", "CohortDataset", "RowReader",
    "build_cohort", "cohort_key", "cohort_split", "cohort_tasks", "group_indices", "has_ptbxl_folds", "label_fraction",
    "lead_fault_skips", "load_cohort", "matching_cohort", "patient_split", "ptbxl_folds", "usable_rows",
]
