"""The canonical in-memory ECG: every reader produces one, nothing downstream sees file formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from lsemvae.errors import RecordError
from lsemvae.leads import canonical_leads, to_12


@dataclass(frozen=True)
class ECGRecord:
    """One ECG. Validated on construction so a bad reader fails at its source.

    Attributes:
        signal: float32 ``[n_leads, n_samples]`` in millivolts (NaN allowed: preprocessing decides).
        fs: sampling rate in Hz.
        leads: canonical lead names, one per signal row (see :mod:`lsemvae.leads`).
        record_id: unique id within its source.
        patient_id: id of the patient (splits are by patient, never by record).
        source: where it came from (file path or dataset name), used in every message.
        meta: free-form metadata (age, sex, device, site, diagnostic codes...).
        notes: QC notes on what reading did to the file's data, ``"<kind>: <what and why>"`` (a
            calibration pulse dropped, units assumed, padding masked); preprocessing reports them
            with its own flags.
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    record_id: str
    patient_id: str
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = self.source or self.record_id
        sig = np.asarray(self.signal)
        if sig.ndim != 2:
            raise RecordError(where, f"signal must be 2-D [leads, samples], got shape {sig.shape}", reason="shape")
        if sig.dtype != np.float32:
            sig = sig.astype(np.float32)
        object.__setattr__(self, "signal", sig)
        leads = canonical_leads(self.leads, record=where)
        object.__setattr__(self, "leads", leads)
        if len(leads) != sig.shape[0]:
            raise RecordError(where, f"{sig.shape[0]} signal rows but {len(leads)} lead names {leads}", reason="shape")
        if sig.shape[1] == 0:
            raise RecordError(where, "signal has no samples", reason="empty")
        try:
            fs = float(self.fs)
        except (TypeError, ValueError):
            fs = float("nan")
        if not np.isfinite(fs) or fs <= 0:
            raise RecordError(where, f"sampling rate must be a positive number of Hz, got {self.fs!r}", reason="fs")
        object.__setattr__(self, "fs", fs)
        object.__setattr__(self, "record_id", str(self.record_id))
        object.__setattr__(self, "patient_id", str(self.patient_id))
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        """The samples of one lead by canonical name."""
        try:
            return self.signal[self.leads.index(name)]
        except ValueError:
            raise RecordError(self.source, f"lead {name} not in record (has {', '.join(self.leads)})",
                              reason="missing-lead") from None

    def as_12(self) -> tuple[np.ndarray, np.ndarray]:
        """Signal in ``LEADS_12`` order ``[12, T]`` plus a lead-present mask ``[12]``."""
        return to_12(self.signal, self.leads)
