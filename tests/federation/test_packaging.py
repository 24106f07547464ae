"""Packaging: the Flower app bundle builds from pyproject.toml as it is.

Flower's FAB format 1 accepts only ``license = { file = "LICENSE" }``; setuptools 77+ deprecates that table (the
warning `make setup` printed), so the build backend is held below 77 until Flower takes the SPDX string.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.federation.helpers import QUIET_ENV, REPO


def test_the_fab_builds_with_the_license_flower_format_1_requires(tmp_path):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == {"file": "LICENSE"}
    assert project["tool"]["flwr"]["app"]["fab-format-version"] == 1
    assert project["build-system"]["requires"] == ["setuptools>=68,<77"]
    flwr = Path(sys.executable).parent / "flwr"
    out = subprocess.run([str(flwr), "build", "--app", str(REPO)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, **QUIET_ENV, "FLWR_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stdout + out.stderr
    (fab,) = tmp_path.glob("*.fab")
    with zipfile.ZipFile(fab) as z:
        names = set(z.namelist())
    assert {"LICENSE", "pyproject.toml", "client/client_app.py", "server/server_app.py"} <= names
