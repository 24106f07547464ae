"""Join a hospital to the federation: ``python client/run.py --site aspire``.

Reads ``configs/sites/<site>.toml``, runs the preflight (data, leads, labels, privacy budget,
certificates, node key, approved apps, SuperLink), then replaces itself with the SuperNode (exec: the
PID, signals and exit code become the SuperNode's) with the site in its node config, runtime
dependency installation off, telemetry off, and Flower's files under the site's state dir. With
``connection.approved_apps`` the SuperNode runs only those app versions (client/supernode.py).

TLS with node authentication and approved apps is the default; ``--insecure`` is for a SuperLink on
this machine's loopback only (tests), and says so loudly.

Examples:
    python client/run.py --site aspire --check                # preflight only
    python client/run.py --site aspire                        # preflight, then join
    python client/run.py --app-hash                           # sha256 of the app in this checkout
    python client/run.py --site ptbxl-site0 --insecure --superlink 127.0.0.1:8000 --port 9094
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from client.preflight import run_preflight  # noqa: E402
from lsemvae.config import validate  # noqa: E402
from lsemvae.errors import LSEMVAEError  # noqa: E402
from lsemvae.cli import PRIVATE_UMASK  # noqa: E402
from lsemvae.fileio import atomic_write, private_dir, toml_value  # noqa: E402
from lsemvae.site import SiteConfig, load_site_config, site_config_path  # noqa: E402

INSECURE_BANNER = (
    "INSECURE MODE: the connection to the SuperLink is NOT encrypted and the SuperLink is NOT authenticated.\n"
    "Model updates travel in clear text and anyone on the path can impersonate the coordinator.\n"
    "Use this only on a loopback test federation, never with patient data."
)

# Safe defaults for a hospital machine: no phoning home (Flower's telemetry and update check are on by default),
# no installs at run time.
SUPERNODE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python client/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", help="site name: reads <sites-dir>/<site>.toml")
    p.add_argument("--app-hash", nargs="?", const=str(REPO), metavar="APP_DIR",
                   help="print the sha256 of the app bundle built from APP_DIR (default: this checkout), the value "
                        "to put in connection.approved_apps once you have reviewed that code, and exit")
    p.add_argument("--approve-app", nargs="?", const=str(REPO), metavar="APP_DIR",
                   help="add the sha256 of the app in APP_DIR (default: this checkout, which you have reviewed) to the "
                        "site config's connection.approved_apps, and exit")
    p.add_argument("--sites-dir", default=str(REPO / "configs" / "sites"), help="folder of site configs (default: configs/sites)")
    p.add_argument("--config", help="explicit site config file (instead of <sites-dir>/<site>.toml)")
    p.add_argument("--check", action="store_true", help="run the preflight only, then exit (0 = ready to join)")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS, no node authentication, no app check: only for a SuperLink on this machine's "
                        "loopback (tests); prints a warning")
    p.add_argument("--superlink", help="override connection.superlink (host:port)")
    p.add_argument("--port", type=int, help="override connection.node_port (SuperNode runtime API on loopback)")
    p.add_argument("--root-certificates", help="override connection.root_certificates")
    p.add_argument("--auth-key", help="override connection.auth_key (OpenSSH ECDSA private key)")
    p.add_argument("--state-dir", help="override state_dir (privacy ledger, cache, outgoing-message log)")
    p.add_argument("--max-retries", type=int, help="give up after this many connection attempts (default: retry forever)")
    p.add_argument("--skip-network-check", action="store_true", help="do not test the SuperLink connection in preflight")
    p.add_argument("--dry-run", action="store_true", help="preflight and print the flower-supernode command, do not start it")
    return p.parse_args(argv)


def apply_overrides(cfg: SiteConfig, args: argparse.Namespace) -> SiteConfig:
    conn = {}
    if args.superlink:
        conn["superlink"] = args.superlink
    if args.port:
        conn["node_port"] = args.port
    if args.root_certificates:
        conn["root_certificates"] = Path(args.root_certificates).resolve()
    if args.auth_key:
        conn["auth_key"] = Path(args.auth_key).resolve()
    update = {"connection": cfg.connection.model_copy(update=conn)} if conn else {}
    if args.state_dir:
        update["state_dir"] = Path(args.state_dir).resolve()
    # Re-validate: overrides get the same checks as the file.
    return validate(SiteConfig, {**cfg.model_dump(), **{k: v.model_dump() if hasattr(v, "model_dump") else v
                                                        for k, v in update.items()}}, source="command-line overrides")


def _toml_str(value: str, what: str) -> str:
    # flower-supernode splits --node-config on spaces and needs quoted strings.
    if any(c in value for c in ' "\\'):
        raise LSEMVAEError(f"{what} {value!r} contains a space, quote or backslash, which --node-config cannot carry; "
                           "move it to a path without them")
    return f'"{value}"'


def supernode_command(cfg: SiteConfig, config_path: Path, *, insecure: bool, max_retries: int | None) -> list[str]:
    """The SuperNode command: Flower's own, or client/supernode.py when the site approved app versions."""
    if cfg.connection.approved_apps:
        exe = [sys.executable, str(REPO / "client" / "supernode.py")]
    else:
        found = shutil.which("flower-supernode", path=str(Path(sys.executable).parent)) or shutil.which("flower-supernode")
        if found is None:
            raise LSEMVAEError("flower-supernode not found next to this Python or on PATH: install flwr==1.42.0 in this "
                               "environment")
        exe = [found]
    node_config = " ".join([
        f"site={_toml_str(cfg.name, 'site name')}",
        f"site-config={_toml_str(str(config_path), 'site config path')}",
        f"state-dir={_toml_str(str(cfg.state_dir), 'state_dir')}",
    ])
    cmd = [*exe, "--superlink", cfg.connection.superlink, "--port", str(cfg.connection.node_port),
           "--node-config", node_config]
    if insecure:
        cmd.append("--insecure")
    else:   # node authentication exists only over TLS; preflight has checked both files
        cmd += ["--root-certificates", str(cfg.connection.root_certificates),
                "--auth-supernode-private-key", str(cfg.connection.auth_key)]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    return cmd


