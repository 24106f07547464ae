"""Preflight: everything a site admin can get wrong, checked before the SuperNode joins.

Each check gives one line: what was found, or what is wrong and how to fix it. The checks are
independent (a missing certificate does not hide a missing labels file), and every one runs
against the real thing: the data files, the ledger on disk, the certificate, the network.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lsemvae.errors import LSEMVAEError
from lsemvae.site import SiteConfig

CONNECT_TIMEOUT_S = 3.0
# The job the budget check assumes (a site learns a job's real length only when it starts): the shipped
# configs/federation.toml's rounds, one local epoch, batch 32.
ASSUMED_JOB = {"rounds": 10, "local_epochs": 1, "batch_size": 32}
CERT_WARN_DAYS = 14


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str
    warning: bool = False

    def line(self) -> str:
        mark = "ok  " if self.ok and not self.warning else ("warn" if self.ok else "FAIL")
        return f"[{mark}] {self.name}: {self.message}"


def _fail(name: str, what: str, fix: str) -> Check:
    return Check(name, False, f"{what}. Fix: {fix}")


def check_data(cfg: SiteConfig) -> tuple[list[Check], list]:
    """Data readable and non-empty, the site's leads present, every task with both classes."""
    from lsemvae.federation.sitedata import index_site, label_matrix, site_tasks

    d = cfg.data
    where = f"data.root in the site config"
    if not d.root.exists():
        return [_fail("data", f"{d.root} does not exist", f"point {where} at the folder holding the ECG records")], []
    if not os.access(d.root, os.R_OK | os.X_OK):
        return [_fail("data", f"{d.root} is not readable by this user", f"grant read access or run as the data owner")], []
    if d.format == "manifest" and not (d.labels and d.labels.is_file()):
        return [_fail("labels", f"labels CSV {d.labels} not found",
                      "set data.labels to the CSV with record_id, patient_id and the label columns")], []
    try:
        refs = index_site(cfg)
    except LSEMVAEError as err:
        return [_fail("data", str(err), "correct the file or column named above")], []
    if not refs:
        return [_fail("data", f"no records found under {d.root} (format {d.format})",
                      "check data.root and data.format; records must be WFDB .hea/.dat or a registered format")], []
    checks = [Check("data", True, f"{len(refs)} records indexed under {d.root}")]

    checks += check_records(cfg, refs)
    try:
        tasks = site_tasks(cfg)
    except LSEMVAEError as err:
        return checks + [_fail("tasks", str(err), "use a known task name or bind it to a label column")], refs
    for name, task in tasks.items():
        try:
            y = label_matrix(refs, task)
        except (LSEMVAEError, ValueError) as err:
            checks.append(_fail(f"labels {name}", str(err), "fix the label values (0/1, blank = unknown)"))
            continue
        pos, neg = np.nansum(y == 1, axis=0), np.nansum(y == 0, axis=0)
        lacking = [f"{c} ({int(p)} positive, {int(n)} negative)" for c, p, n in zip(task.classes, pos, neg) if p == 0 or n == 0]
        if lacking:
            checks.append(_fail(f"labels {name}", f"one class never occurs: {'; '.join(lacking)}",
                                "check the label column/rule, or drop this task from the site config"))
        else:
            checks.append(Check(f"labels {name}", True,
                                f"{int(pos.min())}+ positives and {int(neg.min())}+ negatives per class"))
    return checks, refs


def check_records(cfg: SiteConfig, refs: list) -> list[Check]:
    """Every record read and preprocessed as training will (the site's cache is built, or reused when fresh):
    how many are usable, how many skipped and why, and whether they hold the site's leads."""
    from lsemvae.data.cache import build_cohort
    from lsemvae.federation.sitedata import site_tasks
    from lsemvae.fileio import private_dir
    from lsemvae.leads import lead_index
    from lsemvae.model.config import get_profile

    try:
        private_dir(cfg.state_dir)   # the cache holds the site's ECGs: never readable by other users
        cohort = build_cohort(refs, site_tasks(cfg), get_profile("compact").preprocess_config(), cfg.cache_dir,
                              name=cfg.name, progress=True)
    except LSEMVAEError as err:
        return [_fail("records", str(err), "repair the records or the labels named above")]
    skipped = cohort.skipped_by_reason()
    detail = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    if len(cohort) == 0:
        return [_fail("records", f"none of the {len(refs)} records is usable ({detail})",
                      f"see the reasons per record with `lsemvae data inspect {cfg.data.root}`")]
    checks = [Check("records", True, f"{len(cohort)} of {len(refs)} records usable"
                    + (f"; {sum(skipped.values())} skipped: {detail} (`lsemvae data inspect {cfg.data.root}` "
                       "names each)" if skipped else ""), warning=bool(skipped))]
    mask = np.asarray(cohort.lead_mask)
    lacking = {lead: int((~mask[:, lead_index(lead)]).sum()) for lead in cfg.lead_names}
    lacking = {lead: n for lead, n in lacking.items() if n}
    if lacking and max(lacking.values()) == len(cohort):
        checks.append(_fail("leads", f"no usable record has {', '.join(l for l, n in lacking.items() if n == len(cohort))}",
                            f"set `leads` to what the records contain (now {list(cfg.lead_names)}), e.g. \"6L\""))
    elif lacking:
        checks.append(Check("leads", True, "some records lack leads (they train the others): "
                            + ", ".join(f"{lead} {n}" for lead, n in lacking.items()), warning=True))
    else:
        checks.append(Check("leads", True, f"{', '.join(cfg.lead_names)} present in all {len(cohort)} usable records"))
    checks.append(check_useful_budget(cfg, cohort))
    return checks


