"""client/run.py as a hospital's operator meets it: what it refuses, what its preflight reports, how it approves
the app it will run."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from client.preflight import run_preflight
from lsemvae.site import load_site_config
from tests.federation.helpers import REPO, write_sites

LAUNCHER = [sys.executable, str(REPO / "client" / "run.py")]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launcher")
    name = write_sites(tmp, n_sites=1, records=24)[0]
    return tmp, name, tmp / "sites" / f"{name}.toml"


def _run(site, *args, timeout: float = 180) -> subprocess.CompletedProcess:
    tmp, name, _ = site
    return subprocess.run([*LAUNCHER, "--site", name, "--sites-dir", str(tmp / "sites"), *args], capture_output=True,
                          text=True, timeout=timeout)


def test_insecure_is_only_for_a_loopback_superlink(site):
    out = _run(site, "--insecure", "--superlink", "fl.example.org:8000", "--check", "--skip-network-check")
    assert out.returncode == 2 and "--insecure is refused for SuperLink fl.example.org:8000" in out.stderr
    out = _run(site, "--insecure", "--superlink", "127.0.0.1:8000", "--check", "--skip-network-check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "approved apps" in out.stdout and "runs any app" in out.stdout        # said, loudly, for a test site


def test_with_tls_a_node_key_and_approved_apps_are_required(site, tmp_path):
    from server.pki import generate

    tmp, name, _ = site
    pki = generate(tmp_path / "pki", [name], days=2)
    cfg = load_site_config(site[2])
    cfg = cfg.model_copy(update={"connection": cfg.connection.model_copy(update={"root_certificates": pki["ca"]})})
    failed = {c.name: c.message for c in run_preflight(cfg, printer=None, check_network=False) if not c.ok}
    assert "connection.auth_key is not set" in failed["SuperNode auth key"]
    assert "python client/run.py --app-hash" in failed["approved apps"]


def test_approve_app_adds_this_checkouts_hash_and_the_supernode_then_checks_it(site):
    tmp, name, path = site
    digest = subprocess.run([*LAUNCHER, "--app-hash"], capture_output=True, text=True, timeout=180).stdout.strip()
    out = _run(site, "--approve-app")
    assert out.returncode == 0 and f"approved: app {digest}" in out.stdout
    assert tomllib.loads(path.read_text())["connection"]["approved_apps"] == [digest]
    assert "already approved" in _run(site, "--approve-app").stdout
    dry = _run(site, "--insecure", "--skip-network-check", "--dry-run")
    assert dry.returncode == 0 and "client/supernode.py" in dry.stdout     # the app-checking SuperNode


def test_preflight_reads_every_record_and_counts_the_bad_ones_by_reason(site):
    tmp, name, _ = site
    cfg = load_site_config(site[2])
    records = sorted(cfg.data.root.rglob("*.dat"))
    records[3].write_bytes(records[3].read_bytes()[:100])          # truncated: unreadable
    checks = {c.name: c for c in run_preflight(cfg, insecure=True, printer=None, check_network=False)}
    assert checks["records"].ok and checks["records"].warning
    assert f"{23} of 24 records usable; 1 skipped" in checks["records"].message
    assert cfg.state_dir.stat().st_mode & 0o077 == 0                 # the cache it built is private


def test_preflight_fails_when_the_budget_left_cannot_buy_useful_training(tmp_path):
    from lsemvae.privacy.ledger import PrivacyLedger

    name = write_sites(tmp_path, n_sites=1, records=24)[0]       # its own site: it spends the whole budget
    cfg = load_site_config(tmp_path / "sites" / f"{name}.toml")
    ledger = PrivacyLedger.open_or_create(cfg.ledger_path, site=cfg.name, delta=cfg.privacy.delta,
                                          max_epsilon=cfg.privacy.epsilon, anchor_dir=cfg.anchor_dir)
    ledger.record_round(round_number=1, run_id="earlier", history=[(0.6, 0.5, 40)])   # almost all of it spent
    assert cfg.privacy.epsilon - ledger.epsilon() < 0.5
    checks = {c.name: c for c in run_preflight(cfg, insecure=True, printer=None, check_network=False)}
    assert not checks["budget for a job"].ok and "would train on noise" in checks["budget for a job"].message


def test_the_supernode_runs_without_telemetry_update_checks_or_runtime_installs(site):
    """What the launcher hands the SuperNode, whatever the operator's shell had set."""
    import os

    tmp, name, _ = site
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    out = subprocess.run([*LAUNCHER, "--site", name, "--sites-dir", str(tmp / "sites"), "--insecure",
                          "--skip-network-check", "--dry-run"], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("Environment: "))
    for setting in ("FLWR_TELEMETRY_ENABLED=0", "FLWR_DISABLE_UPDATE_CHECK=1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1"):
        assert setting in line.split(), line
    assert f"FLWR_HOME={load_site_config(site[2]).state_dir / 'flwr'}" in line.split()
