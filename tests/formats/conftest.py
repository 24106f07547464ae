"""Fixtures for the format-reader tests: one synthetic 12-lead ECG in mV, shared by all writers."""

from __future__ import annotations

import numpy as np
import pytest

from .spec_writers import LEADS_12, synthetic_ecg_mv


@pytest.fixture(scope="session")
def ecg_mv() -> dict[str, np.ndarray]:
    return synthetic_ecg_mv(fs=500.0, seconds=10.0)


@pytest.fixture(scope="session")
def reversed_leads() -> tuple[str, ...]:
    """Leads in a non-standard order: a reader that names leads by position gets every one wrong."""
    return tuple(reversed(LEADS_12))