def check_useful_budget(cfg: SiteConfig, cohort) -> Check:
    """Whether what is left of the budget buys a job that is more than noise (the site's noise ceiling)."""
    import math

    from lsemvae.data.cache import patient_split
    from lsemvae.privacy.dp import BudgetExhausted, plan_noise_multiplier
    from lsemvae.privacy.ledger import LedgerError, PrivacyLedger

    name = "budget for a job"
    try:
        ledger = PrivacyLedger.open(cfg.ledger_path, site=cfg.name, anchor_dir=cfg.anchor_dir)
        spent, history = ledger.epsilon(), ledger.history
    except LedgerError:
        spent, history = 0.0, []   # check_budget reports a missing or broken ledger
    n_train = len(patient_split(cohort, cfg.data.val_fraction, seed=0)[0])
    steps = ASSUMED_JOB["local_epochs"] * math.ceil(n_train / min(ASSUMED_JOB["batch_size"], max(n_train, 1)))
    target = min(cfg.privacy.epsilon, spent + cfg.privacy.job_epsilon)
    job = f"a {ASSUMED_JOB['rounds']}-round job of {steps} steps per round on {n_train} training records"
    try:
        sigma = plan_noise_multiplier(target_epsilon=target, delta=cfg.privacy.delta, sample_rate=1 / steps,
                                      total_steps=ASSUMED_JOB["rounds"] * steps, accountant=cfg.privacy.accountant,
                                      already_spent_history=history)
    except BudgetExhausted:
        sigma = math.inf
    if sigma > cfg.privacy.max_noise_multiplier:
        return _fail(name, f"with epsilon {spent:.3f} of {cfg.privacy.epsilon:g} spent, {job} would need noise multiplier "
                           f"{sigma:.2f}, above this site's ceiling {cfg.privacy.max_noise_multiplier:g}: it would train on "
                           "noise", "this dataset's budget cannot buy useful training any more; leave it out of further "
                           "jobs (or, with the data custodian, `lsemvae privacy set-budget`)")
    return Check(name, True, f"this job's share (epsilon up to {target:.3f}) buys {job} at noise multiplier {sigma:.2f} "
                             f"(ceiling {cfg.privacy.max_noise_multiplier:g})")


def check_budget(cfg: SiteConfig) -> Check:
    """Budget left in the site's privacy ledger. No ledger and no anchor: a fresh budget. Corrupt,
    missing-but-anchored or mismatched: a failure (fail closed). Nothing is written here."""
    from lsemvae.privacy.ledger import LedgerError, LedgerMissing, PrivacyLedger

    path = cfg.ledger_path
    name = "privacy budget"
    try:
        ledger = PrivacyLedger.open(path, site=cfg.name, anchor_dir=cfg.anchor_dir)
    except LedgerMissing as err:
        return _fail(name, str(err), "restore the ledger file from backup; deleting it does not reset the budget")
    except LedgerError as err:
        if not path.exists():
            return Check(name, True, f"no ledger yet: full budget epsilon {cfg.privacy.epsilon:g} at delta {cfg.privacy.delta:g} "
                                     f"(will be created at {path})")
        return _fail(name, str(err), "restore the ledger from backup; never delete or edit it")
    if ledger.delta != cfg.privacy.delta or ledger.accountant != cfg.privacy.accountant:
        return _fail(name, f"{path} is kept at delta {ledger.delta:g} ({ledger.accountant}), the site config says "
                           f"delta {cfg.privacy.delta:g} ({cfg.privacy.accountant})",
                     "set privacy.delta and privacy.accountant back to the ledger's values")
    spent = ledger.epsilon()
    budget = min(cfg.privacy.epsilon, ledger.max_epsilon)
    left = budget - spent
    if left <= 0:
        return _fail(name, f"epsilon spent {spent:.3f} of {budget:g} (delta {cfg.privacy.delta:g}) in {path}",
                     "this dataset's budget is used up; it cannot train again under DP")
    return Check(name, True, f"epsilon spent {spent:.3f} of {budget:g}, {left:.3f} left ({path})")


