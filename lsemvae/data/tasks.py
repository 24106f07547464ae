"""Tasks: named, documented label rules over record metadata.

A :class:`Task` turns one record's ``meta`` into a float32 label vector; NaN means "not
applicable / unknown for this record" and is masked out of losses and metrics.

**The pulmonary-hypertension tasks here are ECG proxies, not haemodynamic PH labels.** PTB-XL and
LUDB have no right-heart catheterisation (mPAP, PAWP, PVR); ``right_heart``, ``phenotype`` and
``left_atrial`` are cardiologists' ECG statements (RVH, right/left atrial overload, axis) that are
*associated* with pre- and post-capillary PH. They exercise the pipeline; they do not measure PH.
Hospital sites provide real labels as columns of their labels CSV: when ``meta`` has a key equal
to a task's name, that column's value (0/1, blank = NaN) is the label, whatever the rule; a
multi-label task reads one column per class, named like the class (``NORM``, ``MI``, ``STTC``,
``CD``, ``HYP`` for ``superclass``), or the columns bound to it (``superclass=norm+mi+sttc+cd+hyp``,
:func:`bound_task`): this is how a hospital's labels meet a head trained elsewhere (external validation).

Where the findings come from:
- PTB-XL: ``meta["scp_codes"]`` (any likelihood counts, the usual PTB-XL convention),
  ``meta["heart_axis"]`` and ``meta["diagnostic_classes"]`` (from ``scp_statements.csv``).
- LUDB: ``meta["findings"]``, codes mapped from its diagnosis text (see ``sources.LUDB_FINDINGS``).
A record with neither (an unlabelled folder, a manifest without the column) gets NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np

from lsemvae.errors import ConfigError

Rule = Callable[[Mapping[str, Any]], np.ndarray]

SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")

# SCP-ECG codes (PTB-XL spelling) of the findings the proxies use.
RIGHT_SIDED: frozenset[str] = frozenset({"RVH", "RAO/RAE"})
RIGHT_AXIS: frozenset[str] = frozenset({"RAD", "ARAD"})
LEFT_ATRIAL: frozenset[str] = frozenset({"LAO/LAE"})
# Left-sided findings for the phenotype split. "LVO" is LUDB's "left ventricular overload"
# (strain pattern); PTB-XL has no such statement.
LEFT_SIDED: frozenset[str] = frozenset({"LVH", "LAO/LAE", "VCLVH", "LVO"})


@dataclass(frozen=True)
class Task:
    """A label rule. ``rule(meta)`` returns float32 ``[n_outputs]``; NaN = not applicable.

    ``kind``: ``"binary"`` (one output), ``"multilabel"`` (one 0/1 output per class) or
    ``"multiclass"`` (one-hot over ``classes``).
    """

    name: str
    kind: Literal["binary", "multilabel", "multiclass"]
    classes: tuple[str, ...]
    rule: Rule
    description: str
    column: str | None = None  # set for site label columns (column_task): the meta key read
    columns: tuple[str, ...] | None = None  # set for a built-in task bound to site columns (bound_task), class order

    @property
    def n_outputs(self) -> int:
        return 1 if self.kind == "binary" else len(self.classes)

    def __call__(self, meta: Mapping[str, Any]) -> np.ndarray:
        out = np.asarray(self.rule(meta), dtype=np.float32).reshape(-1)
        if out.shape != (self.n_outputs,):
            raise ValueError(f"task {self.name}: rule returned {out.shape[0]} values, expected {self.n_outputs}")
        return out


def _nan(n: int = 1) -> np.ndarray:
    return np.full(n, np.nan, dtype=np.float32)


def parse_binary(value: Any, *, where: str = "label") -> float:
    """A 0/1 label cell: ``0``, ``1``, ``"0"``, ``"1.0"``, ``True``; blank/None/NaN -> NaN.

    Anything else raises :class:`ConfigError` naming ``where`` (file, row, column).
    """
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if math.isnan(v) or v in (0.0, 1.0):
            return v
    else:
        s = str(value).strip().lower()
        if s in ("", "nan", "na", "n/a"):
            return math.nan
        if s in ("0", "0.0", "false", "no"):
            return 0.0
        if s in ("1", "1.0", "true", "yes"):
            return 1.0
    raise ConfigError(f"{where}: expected a binary label 0/1 (blank = unknown), got {value!r}")


def _findings(meta: Mapping[str, Any]) -> set[str] | None:
    """Diagnostic statements of a record as a set of SCP codes, or None if the source has none."""
    if "scp_codes" not in meta and "findings" not in meta:
        return None
    return set(meta.get("scp_codes") or {}) | set(meta.get("findings") or ())


def _column_or(name: str, rule: Callable[[Mapping[str, Any]], float]) -> Rule:
    """A site's own column named like the task wins over the metadata rule (hospital labels)."""

    def apply(meta: Mapping[str, Any]) -> np.ndarray:
        if name in meta:
            return np.array([parse_binary(meta[name], where=f"label column {name!r}")], dtype=np.float32)
        return np.array([rule(meta)], dtype=np.float32)

    return apply