def supernode_env(cfg: SiteConfig) -> dict[str, str]:
    """The SuperNode's environment: safe defaults, Flower's files under the site's state, approved apps."""
    from client.supernode import APPROVED_ENV

    env = {**os.environ, **SUPERNODE_ENV, "FLWR_HOME": str(cfg.flwr_home)}
    if cfg.connection.approved_apps:
        env[APPROVED_ENV] = ",".join(cfg.connection.approved_apps)
    return env


def check_insecure(cfg: SiteConfig) -> None:
    """--insecure only for a SuperLink on this machine's loopback (a test federation)."""
    host = cfg.connection.superlink.rpartition(":")[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise LSEMVAEError(f"--insecure is refused for SuperLink {cfg.connection.superlink}: without TLS the connection "
                           "to a remote coordinator is unencrypted and unauthenticated. Use TLS (connection."
                           "root_certificates, connection.auth_key); --insecure is for a SuperLink on 127.0.0.1 only")


def app_hash(app_dir: Path) -> str:
    """sha256 of the app bundle (FAB) ``flwr build`` makes from ``app_dir`` (deterministic for the same files)."""
    import subprocess
    import tempfile

    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([flwr, "build", "--app", str(app_dir.resolve())], cwd=tmp, capture_output=True, text=True,
                              env={**os.environ, **SUPERNODE_ENV, "FLWR_HOME": str(Path(tmp) / "flwr-home")})
        fabs = list(Path(tmp).glob("*.fab"))
        if proc.returncode != 0 or len(fabs) != 1:
            raise LSEMVAEError(f"flwr build --app {app_dir} failed: {(proc.stdout + proc.stderr).strip()[-500:]}")
        import hashlib

        return hashlib.sha256(fabs[0].read_bytes()).hexdigest()


def approve_app(config_path: Path, digest: str) -> bool:
    """Add ``digest`` to ``connection.approved_apps`` in the site's TOML, keeping the file's comments.
    False if it was approved already."""
    import re
    import tomllib

    text = config_path.read_text(encoding="utf-8")
    approved = tomllib.loads(text).get("connection", {}).get("approved_apps", [])
    if digest in approved:
        return False
    line = f"approved_apps = {toml_value([*approved, digest])}"
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "[connection]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    existing = [i for i in range(start + 1, end) if re.match(r"\s*approved_apps\s*=", lines[i])]
    if existing:
        lines[existing[0]] = line
    else:
        lines.insert(start + 1, line)
    atomic_write(config_path, "\n".join(lines) + "\n", private=False)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.app_hash:
            print(app_hash(Path(args.app_hash)))
            return 0
        if not args.site:
            raise LSEMVAEError("--site is required (or --app-hash)")
        config_path = Path(args.config) if args.config else site_config_path(args.site, args.sites_dir)
        if args.approve_app:
            return _approve(args.site, config_path, Path(args.approve_app))
        return _join(args, config_path)
    except LSEMVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _approve(site: str, config_path: Path, app_dir: Path) -> int:
    load_site_config(config_path)   # a broken config is reported before anything is written to it
    digest = app_hash(app_dir)
    added = approve_app(config_path, digest)
    print(f"{'approved' if added else 'already approved'}: app {digest} for site {site} ({config_path})")
    return 0


def _join(args: argparse.Namespace, config_path: Path) -> int:
    """Preflight, then replace this process with the SuperNode (unless --check or --dry-run)."""
    cfg = apply_overrides(load_site_config(config_path), args)
    if cfg.name != args.site:
        raise LSEMVAEError(f"{config_path}: name = {cfg.name!r} but --site {args.site!r}; they must match")
    if args.insecure:
        check_insecure(cfg)
        banner = "!" * 100
        print(f"{banner}\n{INSECURE_BANNER}\n{banner}", file=sys.stderr, flush=True)
    print(f"Preflight for site '{cfg.name}' ({config_path.resolve()})", flush=True)
    checks = run_preflight(cfg, insecure=args.insecure, superlink=None, check_network=not args.skip_network_check)
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"{len(failed)} check(s) failed: the site cannot join until they are fixed.", file=sys.stderr)
        return 1
    if args.check:
        print("Preflight passed: the site is ready to join.")
        return 0
    private_dir(cfg.flwr_home)
    cmd = supernode_command(cfg, config_path.resolve(), insecure=args.insecure, max_retries=args.max_retries)
    env = supernode_env(cfg)
    os.umask(PRIVATE_UMASK)   # everything the SuperNode and its ClientApps write at the site is private
    print("Starting: " + " ".join(cmd), flush=True)
    print("Environment: " + " ".join(f"{k}={env[k]}" for k in sorted(env) if os.environ.get(k) != env[k]
                                     or k in SUPERNODE_ENV), flush=True)
    if args.dry_run:
        return 0
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