def check_certificate(path: Path | None) -> Check:
    name = "TLS root certificate"
    if path is None:
        return _fail(name, "connection.root_certificates is not set",
                     "set it to the CA certificate your coordinator sent you, or pass --insecure for a local test only")
    if not path.is_file():
        return _fail(name, f"{path} not found", "copy the coordinator's CA certificate there or correct connection.root_certificates")
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (ValueError, OSError) as err:
        return _fail(name, f"{path} is not a readable PEM certificate ({err})", "ask the coordinator for the CA certificate in PEM format")
    now = dt.datetime.now(dt.timezone.utc)
    for cert in certs:
        if cert.not_valid_after_utc <= now:
            return _fail(name, f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d}", "ask the coordinator for a renewed CA certificate")
        if cert.not_valid_before_utc > now:
            return _fail(name, f"{path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                         "check this machine's clock")
    soonest = min(c.not_valid_after_utc for c in certs)
    days = (soonest - now).days
    return Check(name, True, f"{path} valid until {soonest:%Y-%m-%d}", warning=days < CERT_WARN_DAYS)


def check_auth_key(path: Path | None) -> Check:
    name = "SuperNode auth key"
    if path is None:
        return _fail(name, "connection.auth_key is not set: without it the coordinator cannot tell this site from an "
                           "impostor", "generate a key with `ssh-keygen -t ecdsa -b 384 -N \"\" -f <path>`, set "
                           "connection.auth_key to it and send <path>.pub to the coordinator")
    if not path.is_file():
        return _fail(name, f"{path} not found",
                     f"generate it with `ssh-keygen -t ecdsa -b 384 -N \"\" -f {path}` and send {path}.pub to the coordinator")
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, OSError) as err:
        return _fail(name, f"{path} is not an unencrypted OpenSSH private key ({err})",
                     "generate one with `ssh-keygen -t ecdsa -b 384 -N \"\"`")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return _fail(name, f"{path} is a {type(key).__name__}, Flower needs an ECDSA (NIST curve) key",
                     "generate one with `ssh-keygen -t ecdsa -b 384 -N \"\"`")
    if path.stat().st_mode & 0o077:
        return Check(name, True, f"{path}: ECDSA {key.curve.name}, but readable by group/others (chmod 600 it)", warning=True)
    return Check(name, True, f"{path}: ECDSA {key.curve.name}")


def check_approved_apps(approved: list[str], *, insecure: bool) -> Check:
    """With TLS the site names the app versions it reviewed; anything else the coordinator submits is refused."""
    name = "approved apps"
    if approved:
        return Check(name, True, f"{len(approved)} app version(s) approved; any other app is refused")
    if insecure:
        return Check(name, True, "connection.approved_apps not set: this loopback test site runs any app it is sent",
                     warning=True)
    return _fail(name, "connection.approved_apps is empty: this site would run whatever code the coordinator submits",
                 "review the app's code, run `python client/run.py --app-hash <checkout>` and add the hash it prints to "
                 "connection.approved_apps")


def check_superlink(address: str, *, root_certificates: Path | None, insecure: bool) -> Check:
    """TCP connect; with TLS also the handshake against the CA, which catches wrong CA and wrong host name."""
    name = "SuperLink reachable"
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
    except OSError as err:
        return _fail(name, f"cannot connect to {address} ({err.strerror or err})",
                     "check connection.superlink, that the coordinator is running and the firewall allows this port")
    with sock:
        if insecure or root_certificates is None or not root_certificates.is_file():
            return Check(name, True, f"{address} accepts connections")
        ctx = ssl.create_default_context(cafile=str(root_certificates))
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as err:
            return _fail(name, f"{address} presented a certificate that {root_certificates} does not verify ({err.verify_message})",
                         "use the CA certificate of this coordinator and its exact host name")
        except (ssl.SSLError, OSError) as err:
            return _fail(name, f"TLS handshake with {address} failed ({err})",
                         "the SuperLink may be running without TLS; ask the coordinator, or use --insecure for a local test")
    return Check(name, True, f"{address} reachable, TLS certificate verified")


def run_preflight(cfg: SiteConfig, *, insecure: bool = False, superlink: str | None = None,
                  check_network: bool = True, printer: Callable[[str], None] | None = print) -> list[Check]:
    """All checks; prints one line each when ``printer`` is given. The site joins only if all are ok."""
    checks: list[Check] = []

    def add(c: Check | list[Check]) -> None:
        for item in c if isinstance(c, list) else [c]:
            checks.append(item)
            if printer:
                printer(item.line())

    add(check_data(cfg)[0])
    add(check_budget(cfg))
    if not insecure:
        add(check_certificate(cfg.connection.root_certificates))
        add(check_auth_key(cfg.connection.auth_key))   # node authentication requires TLS
    add(check_approved_apps(cfg.connection.approved_apps, insecure=insecure))
    if check_network:
        add(check_superlink(superlink or cfg.connection.superlink,
                            root_certificates=cfg.connection.root_certificates, insecure=insecure))
    return checks