def _class_columns_or(classes: tuple[str, ...], rule: Rule) -> Rule:
    """A site's columns named like the classes win over the metadata rule (one 0/1 column per class)."""

    def apply(meta: Mapping[str, Any]) -> np.ndarray:
        if any(c in meta for c in classes):
            return np.array([parse_binary(meta.get(c), where=f"label column {c!r}") for c in classes], dtype=np.float32)
        return rule(meta)

    return apply


def _flag(codes: set[str] | None, wanted: frozenset[str]) -> float:
    return math.nan if codes is None else float(bool(codes & wanted))


def _right_heart(meta: Mapping[str, Any]) -> float:
    return _flag(_findings(meta), RIGHT_SIDED)


def _right_heart_axis(meta: Mapping[str, Any]) -> float:
    codes = _findings(meta)
    if codes is None:
        return math.nan
    return float(bool(codes & RIGHT_SIDED) or meta.get("heart_axis") in RIGHT_AXIS)


def _phenotype(meta: Mapping[str, Any]) -> float:
    codes = _findings(meta)
    if codes is None or not codes & RIGHT_SIDED:
        return math.nan
    return float(bool(codes & LEFT_SIDED))


def _left_atrial(meta: Mapping[str, Any]) -> float:
    return _flag(_findings(meta), LEFT_ATRIAL)


def _left_atrial_lvh(meta: Mapping[str, Any]) -> float:
    return _flag(_findings(meta), LEFT_ATRIAL | {"LVH"})


def _superclass(meta: Mapping[str, Any]) -> np.ndarray:
    classes = meta.get("diagnostic_classes")
    if not classes:  # no source info, or PTB-XL record without any diagnostic statement
        return _nan(len(SUPERCLASSES))
    return np.array([float(c in classes) for c in SUPERCLASSES], dtype=np.float32)


def _binary(name: str, rule: Callable[[Mapping[str, Any]], float], description: str) -> Task:
    return Task(name, "binary", (name,), _column_or(name, rule), description)


_PROXY_NOTE = " ECG proxy, not a haemodynamic PH label."

TASKS: dict[str, Task] = {
    "superclass": Task(
        "superclass", "multilabel", SUPERCLASSES, _class_columns_or(SUPERCLASSES, _superclass),
        "PTB-XL diagnostic superclasses NORM, MI, STTC, CD, HYP (multi-label, from scp_statements.csv "
        "diagnostic_class of every scp code, any likelihood), or a site's 0/1 columns NORM, MI, STTC, CD, HYP. "
        "NaN for records with neither.",
    ),
    "right_heart": _binary(
        "right_heart", _right_heart,
        "Right-heart strain, pre-capillary PH proxy: RVH or RAO/RAE present." + _PROXY_NOTE,
    ),
    "right_heart_axis": _binary(
        "right_heart_axis", _right_heart_axis,
        "right_heart or right axis deviation (heart_axis RAD/ARAD)." + _PROXY_NOTE,
    ),
    "phenotype": _binary(
        "phenotype", _phenotype,
        "Among right_heart positives: 0 = right-sided findings only (pre-capillary-like), "
        "1 = also left-sided findings LVH, LAO/LAE, VCLVH or LV overload (post-capillary-like). "
        "NaN for records without right-sided findings." + _PROXY_NOTE,
    ),
    "left_atrial": _binary(
        "left_atrial", _left_atrial,
        "Left atrial overload/enlargement (LAO/LAE): elevated-PAWP (post-capillary) proxy." + _PROXY_NOTE,
    ),
    "left_atrial_lvh": _binary(
        "left_atrial_lvh", _left_atrial_lvh,
        "LAO/LAE or LVH: broader left-sided proxy for elevated PAWP." + _PROXY_NOTE,
    ),
}

COLUMN_PREFIX = "column:"


