"""Secured deployment on loopback: SuperLink with TLS and SuperNode authentication, credentials from
server.pki. A registered site started through client/run.py joins (preflight verifies the TLS
certificate); an unregistered site is refused by the SuperLink. The site runs only the app version
it approved (connection.approved_apps): a job with that app trains at the site; a job whose app
differs by one line is refused before any of its code runs there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

from lsemvae.fileio import dump_toml
from server.pki import generate
from tests.federation.helpers import (
    BIN,
    QUIET_ENV,
    REPO,
    free_port,
    read_jsonl,
    run_config_arg,
    start,
    stop_all,
    wait_healthy,
    write_checkpoint,
    write_sites,
)


def _approve(site_toml, app_hash: str) -> None:
    doc = tomllib.loads(site_toml.read_text())
    doc["connection"]["approved_apps"] = [app_hash]
    site_toml.write_text(dump_toml(doc))


def _altered_app(dest):
    """The same app with one line added to the ClientApp: another app as far as a site can tell."""
    for part in ("pyproject.toml", "LICENSE"):
        shutil.copy(REPO / part, dest / part)
    for package in ("server", "client", "lsemvae"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(dest / "client" / "client_app.py", "a") as fh:
        fh.write("# one more line\n")
    return dest

pytestmark = pytest.mark.e2e


def test_tls_and_node_auth_registered_joins_unregistered_refused(tmp_path):
    names = write_sites(tmp_path, n_sites=2, records=16)
    pki = generate(tmp_path / "pki", names, days=2)
    approved = subprocess.run([sys.executable, str(REPO / "client" / "run.py"), "--app-hash"], capture_output=True,
                              text=True, timeout=120).stdout.strip()
    assert len(approved) == 64
    for name in names:
        _approve(tmp_path / "sites" / f"{name}.toml", approved)
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "tls"\n\n[superlink.tls]\naddress = "127.0.0.1:{port}"\n'
                                      f'root-certificates = "{pki["ca"]}"\n')
    env = {"PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "FLWR_HOME": str(home),
           "LSEMVAE_LEDGER_ANCHOR_DIR": str(tmp_path / "anchors")}
    flwr_env = {**os.environ, **QUIET_ENV, **env}
    procs = []
    try:
        link = start([str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(pki["ca"]), "--ssl-certfile", str(pki["server-cert"]),
                      "--ssl-keyfile", str(pki["server-key"]), "--enable-supernode-auth", "--host", "127.0.0.1",
                      "--port", str(port), "--database", str(tmp_path / "state.db"),
                      "--disable-runtime-dependency-installation"], tmp_path / "superlink.log", env=env, cwd=tmp_path)
        procs.append(link)
        wait_healthy(port, link, scheme="https", cafile=str(pki["ca"]))
        registered, stranger = names
        reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(pki[f"key:{registered}"]) + ".pub", "tls",
                              "--name", registered], capture_output=True, text=True, timeout=60, env=flwr_env, cwd=tmp_path)
        assert reg.returncode == 0, reg.stdout + reg.stderr

        def join(site: str) -> subprocess.Popen:
            return start([sys.executable, str(REPO / "client" / "run.py"), "--site", site, "--sites-dir", str(tmp_path / "sites"),
                          "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()), "--root-certificates", str(pki["ca"]),
                          "--auth-key", str(pki[f"key:{site}"]), "--max-retries", "3"], tmp_path / f"{site}.log",
                         env=env, cwd=tmp_path)

        good = join(registered)
        bad = join(stranger)
        procs += [good, bad]
        bad_code = bad.wait(timeout=180)                                    # refused: the SuperNode exits
        online = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not online:
            ls = subprocess.run([str(BIN / "flwr"), "supernode", "ls", "tls", "--format", "json"], capture_output=True,
                                text=True, timeout=60, env=flwr_env, cwd=tmp_path)
            online = ls.returncode == 0 and '"online"' in ls.stdout
            time.sleep(2)
        assert online, ls.stdout + ls.stderr
        assert good.poll() is None                                          # the registered site stays connected

        def job(app_dir, out) -> None:
            cfg = {"num-server-rounds": 1, "min-sites": 1, "round-timeout": 120.0, "batch-size": 8,
                   "checkpoint": str(ckpt), "out-dir": str(out), "dp": True}
            subprocess.run([str(BIN / "flwr"), "run", str(app_dir), "tls", "--stream", "--run-config",
                            run_config_arg(cfg)], capture_output=True, text=True, timeout=400, env=flwr_env, cwd=tmp_path)

        job(REPO, tmp_path / "approved-job")                                 # the app the site reviewed: it trains
        job(_altered_app(tmp_path / "altered"), tmp_path / "altered-job")    # one line more: refused
        assert good.poll() is None                                          # the site keeps running
    finally:
        stop_all(procs)
    approved_rows = read_jsonl(tmp_path / "approved-job" / "metrics.jsonl")
    assert approved_rows[0]["sites_trained"] == 1 and not approved_rows[0]["failures"]
    altered = read_jsonl(tmp_path / "altered-job" / "metrics.jsonl")
    assert "stopped" in altered[0] and [f["code"] for f in altered[0]["failures"]] == [7]   # Flower's INVALID_FAB
    assert json.loads((tmp_path / "altered-job" / "report" / "report.json").read_text())["status"].startswith("stopped")
    good_log = (tmp_path / f"{registered}.log").read_text()
    assert "TLS certificate verified" in good_log                           # preflight checked the SuperLink's certificate
    bad_log = (tmp_path / f"{stranger}.log").read_text()
    assert "INSECURE" not in good_log + bad_log
    assert "Starting: " in bad_log and "check(s) failed" not in bad_log     # passed preflight, refused by the SuperLink
    assert bad_code != 0 and "Exit Code: 305" in bad_log and "Failed to activate SuperNode" in bad_log, bad_log[-2000:]
    assert "is not in this site's approved_apps" in good_log                # the site says which app it refused
