"""Parameter groups: which part of LS-EMVAE a state_dict key belongs to.

The model names its submodules ``encoders.<lead>``, ``fusion``, ``decoders`` and
``heads.<task>`` (lsemvae.model contract). The federation sends and averages encoders,
fusion and heads; decoders stay at the site (they only serve reconstruction, which
fine-tuning does not need, and are the largest part of the model).
"""

from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

from lsemvae.leads import canonical_lead

FEDERATED_ROOTS = ("encoders", "fusion", "heads")

V = TypeVar("V")


def group_of(key: str) -> str:
    """``"encoders.aVL.conv.0.weight"`` -> ``"encoders.aVL"``; ``"fusion.gate.w"`` -> ``"fusion"``.

    Keys outside the known roots form their own root group (``"decoders"``, ...).
    """
    parts = key.split(".")
    if parts[0] in ("encoders", "heads", "decoders") and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def is_federated(key: str) -> bool:
    return key.split(".")[0] in FEDERATED_ROOTS


def groups_for(leads: Iterable[str], tasks: Iterable[str]) -> set[str]:
    """The groups a site with these leads and tasks trains (fusion always)."""
    return {f"encoders.{canonical_lead(lead)}" for lead in leads} | {"fusion"} | {f"heads.{t}" for t in tasks}


def select(state: Mapping[str, V], groups: Iterable[str]) -> dict[str, V]:
    """The entries of ``state`` whose group is in ``groups`` (order preserved)."""
    wanted = set(groups)
    return {k: v for k, v in state.items() if group_of(k) in wanted}


def federated(state: Mapping[str, V]) -> dict[str, V]:
    """The entries that are sent between server and sites (no decoders)."""
    return {k: v for k, v in state.items() if is_federated(k)}
