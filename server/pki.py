"""Credentials for a TEST federation: a local CA, the SuperLink's TLS certificate, one key pair per site.

    python -m server.pki runs/pki --sites ptbxl-site0 ptbxl-site1 [--days 30]

writes ``ca.crt``/``ca.key`` (the CA), ``server.pem``/``server.key`` (SAN: localhost,
127.0.0.1, ::1 and any ``--san``), and ``keys/<site>``/``keys/<site>.pub``: OpenSSH ECDSA
P-384 keys, the kind Flower's SuperNode authentication needs. Private keys are mode 0600.

For a real federation the coordinator's certificate comes from the hospital group's PKI and
each site generates its own key pair and sends only the ``.pub`` to the operator; this script
is for tests and demonstrations on one machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lsemvae.errors import LSEMVAEError

DEFAULT_SANS = ("DNS:localhost", "IP:127.0.0.1", "IP:::1")


def _run(cmd: list[str]) -> None:
    if shutil.which(cmd[0]) is None:
        raise LSEMVAEError(f"`{cmd[0]}` not found on PATH: install it (openssl / openssh-client) and retry")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LSEMVAEError(f"`{' '.join(cmd[:3])} ...` failed: {proc.stderr.strip()}")


def make_ca(out: Path, *, days: int) -> tuple[Path, Path]:
    key, crt = out / "ca.key", out / "ca.crt"
    _run(["openssl", "ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", str(key)])
    _run(["openssl", "req", "-x509", "-new", "-key", str(key), "-sha384", "-days", str(days),
          "-subj", "/CN=lsemvae test federation CA", "-out", str(crt),
          "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    os.chmod(key, 0o600)
    return crt, key


def make_server_cert(out: Path, ca: tuple[Path, Path], *, days: int, sans: list[str]) -> tuple[Path, Path]:
    key, csr, crt, ext = out / "server.key", out / "server.csr", out / "server.pem", out / "server.ext"
    _run(["openssl", "ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", str(key)])
    _run(["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=localhost", "-out", str(csr)])
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}\n"
    )
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
          "-days", str(days), "-sha384", "-extfile", str(ext), "-out", str(crt)])
    csr.unlink()
    ext.unlink()
    os.chmod(key, 0o600)
    return crt, key


def make_site_key(out: Path, site: str) -> Path:
    keys = out / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    key = keys / site
    for p in (key, key.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", f"lsemvae-site-{site}", "-f", str(key)])
    return key


def generate(out: str | Path, sites: list[str], *, days: int = 30, extra_sans: list[str] | None = None) -> dict[str, Path]:
    """Create everything under ``out``; returns the paths by role (``ca``, ``server-cert``, ``key:<site>``...)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(out, days=days)
    crt, key = make_server_cert(out, ca, days=days, sans=list(DEFAULT_SANS) + list(extra_sans or []))
    paths = {"ca": ca[0], "server-cert": crt, "server-key": key}
    for site in sites:
        paths[f"key:{site}"] = make_site_key(out, site)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.pki", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output directory (created)")
    p.add_argument("--sites", nargs="*", default=[], help="site names: one OpenSSH ECDSA P-384 key pair each")
    p.add_argument("--days", type=int, default=30, help="certificate validity in days (default 30)")
    p.add_argument("--san", action="append", default=[], help="extra subjectAltName, e.g. DNS:fl.example.org or IP:10.0.0.5")
    args = p.parse_args(argv)
    try:
        paths = generate(args.out, args.sites, days=args.days, extra_sans=args.san)
    except LSEMVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for role, path in paths.items():
        print(f"{role:20s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