def column_task(column: str) -> Task:
    """A binary task read from a site's own label column (``meta[column]``: 0/1, blank = NaN).

    Records without the column get NaN, so a cohort mixing sites stays well defined.
    """
    if not column or not str(column).strip():
        raise ConfigError("column_task: the label column name is empty")
    column = str(column).strip()

    def rule(meta: Mapping[str, Any]) -> float:
        return parse_binary(meta.get(column), where=f"label column {column!r}")

    return Task(column, "binary", (column,), lambda meta: np.array([rule(meta)], dtype=np.float32),
                f"Site label column {column!r} (0/1, blank = unknown).", column=column)


def bound_task(name: str, columns: Sequence[str]) -> Task:
    """Built-in task ``name`` (its head, kind and classes) with labels read from a site's ``columns``.

    One 0/1 column per class, in the task's class order (``superclass``: NORM, MI, STTC, CD, HYP):
    ``bound_task("superclass", ["norm", "mi", "sttc", "cd", "hyp"])``; spelled
    ``superclass=norm+mi+sttc+cd+hyp`` on command lines. Records without the columns get NaN.
    """
    if name not in TASKS:
        raise ConfigError(f"only a built-in task can be bound to label columns ({', '.join(TASKS)}); got {name!r} "
                          f"(a site's own binary column is '{COLUMN_PREFIX}<column>')")
    base = TASKS[name]
    columns = tuple(str(c).strip() for c in columns)
    if len(columns) != base.n_outputs or not all(columns) or len(set(columns)) != len(columns):
        raise ConfigError(f"task {name!r} has {base.n_outputs} output(s) ({', '.join(base.classes)}): bind it to as "
                          f"many distinct label columns in that order, got {list(columns)}")

    def rule(meta: Mapping[str, Any]) -> np.ndarray:
        return np.array([parse_binary(meta.get(c), where=f"label column {c!r}") for c in columns], dtype=np.float32)

    return Task(name, base.kind, base.classes, rule,
                f"{base.description.split('.')[0]}, read from label columns {', '.join(columns)}.", columns=columns)


def label_sources(task: Task) -> str:
    """Where ``task`` looks for its labels, for messages."""
    if task.columns:
        return f"label columns {', '.join(task.columns)}"
    if task.column:
        return f"label column {task.column!r}"
    columns = task.classes if task.kind != "binary" else (task.name,)
    return (f"label column(s) {', '.join(columns)} or the diagnostic statements of PTB-XL/LUDB metadata")


BIND = "="


def get_task(name: str) -> Task:
    """A task by name: one of :data:`TASKS`, ``"column:<name>"`` for a site's label column, or
    ``"<task>=<column>+<column>..."`` for a built-in task bound to label columns (:func:`bound_task`)."""
    if name in TASKS:
        return TASKS[name]
    if name.startswith(COLUMN_PREFIX):
        return column_task(name[len(COLUMN_PREFIX):])
    if BIND in name:
        task, columns = name.split(BIND, 1)
        return bound_task(task.strip(), columns.split("+"))
    raise ConfigError(f"unknown task {name!r}. Known tasks: {', '.join(TASKS)}; "
                      f"'{COLUMN_PREFIX}<label column>' for a site's own label column; or "
                      f"'<task>{BIND}<column>+<column>...' to read a built-in task from label columns")


def task_name(spec: str) -> str:
    """The name a task's labels and model head carry: ``column:mpap_gt20`` -> ``mpap_gt20``,
    ``superclass=norm+mi+sttc+cd+hyp`` -> ``superclass``."""
    if spec.startswith(COLUMN_PREFIX):
        return spec[len(COLUMN_PREFIX):].strip()
    return spec.split(BIND, 1)[0].strip()


def resolve_tasks(tasks: Mapping[str, Task] | Iterable[Task | str]) -> dict[str, Task]:
    """Task objects, names, or a ``{name: Task}`` mapping -> ``{name: Task}`` (order kept)."""
    items = tasks.values() if isinstance(tasks, Mapping) else tasks
    out: dict[str, Task] = {}
    for t in items:
        task = t if isinstance(t, Task) else get_task(str(t))
        if task.name in out:
            raise ConfigError(f"task {task.name!r} listed twice")
        if not task.name or "/" in task.name or "\\" in task.name or task.name.startswith("."):
            raise ConfigError(f"task name {task.name!r} must be a plain identifier (it names files and model heads)")
        out[task.name] = task
    return out
