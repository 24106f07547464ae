"""Lead identity: the one place lead names, order, sets and groups are decided.

Everything downstream addresses leads by canonical name (``"aVL"``), never by position in a
file. The paper's code paired lead files with encoders by position and swapped aVL and aVF;
here a file's lead labels are canonicalised on reading and arrays are laid out in
``LEADS_12`` order by :func:`lead_index`, the only function that turns a name into a slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from lsemvae.errors import LeadError

LEADS_12: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
LIMB_LEADS: tuple[str, ...] = LEADS_12[:6]
PRECORDIAL_LEADS: tuple[str, ...] = LEADS_12[6:]

#: Named lead sets accepted in configs (``leads = "6L"``).
LEAD_SETS: dict[str, tuple[str, ...]] = {"12L": LEADS_12, "6L": LIMB_LEADS}

#: Anatomical groups used by HiME fusion (product of experts inside each group).
LEAD_GROUPS: dict[str, tuple[str, ...]] = {
    "limb": ("I", "II", "III"),
    "augmented": ("aVR", "aVL", "aVF"),
    "septal": ("V1", "V2", "V3"),
    "lateral": ("V4", "V5", "V6"),
}

# Folded spelling -> canonical name. Folding: lower case, strip spaces/underscores/dashes and
# common prefixes ("lead", "mdc_ecg_lead_"). MDC codes come from ISO/IEEE 11073-10101.
_ALIASES: dict[str, str] = {}
for _name in LEADS_12:
    _ALIASES[_name.lower()] = _name
_ALIASES.update({
    "1": "I", "2": "II", "3": "III", "di": "I", "dii": "II", "diii": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
    "c1": "V1", "c2": "V2", "c3": "V3", "c4": "V4", "c5": "V5", "c6": "V6",
})
# MDC numeric codes (MDC_ECG_LEAD_*), as used by HL7 aECG and DICOM (code scheme MDC).
MDC_CODES: dict[int, str] = {
    1: "I", 2: "II", 3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6",
    61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
}
_PREFIX = re.compile(r"^(mdc_ecg_lead_|lead_|lead)")


def _fold(label: str) -> str:
    s = str(label).strip().lower()
    s = _PREFIX.sub("", s)
    return re.sub(r"[\s_]", "", s)


def canonical_lead(label: str, *, record: str = "<unknown record>") -> str:
    """Return the canonical name of a lead label (``"AVL"``, ``"avl "``, ``"MDC_ECG_LEAD_AVL"``).

    Raises :class:`LeadError` naming the record and the accepted names for anything unknown.
    """
    folded = _fold(label)
    if folded in _ALIASES:
        return _ALIASES[folded]
    raise LeadError(
        record,
        f"unknown lead name {label!r}. Known leads: {', '.join(LEADS_12)} "
        "(case-insensitive; aliases like AVR, C1..C6, MDC_ECG_LEAD_* accepted). "
        "Rename the channel in the file or exclude it.",
        reason="unknown-lead",
    )


def canonical_leads(labels: Iterable[str], *, record: str = "<unknown record>") -> tuple[str, ...]:
    """Canonicalise a record's lead labels, refusing two channels that name the same lead."""
    out: list[str] = []
    for label in labels:
        name = canonical_lead(label, record=record)
        if name in out:
            raise LeadError(
                record,
                f"lead {name} appears twice (labels {list(labels)!r}); "
                "each lead must be recorded once. Fix the channel labels.",
                reason="duplicate-lead",
            )
        out.append(name)
    return tuple(out)


def lead_index(name: str) -> int:
    """Slot of a canonical lead in every ``[..., 12, ...]`` array and in the model."""
    try:
        return LEADS_12.index(name)
    except ValueError:
        raise LeadError("<lead lookup>", f"{name!r} is not a canonical lead name", reason="unknown-lead") from None


def resolve_lead_set(spec: str | Sequence[str]) -> tuple[str, ...]:
    """A lead set by name (``"6L"``, ``"12L"``) or an explicit list of lead names, in canonical order."""
    if isinstance(spec, str):
        if spec in LEAD_SETS:
            return LEAD_SETS[spec]
        spec = [s for s in re.split(r"[,\s]+", spec) if s]
    names = set(canonical_leads(spec, record="<lead set>"))
    return tuple(l for l in LEADS_12 if l in names)


def to_12(signal: np.ndarray, leads: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lay a ``[len(leads), T]`` signal out in ``LEADS_12`` order: returns ``([12, T], mask[12])``.

    Absent leads are zeros with ``mask`` False.
    """
    out = np.zeros((12, signal.shape[-1]), dtype=np.float32)
    mask = np.zeros(12, dtype=bool)
    for row, name in zip(signal, leads):
        i = lead_index(name)
        out[i] = row
        mask[i] = True
    return out, mask


def derive_limb_leads(lead_i: np.ndarray, lead_ii: np.ndarray) -> dict[str, np.ndarray]:
    """Einthoven's and Goldberger's identities: III, aVR, aVL, aVF from I and II (in mV)."""
    return {
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / 2.0,
        "aVL": lead_i - lead_ii / 2.0,
        "aVF": lead_ii - lead_i / 2.0,
    }


@dataclass(frozen=True)
class LimbCheck:
    """Result of the limb-lead identity check. ``residual_mv`` is the median absolute residual per lead."""

    ok: bool
    residual_mv: Mapping[str, float]
    tolerance_mv: float
    message: str


def check_limb_identities(
    signal: np.ndarray, leads: Sequence[str], *, tolerance_mv: float = 0.05
) -> LimbCheck:
    """Check that III, aVR, aVL, aVF agree with I and II (Einthoven/Goldberger).

    Swapped or mislabelled limb leads break these identities. Uses the median absolute residual
    over samples (robust to a few NaN-filled or clipped samples); missing leads are skipped.
    Raw mV signals only: per-lead standardisation destroys the identities.
    """
    idx = {name: i for i, name in enumerate(leads)}
    if "I" not in idx or "II" not in idx:
        return LimbCheck(True, {}, tolerance_mv, "leads I and II not both present: identity check skipped")
    derived = derive_limb_leads(signal[idx["I"]], signal[idx["II"]])
    residual = {}
    for name, expected in derived.items():
        if name in idx:
            diff = np.abs(signal[idx[name]] - expected)
            residual[name] = float(np.nanmedian(diff)) if np.isfinite(diff).any() else float("nan")
    bad = {k: v for k, v in residual.items() if not (v <= tolerance_mv)}
    if not bad:
        return LimbCheck(True, residual, tolerance_mv, "limb leads consistent")
    worst = ", ".join(f"{k} off by {v:.3f} mV" for k, v in bad.items())
    return LimbCheck(
        False, residual, tolerance_mv,
        f"limb leads violate Einthoven/Goldberger identities ({worst}; tolerance {tolerance_mv} mV): "
        "leads may be swapped or mislabelled",
    )
