"""Helpers shared by the format readers: unit scaling, lead labels, XML sniffing, errors.

Every reader turns a file into an :class:`~lsemvae.data.record.ECGRecord` in millivolts with lead
names read from the file. Anything it cannot vouch for raises :class:`RecordError` with one of the
``REASONS`` below, so batch jobs (``lsemvae data convert``, cohort building) can count skips.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Sequence

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml import DefusedXmlException

from lsemvae.errors import LeadError, RecordError
from lsemvae.leads import MDC_CODES, canonical_lead

#: Reason categories used by the format readers (plus ``unknown-lead`` / ``duplicate-lead`` from leads.py).
REASONS = {
    "corrupt": "file cannot be parsed (truncated, bad XML, bad base64, unreadable header)",
    "not-ecg": "a valid file of the format that holds no ECG waveform (e.g. a DICOM image)",
    "missing-lead-label": "a channel carries no lead label or code",
    "unknown-lead": "a channel's label or code is not a known ECG lead",
    "lead-conflict": "a channel's code and its text label name different leads",
    "sample-count": "channel sample counts disagree with each other or with the declared count",
    "units": "amplitude units missing, unknown or not a voltage",
    "fs": "sampling rate missing or invalid",
    "mixed-fs": "ECG channels sampled at different rates",
    "unsupported-variant": "a valid but unsupported encoding (compressed, mu-law, non-int16, ...)",
    "too-large": "file size or declared sample count over the limits of lsemvae.data.formats.limits",
    "checksum": "a CRC or checksum in the file does not match its data",
}

# Amplitude unit spellings seen in DICOM (UCUM), HL7 aECG (UCUM), MUSE, CardioSoft and EDF headers.
_MV_PER_UNIT = {
    "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3, "uvperlsb": 1e-3,
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
    "v": 1e3, "volt": 1e3, "volts": 1e3,
    "nv": 1e-6, "nanovolt": 1e-6, "nanovolts": 1e-6,
}

# Real ECG leads outside the standard 12 (right-sided, posterior, Frank XYZ). Carts export them
# alongside the 12; they are dropped (listed in meta["dropped_channels"]) rather than failing the record.
_EXTRA_LEAD = re.compile(r"^(v[789]|v[1-9]r|[xyz])$")


# Non-standard leads in the MDC_ECG_LEAD code table (ISO/IEEE 11073-10101; SCP-ECG's lead codes are the same
# numbers), named so that they are dropped as extra leads rather than refused as unknown.
_CODE_EXTRA = {9: "V7", 10: "V2R", 11: "V3R", 12: "V4R", 13: "V5R", 14: "V6R", 15: "V7R",
               16: "X", 17: "Y", 18: "Z", 66: "V8", 67: "V9", 68: "V8R", 69: "V9R"}


def lead_from_code(number: int) -> str | None:
    """Lead name for an MDC_ECG_LEAD / SCP-ECG lead code; None for 0 (unspecified) or an unknown code."""
    return MDC_CODES.get(number) or _CODE_EXTRA.get(number)


def mv_per_unit(unit: str | None, *, record: str, what: str) -> float:
    """Millivolts per ``unit`` (``"uV"`` -> 0.001). ``what`` says where the unit came from, for the message."""
    key = re.sub(r"[\s_\-/]", "", str(unit or "")).lower()
    if key in _MV_PER_UNIT:
        return _MV_PER_UNIT[key]
    raise RecordError(
        record,
        f"{what}: amplitude unit {unit!r} is missing or not a voltage (expected uV, mV or V). "
        "Export the ECG with calibrated voltage units.",
        reason="units",
    )


def is_extra_lead(label: str) -> bool:
    folded = re.sub(r"[\s_]", "", str(label).lower())
    folded = re.sub(r"^(mdc_?ecg_?lead_?|lead)", "", folded)
    return bool(_EXTRA_LEAD.match(folded))


def select_leads(labels: Sequence[str | None], *, record: str,
                 channels: Sequence[str] | None = None) -> tuple[list[int], list[str], list[str]]:
    """Map channel labels to canonical leads: ``(kept channel indices, lead names, dropped labels)``.

    A missing label or an unknown one fails the record (naming the channel: ``channels[i]``, by
    default ``"channel <i+1>"``); known non-standard leads (V7-V9, right-sided, XYZ) are dropped.
    Duplicates are refused by ``ECGRecord``.
    """
    keep, names, dropped = [], [], []
    for i, label in enumerate(labels):
        channel = channels[i] if channels is not None else f"channel {i + 1}"
        if label is None or not str(label).strip():
            raise RecordError(
                record, f"{channel} has no lead label or code: lead identity cannot be read from the file "
                "(leads are never assigned by position). Re-export with channel labels.",
                reason="missing-lead-label",
            )
        if is_extra_lead(label):
            dropped.append(str(label))
            continue
        try:
            names.append(canonical_lead(label, record=record))
        except LeadError as err:
            raise LeadError(record, f"{channel}: {err.detail}", reason=err.reason) from None
        keep.append(i)
    if not keep:
        raise RecordError(record, f"no standard ECG lead among channels {list(labels)!r}", reason="unknown-lead")
    return keep, names, dropped


def file_head(path: str | Path, n_bytes: int) -> bytes:
    """The first ``n_bytes`` of a file (fewer if it is shorter; none if it cannot be read), for sniffing."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n_bytes)
    except OSError:
        return b""


