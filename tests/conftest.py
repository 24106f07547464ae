"""Shared fixtures: the real ECG data in ../shared/data (read-only) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; LSEMVAE_SHARED_DATA when the tests run from a copy elsewhere (`make mutation`)
SHARED_DATA = Path(os.environ.get("LSEMVAE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real ECG data not found at {SHARED_DATA}: clone with ../shared beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ptbxl_root(shared_data: Path) -> Path:
    return shared_data / "ptb-xl"


@pytest.fixture(scope="session")
def ludb_root(shared_data: Path) -> Path:
    return shared_data / "ludb"
