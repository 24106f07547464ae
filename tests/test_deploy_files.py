"""deploy/: the image builds its venv with the Makefile's own target; the Compose trial's commands are the
documented ones (TLS, node auth, approved apps) and run, without Docker, from a checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lsemvae.site import load_site_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_the_image_builds_its_venv_with_make_setup_and_the_torch_pin():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile and "RUN make setup" in dockerfile
    assert "pip install --quiet torch==2.13.0" in (REPO / "Makefile").read_text()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".cache"} <= set(ignored)       # no local venv, data or results in the image


def test_the_trial_uses_tls_node_auth_and_approved_apps_everywhere():
    services = compose()["services"]
    text = (DEPLOY / "compose.yaml").read_text()
    assert "--insecure" not in text
    link = services["superlink"]["command"]
    assert "--enable-supernode-auth" in link and "--ssl-certfile" in link and "--disable-runtime-dependency-installation" in link
    for site in ("site0", "site1"):
        assert "--approve-app" in services[site]["command"][-1]
    for name in ("ptbxl-site0", "ptbxl-site1"):
        cfg = load_site_config(DEPLOY / "sites" / f"{name}.toml")
        assert cfg.connection.superlink == "superlink:8000" and cfg.connection.auth_key is not None
        assert cfg.data.root == (REPO.parent / "shared" / "data" / "ptb-xl").resolve()   # /shared beside /app


@pytest.mark.e2e
def test_the_trials_site_commands_run_from_a_checkout(tmp_path):
    """pki as the compose file runs it, then each site's approval and preflight (network aside: the compose
    network's `superlink` host does not exist outside Docker)."""
    import shutil

    work = tmp_path / "app"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".venv", ".git", "runs", ".cache", "__pycache__"))
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    services = compose()["services"]
    run = subprocess.run([sys.executable if c == "python" else c for c in services["pki"]["command"]], cwd=work,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    for site in ("site0", "site1"):
        for step in services[site]["command"][-1].split("&&"):
            args = step.split()
            args[0] = sys.executable
            if "--approve-app" not in args:
                args += ["--check", "--skip-network-check"]
            out = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
    assert "Preflight passed" in out.stdout
