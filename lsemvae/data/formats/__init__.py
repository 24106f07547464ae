"""Hospital ECG file formats → :class:`~lsemvae.data.record.ECGRecord` (mV, canonical lead names).

Each module exposes ``NAME``, ``sniff(path) -> bool`` (by content, never by extension alone) and
``read(path) -> ECGRecord``. Lead identity is always read from the file (channel codes, lead IDs,
signal labels), never assumed from channel position: the paper's code named channels by position
and fed aVL's encoder the aVF signal (and the reverse).

``FORMATS`` lists them in sniffing order for the registry in :mod:`lsemvae.data.readers`.
Failure reasons shared by all readers are documented in :data:`common.REASONS`. Every reader checks
what a file declares against :mod:`.limits` before decoding; :func:`lsemvae.data.readers.read_record`
adds the file-size limit and drops calibration pulses (:mod:`.calibration`) for all of them.
"""

from __future__ import annotations

from typing import Callable

from lsemvae.data.formats import aecg, cardiosoft, dicom, edf, muse, philips, scp
from lsemvae.data.formats.common import REASONS

#: (name, sniff, read) per supported hospital format.
FORMATS: list[tuple[str, Callable, Callable]] = [
    (m.NAME, m.sniff, m.read) for m in (dicom, aecg, muse, cardiosoft, philips, scp, edf)
]

__all__ = ["FORMATS", "REASONS", "aecg", "cardiosoft", "dicom", "edf", "muse", "philips", "scp"]
