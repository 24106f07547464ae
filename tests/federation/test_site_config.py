"""Site and run config: every shipped file validates, bad values name file and field, preflight messages."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from client.preflight import check_auth_key, check_certificate, check_superlink, run_preflight
from lsemvae.errors import ConfigError
from lsemvae.site import FederationConfig, federation_config, load_federation_config, load_site_config
from tests.federation.helpers import REPO, free_port

SITES = sorted((REPO / "configs" / "sites").glob("*.toml"))


@pytest.mark.parametrize("path", SITES, ids=[p.stem for p in SITES])
def test_every_shipped_site_config_validates(path: Path):
    cfg = load_site_config(path)
    assert cfg.name == path.stem
    assert cfg.state_dir.is_absolute() and cfg.data.root.is_absolute()


def test_real_data_sites_point_at_shared_data(shared_data):
    for name in ("ptbxl-site0", "ptbxl-site1", "ludb"):
        cfg = load_site_config(REPO / "configs" / "sites" / f"{name}.toml")
        assert cfg.data.root.is_relative_to(shared_data)


def write(tmp: Path, text: str) -> Path:
    p = tmp / "site.toml"
    p.write_text(text)
    return p


BASE = """
name = "x"
leads = "6L"
state_dir = "state"
anchor_dir = "anchors"
[data]
format = "manifest"
root = "records"
labels = "labels.csv"
[[tasks]]
name = "right_heart"
column = "ph"
[privacy]
epsilon = 3.0
[connection]
superlink = "127.0.0.1:8000"
"""


@pytest.mark.parametrize("change, field", [
    (("epsilon = 3.0", "epsilon = -1"), "privacy.epsilon"),
    (('superlink = "127.0.0.1:8000"', 'superlink = "no-port"'), "connection.superlink"),
    (('leads = "6L"', 'leads = ["I", "X9"]'), "leads"),
    (('name = "x"', 'name = "Bad Name"'), "name"),
    (('labels = "labels.csv"', ''), "data"),
    (("epsilon = 3.0", "epsilon = 3.0\nbudget = 2"), "privacy.budget"),
])
def test_bad_site_config_names_file_and_field(tmp_path, change, field):
    path = write(tmp_path, BASE.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_site_config(path)
    assert str(path) in str(err.value) and f": {field}" in str(err.value)


def test_relative_paths_resolve_against_the_site_file(tmp_path):
    cfg = load_site_config(write(tmp_path, BASE))
    assert cfg.data.root == tmp_path / "records" and cfg.state_dir == tmp_path / "state"


def test_run_config_declared_in_pyproject_and_federation_toml():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == FederationConfig().as_run_config()
    assert load_federation_config(REPO / "configs" / "federation.toml").strategy in ("fedavg", "fedprox", "fedadam", "fedyogi")
    with pytest.raises(ConfigError, match="strategy"):
        federation_config({"strategy": "fedsgd"})
    with pytest.raises(ConfigError, match="eval-bins"):
        federation_config({"eval-bins": 15})


def test_preflight_hospital_template_says_what_is_missing(tmp_path):
    cfg = load_site_config(REPO / "configs" / "sites" / "aspire.toml")
    checks = run_preflight(cfg, printer=None, check_network=False)
    failed = {c.name: c.message for c in checks if not c.ok}
    assert "/srv/aspire/ecg/records does not exist" in failed["data"] and "Fix:" in failed["data"]
    assert "/etc/lsemvae/ca.crt not found" in failed["TLS root certificate"]
    assert "ssh-keygen -t ecdsa -b 384" in failed["SuperNode auth key"]


def test_preflight_certificates_keys_and_network(tmp_path):
    from server.pki import generate

    paths = generate(tmp_path / "pki", ["a"], days=1)
    assert check_certificate(paths["ca"]).ok
    assert check_auth_key(paths["key:a"]).ok
    assert not check_auth_key(paths["ca"]).ok                       # a certificate is not an SSH key
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    assert "not a readable PEM" in check_certificate(bad).message
    port = free_port()
    c = check_superlink(f"127.0.0.1:{port}", root_certificates=None, insecure=True)
    assert not c.ok and f"cannot connect to 127.0.0.1:{port}" in c.message


def test_preflight_on_real_ptbxl_site_passes_data_checks(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LSEMVAE_LEDGER_ANCHOR_DIR", str(tmp_path / "anchors"))
    cfg = load_site_config(REPO / "configs" / "sites" / "ptbxl-site1.toml")
    cfg = cfg.model_copy(update={"state_dir": tmp_path / "state"})
    checks = {c.name: c for c in run_preflight(cfg, insecure=True, printer=None, check_network=False)}
    assert checks["data"].ok and "529 records" in checks["data"].message
    assert checks["leads"].ok and checks["labels superclass"].ok and checks["privacy budget"].ok


def test_launcher_check_and_dry_run(tmp_path):
    import subprocess
    import sys

    from tests.federation.helpers import write_sites

    names = write_sites(tmp_path, n_sites=1, records=12)
    run = [sys.executable, str(REPO / "client" / "run.py"), "--site", names[0], "--sites-dir", str(tmp_path / "sites"),
           "--insecure", "--skip-network-check"]
    out = subprocess.run(run + ["--dry-run"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "INSECURE MODE" in out.stderr and "flower-supernode" in out.stdout and f'site="{names[0]}"' in out.stdout
    # TLS is the default: without --insecure and without a CA file the preflight refuses
    out = subprocess.run(run[:-2] + ["--check", "--skip-network-check"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "connection.root_certificates is not set" in out.stdout


def test_an_anchor_dir_inside_the_state_dir_is_refused(tmp_path):
    """Deleting the state dir would delete the anchors with it and reset the budget: refused, naming both."""
    path = write(tmp_path, BASE.replace('anchor_dir = "anchors"', 'anchor_dir = "state/anchors"'))
    with pytest.raises(ConfigError, match="anchor_dir .* is inside state_dir"):
        load_site_config(path)
    path = write(tmp_path, BASE.replace('anchor_dir = "anchors"', 'anchor_dir = "state"'))
    with pytest.raises(ConfigError, match="is inside state_dir"):
        load_site_config(path)
    assert load_site_config(write(tmp_path, BASE)).anchor_dir == tmp_path / "anchors"


def test_preflight_refuses_an_expired_ca_certificate(tmp_path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=40)).not_valid_after(now - dt.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    path = tmp_path / "ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    check = check_certificate(path)
    assert not check.ok and "expired on" in check.message and "renewed CA certificate" in check.message


def test_pki_command_makes_a_ca_a_server_certificate_with_extra_names_and_site_keys(tmp_path):
    import subprocess
    import sys

    from cryptography import x509

    out = tmp_path / "pki"
    run = subprocess.run([sys.executable, "-m", "server.pki", str(out), "--sites", "aspire", "ukbiobank",
                          "--san", "DNS:fl.example.org", "--san", "IP:10.0.0.5"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "fl.example.org"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.0.0.5"} <= {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    for site in ("aspire", "ukbiobank"):
        assert check_auth_key(out / "keys" / site).ok and (out / "keys" / f"{site}.pub").is_file()
    assert check_certificate(out / "ca.crt").ok