_DOCTYPE_SUBSET = re.compile(rb"<!DOCTYPE[^\[>]*\[.*?\]\s*>", re.S)


def xml_root_name(path: str | Path, *, head_bytes: int = 4096) -> str | None:
    """Local name of the root element (namespace stripped), or None if the file does not start as XML.

    Only the start of the file is parsed, so sniffing a folder of large files stays cheap.
    """
    head = file_head(path, head_bytes)
    # Some vendor exports are UTF-16 with a byte-order mark; expat decodes it, the "<" check must too.
    encoding = "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    if not head.decode(encoding, errors="ignore").lstrip().startswith("<"):
        return None
    # A DOCTYPE's internal subset (entity declarations) is cut before sniffing, so that a file declaring
    # entities is still claimed by its reader, which then refuses it with a clear message.
    head = _DOCTYPE_SUBSET.sub(b"", head) if encoding != "utf-16" else head
    try:
        for _event, elem in SafeET.iterparse(io.BytesIO(head), events=("start",)):
            return local(elem.tag)
    except (ET.ParseError, DefusedXmlException):
        return None
    return None


def parse_xml(path: str | Path, *, record: str) -> ET.Element:
    """Parse a whole XML file without expanding entities or fetching DTDs (``defusedxml``): a vendor
    file has no reason to declare entities, and entity amplification costs memory. A parse failure is
    a ``corrupt`` RecordError naming the position; entity or external-reference declarations are refused."""
    try:
        return SafeET.parse(path).getroot()
    except ET.ParseError as err:
        raise RecordError(record, f"not well-formed XML ({err})", reason="corrupt") from None
    except DefusedXmlException as err:
        raise RecordError(record, f"XML declares entities or external references ({err}); ECG exports need "
                          "none, and they are not expanded (entity amplification)", reason="corrupt") from None


def parse_root(path: str | Path, name: str, *, record: str) -> ET.Element:
    """The root element of an XML file that must be a ``name`` document (:func:`parse_xml`; another root
    element is ``corrupt``)."""
    root = parse_xml(path, record=record)
    if local(root.tag) != name:
        raise RecordError(record, f"root element is {local(root.tag)!r}, not {name}", reason="corrupt")
    return root


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def child_text(elem: ET.Element | None, name: str) -> str | None:
    """Text of the first direct child with local name ``name`` (namespace-agnostic), stripped."""
    if elem is None:
        return None
    for child in elem:
        if local(child.tag) == name:
            return (child.text or "").strip()
    return None


def children(elem: ET.Element, name: str) -> Iterable[ET.Element]:
    return (c for c in elem if local(c.tag) == name)


def first_child(elem: ET.Element, name: str) -> ET.Element | None:
    """The first direct child with local name ``name``, or None."""
    return next(iter(children(elem, name)), None)


def text_fields(fields: Iterable[tuple[str, ET.Element | None, str]]) -> dict[str, str]:
    """``{key: text}`` of each ``(key, element, child name)`` whose child has text, in order (for ``meta``)."""
    return {key: text for key, elem, tag in fields if (text := child_text(elem, tag))}


def check_equal_lengths(labels: Sequence[str | None], rows: Sequence[np.ndarray], *, record: str, what: str) -> None:
    """Refuse channels of different lengths (``sample-count``), listing each channel's count."""
    if len({len(r) for r in rows}) != 1:
        detail = ", ".join(f"{label}: {len(r)}" for label, r in zip(labels, rows))
        raise RecordError(record, f"{what} have different sample counts ({detail})", reason="sample-count")


def count_values(text: str, separator: str | None = None) -> int:
    """How many values a whitespace- (or ``separator``-) separated list holds, without splitting it:
    readers check the count against the limits before allocating one object per value."""
    if separator is not None:
        return text.count(separator) + 1 if text.strip() else 0
    raw = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    filled = raw > 32
    return int(filled[0]) + int(np.count_nonzero(filled[1:] & ~filled[:-1])) if raw.size else 0


def parse_number(text: str | None, *, record: str, what: str, reason: str = "corrupt") -> float:
    try:
        return float(str(text).strip())
    except (TypeError, ValueError):
        raise RecordError(record, f"{what}: expected a number, found {text!r}", reason=reason) from None
