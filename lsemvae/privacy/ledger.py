"""Per-site privacy ledger: what a site's dataset has spent, kept on the site's own disk.

The ledger is one JSON file::

    {"format": "lsemvae-privacy-ledger", "version": 1, "sha256": "<hex of the canonical body>",
     "body": {"site", "delta", "max_epsilon", "accountant", "resets",
              "history": [[noise_multiplier, sample_rate, steps], ...],    # Opacus accountant history
              "events": [{"kind": "created"|"round"|"reset"|"budget", "time", ...}, ...]}}

* **Epsilon is recomputed** from the whole history by Opacus' accountant every time it is asked
  for (:func:`lsemvae.privacy.dp.epsilon_of`); the events' ``epsilon`` values are a log, not state.
* **Atomic writes:** temp file in the same directory, flush, fsync, ``os.replace``, fsync of the
  directory. A crash leaves either the old or the new ledger, never a mix. Writers hold an
  exclusive ``flock`` on a sidecar lock file and re-read the ledger under it, so two processes of
  one site cannot lose each other's rounds.
* **Fail closed:** unreadable JSON, unknown format/version, checksum mismatch, history that does
  not match the round events, or a ledger older than its anchor raise :class:`LedgerCorrupted`
  naming the file. Nothing ever restarts from zero on its own.

Anchors (design decision)
-------------------------
Deleting the state directory must not reset the budget, and an older copy must not roll it back.
Each write also updates an anchor ``<anchor_dir>/<site>.json`` *outside* the state directory (the
site config requires ``anchor_dir`` and refuses one inside ``state_dir``): site, ledger path, resets,
the **whole history**, epsilon, delta, budget, accountant, and keyed hashes of the dataset's
patients, with its own checksum.

* Ledger present, anchor absent: refused if the ledger has spent anything (:class:`AnchorMissing`):
  a ledger without its anchor could be an older copy. ``lsemvae privacy re-anchor`` (explicit, with a
  reason, logged in the ledger) writes a new anchor. A ledger that has spent nothing is re-anchored
  silently (a crash between creating the two files).
* Ledger absent, anchor present: :class:`LedgerMissing`; the operator either restores the file
  or runs ``lsemvae privacy reset`` (explicit, with a reason, logged in the new ledger).
* Ledger present: its history must **extend** the anchored one (each anchored entry kept, more
  steps only at the end) and its epsilon may not be lower than the anchored epsilon; fewer resets
  than the anchor is an older copy. Otherwise :class:`LedgerCorrupted`. The ledger is written before
  its anchor, so a crash between the two leaves the ledger *ahead*, which is accepted and the anchor
  caught up.
* **The budget belongs to the patients, not to the site's name.** A new ledger whose dataset shares
  patients with any anchor in ``anchor_dir`` (same key, :func:`lsemvae.federation.runtime.ledger_key`)
  is refused, naming the site that spent on them: renaming a site does not give its data a new budget.

What the anchor does not do: it is a plain file of the same user. Someone who can write both files
can forge a consistent pair (recomputing unkeyed checksums), as root always can; the checksums catch
accidents, old backups, hand edits and renames. The cross-party check is the coordinator's: it keeps
every site's reported cumulative epsilon and flags a site whose epsilon went down.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import logging
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lsemvae.errors import LSEMVAEError
from lsemvae.fileio import atomic_write_json, private_dir
from lsemvae.privacy.dp import BudgetExhausted, History, check_accountant, epsilon_of

log = logging.getLogger(__name__)

FORMAT = "lsemvae-privacy-ledger"
ANCHOR_FORMAT = "lsemvae-privacy-ledger-anchor"
VERSION = 1
ANCHOR_DIR_ENV = "LSEMVAE_LEDGER_ANCHOR_DIR"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESET_COMMAND = "lsemvae privacy reset --ledger {path} --site {site} --confirm '<reason>'"
REANCHOR_COMMAND = "lsemvae privacy re-anchor --ledger {path} --site {site} --anchor-dir {anchor_dir} --confirm '<reason>'"
EPSILON_SLACK = 1e-9


class LedgerError(LSEMVAEError):
    """A privacy ledger cannot be used as it is. The site must not train until it is resolved."""


class LedgerCorrupted(LedgerError):
    """The ledger (or its anchor) is unreadable, inconsistent or older than its anchor."""


class LedgerMissing(LedgerError):
    """No ledger file, but its anchor shows this site has spent privacy budget before."""


class LedgerWriteError(LedgerError):
    """The ledger or its anchor could not be written; the previous file is intact."""


class LedgerMismatch(LedgerError):
    """The ledger belongs to another site, delta or accountant than the caller asked for."""


class AnchorMissing(LedgerCorrupted):
    """A ledger that has spent budget, without its anchor: it could be an older copy."""


class DatasetSpentElsewhere(LedgerMismatch):
    """A new ledger's patients have spent budget under another site's ledger (a renamed site)."""


def default_anchor_dir() -> Path:
    """Where ``lsemvae privacy`` looks for anchors without ``--anchor-dir`` (sites name theirs in the config)."""
    env = os.environ.get(ANCHOR_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".lsemvae" / "ledger-anchors"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _sha256(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj)).hexdigest()


def _normalise(history) -> History:
    return [(float(s), float(q), int(n)) for s, q, n in history]


def _total_steps(history: History) -> int:
    return sum(n for _, _, n in history)


def _append(history: History, entry: tuple[float, float, int]) -> History:
    """Append like Opacus' accountants do: merge with the last entry when sigma and q are equal."""
    s, q, n = entry
    if n <= 0:
        return list(history)
    if history and history[-1][0] == s and history[-1][1] == q:
        return history[:-1] + [(s, q, history[-1][2] + n)]
    return history + [(s, q, n)]


def history_increment(old: History, new: History) -> History:
    """Entries ``new`` has beyond ``old``; ``new`` must continue ``old`` (Opacus merges equal entries)."""
    old, new = _normalise(old), _normalise(new)
    if not old:
        return new
    k = len(old)
    ok = len(new) >= k and new[: k - 1] == old[: k - 1] and new[k - 1][:2] == old[-1][:2] and new[k - 1][2] >= old[-1][2]
    if not ok:
        raise LedgerError(
            "the accountant history to record does not continue the ledger's history "
            f"(ledger ends {old[-3:]}, given {new[:k + 2]}): pass make_private(history=ledger.history) "
            "and record session.history from that same engine"
        )
    extra = new[k - 1][2] - old[-1][2]
    return ([(old[-1][0], old[-1][1], extra)] if extra else []) + new[k:]


@contextlib.contextmanager
def sidecar_lock(path: Path):
    """Exclusive ``flock`` on ``.<name>.lock`` beside ``path`` (a sidecar: a ledger itself is replaced on write).
    Held across processes; a process that dies releases it."""
    private_dir(path.parent)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_checked(path: Path, fmt: str, what: str, fix: str) -> dict:
    """Read a ``{"format", "version", "sha256", "body"}`` file; any defect is LedgerCorrupted."""
    def bad(problem: str) -> LedgerCorrupted:
        return LedgerCorrupted(f"{path}: {what} {problem}. The site refuses to train. {fix}")

    try:
        raw = path.read_bytes()
    except OSError as err:
        raise bad(f"cannot be read ({err.strerror})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"is not valid JSON (truncated or overwritten? {err})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise bad(f"is not a {what} (format field {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != VERSION:
        raise bad(f"has format version {doc.get('version')!r}; this lsemvae reads version {VERSION}")
    body = doc.get("body")
    if not isinstance(body, dict):
        raise bad("has no body")
    try:
        actual = _sha256(body)
    except ValueError as err:
        raise bad(f"holds a non-finite number ({err})") from None
    if doc.get("sha256") != actual:
        raise bad("fails its checksum (the body was changed after it was written)")
    return body


class PrivacyLedger:
    """One site's privacy spending. Open with :meth:`open_or_create` (training) or :meth:`open` (reading)."""

    def __init__(self, path: Path, body: dict, anchor_dir: Path):
        self.path = path
        self._body = body
        self.anchor_dir = anchor_dir

    # ----------------------------------------------------------------- reading
    @property
    def site(self) -> str:
        return self._body["site"]

    @property
    def delta(self) -> float:
        return self._body["delta"]

    @property
    def max_epsilon(self) -> float:
        return self._body["max_epsilon"]

    @property
    def accountant(self) -> str:
        return self._body["accountant"]

    @property
    def resets(self) -> int:
        return self._body["resets"]

    @property
    def history(self) -> History:
        """The Opacus accountant history [(noise_multiplier, sample_rate, steps)] (a copy)."""
        return _normalise(self._body["history"])

    @property
    def events(self) -> list[dict]:
        return [dict(e) for e in self._body["events"]]

    @property
    def total_steps(self) -> int:
        return _total_steps(self.history)

    def epsilon(self) -> float:
        """Cumulative epsilon at the ledger's delta, recomputed from the full history."""
        return epsilon_of(self.history, delta=self.delta, accountant=self.accountant)

    def projected_epsilon(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after one more round of ``steps`` steps at (noise_multiplier, sample_rate)."""
        nxt = _append(self.history, (float(noise_multiplier), float(sample_rate), int(steps)))
        return epsilon_of(nxt, delta=self.delta, accountant=self.accountant)

    def check_can_train(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Projected epsilon if the round fits the budget; else :class:`BudgetExhausted` (do not train)."""
        projected = self.projected_epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        if projected > self.max_epsilon:
            current = self.epsilon()
            raise BudgetExhausted(
                f"site '{self.site}': privacy budget would be exceeded, refusing to train. "
                f"Spent epsilon {current:.3f}; after this round ({steps} steps, noise multiplier "
                f"{noise_multiplier:.4g}, sample rate {sample_rate:.4g}) it would be {projected:.3f} > budget "
                f"{self.max_epsilon:g} (delta={self.delta:g}, accountant {self.accountant}, ledger {self.path}). "
                "This site's data has given what its budget allows: leave it out of further rounds. "
                "Only if the data custodian approves a larger budget, raise it with `lsemvae privacy set-budget` "
                "(logged); fewer local steps or a larger noise multiplier make a round cheaper."
            )
        return projected

    def summary(self) -> dict:
        eps = self.epsilon()
        return {
            "site": self.site,
            "ledger": str(self.path),
            "accountant": self.accountant,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "epsilon": eps,
            "remaining": max(self.max_epsilon - eps, 0.0),
            "total_steps": self.total_steps,
            "rounds": sum(1 for e in self._body["events"] if e["kind"] == "round"),
            "resets": self.resets,
            "history": [list(h) for h in self.history],
            "events": self.events,
        }

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path, *, site: str | None = None, anchor_dir: str | Path | None = None) -> "PrivacyLedger":
        """Open an existing ledger, verified against its anchor. Writes nothing (safe for preflight and ``show``)."""
        if site is not None:
            _check_site(site)
        path = Path(path).expanduser().absolute()
        anchor_dir = Path(anchor_dir).expanduser() if anchor_dir else default_anchor_dir()
        if not path.exists():
            anchor = _read_anchor(anchor_dir, site) if site else None
            if anchor is not None:
                raise LedgerMissing(_missing_message(path, site, anchor, anchor_dir))
            raise LedgerError(f"{path}: no privacy ledger here" + (f" for site '{site}'" if site else ""))
        ledger = cls._load(path, site, anchor_dir)
        ledger._check_anchor()
        return ledger

    @classmethod
    def open_unanchored(cls, path: str | Path, *, site: str, anchor_dir: str | Path) -> "PrivacyLedger":
        """Open a ledger without its anchor check: only for ``lsemvae privacy re-anchor``."""
        _check_site(site)
        return cls._load(Path(path).expanduser().absolute(), site, Path(anchor_dir).expanduser())

    @classmethod
    def _load(cls, path: Path, site: str | None, anchor_dir: Path) -> "PrivacyLedger":
        ledger = cls(path, _validate_body(path, _read_checked(path, FORMAT, "privacy ledger", _fix(path, site))), anchor_dir)
        if site is not None and ledger.site != site:
            raise LedgerMismatch(f"{path}: this ledger belongs to site '{ledger.site}', not '{site}': check state_dir")
        return ledger

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        *,
        site: str,
        delta: float,
        max_epsilon: float,
        accountant: str = "rdp",
        anchor_dir: str | Path | None = None,
        patients: list[str] | None = None,
    ) -> "PrivacyLedger":
        """The site's ledger; created empty only if neither the file nor its anchor exists.

        An existing ledger must have the same delta and accountant. A lower ``max_epsilon`` than the
        ledger's is applied and logged (tightening is always safe); a higher one is refused.
        ``patients``: keyed hashes of the dataset's patients. A new ledger is refused when any anchor in
        ``anchor_dir`` already holds one of them; an existing one adds them to its anchor.
        """
        _check_site(site)
        check_accountant(accountant)
        if not (0 < delta < 1) or not (math.isfinite(max_epsilon) and max_epsilon > 0):
            raise LedgerError(f"site '{site}': need 0 < delta < 1 and max_epsilon > 0 (got delta={delta}, max_epsilon={max_epsilon})")
        path = Path(path).expanduser().absolute()
        anchor_dir = Path(anchor_dir).expanduser() if anchor_dir else default_anchor_dir()
        with sidecar_lock(path):
            if not path.exists():
                anchor = _read_anchor(anchor_dir, site)
                if anchor is not None:
                    raise LedgerMissing(_missing_message(path, site, anchor, anchor_dir))
                _refuse_patients_spent_elsewhere(anchor_dir, site, patients or [])
                body = _new_body(site, delta=delta, max_epsilon=max_epsilon, accountant=accountant, resets=0)
                body["events"].append({"kind": "created", "time": _now(), "user": _user()})
                ledger = cls(path, body, anchor_dir)
                ledger._persist(patients=patients)
                log.info("privacy ledger created for site '%s' at %s (anchor in %s)", site, path, anchor_dir)
                return ledger
        ledger = cls.open(path, site=site, anchor_dir=anchor_dir)
        ledger._check_anchor(repair=True, patients=patients)
        if ledger.delta != delta or ledger.accountant != accountant:
            raise LedgerMismatch(
                f"{path}: ledger of site '{site}' is kept at delta={ledger.delta:g} with the {ledger.accountant} "
                f"accountant, but delta={delta:g}, accountant {accountant} was asked for: epsilons at different "
                "delta or accountant do not add up. Set them back in the site config."
            )
        if max_epsilon < ledger.max_epsilon:
            ledger.set_budget(max_epsilon=max_epsilon, reason="site config lowered the budget")
        elif max_epsilon > ledger.max_epsilon:
            raise LedgerMismatch(
                f"{path}: site config asks for budget {max_epsilon:g} but site '{site}' has budget "
                f"{ledger.max_epsilon:g} on record. Raising a budget is the data custodian's decision: "
                f"`lsemvae privacy set-budget --ledger {path} --site {site} --max-epsilon {max_epsilon:g} "
                "--confirm '<reason>'`, or set max-epsilon back in the site config."
            )
        return ledger

    # ----------------------------------------------------------------- writing
    def record_round(self, *, round_number: int, run_id: str | int, history: History) -> float:
        """Record a round: ``history`` is the accountant's full history after training
        (``session.history`` of an engine started from ``self.history``). Persists; returns epsilon."""
        increment = history_increment(self.history, history)
        with sidecar_lock(self.path):
            self._reload()  # another process of this site may have recorded since we opened
            new = self.history
            for entry in increment:
                new = _append(new, entry)
            steps = _total_steps(increment)
            eps = epsilon_of(new, delta=self.delta, accountant=self.accountant)
            self._body["history"] = [list(h) for h in new]
            self._body["events"].append(
                {
                    "kind": "round",
                    "round": int(round_number),
                    "run_id": str(run_id),
                    "steps": steps,
                    "entries": [list(h) for h in increment],
                    "epsilon": eps,
                    "time": _now(),
                }
            )
            self._persist()
        log.info("site '%s' round %s (run %s): %d steps, epsilon now %.4f (delta=%g, budget %g)",
                 self.site, round_number, run_id, steps, eps, self.delta, self.max_epsilon)
        return eps

    def set_budget(self, *, max_epsilon: float, reason: str) -> None:
        """Change the budget (logged). Lowering is routine; raising needs the custodian's reason."""
        _check_reason(reason)
        if not (math.isfinite(max_epsilon) and max_epsilon > 0):
            raise LedgerError(f"max_epsilon must be a positive number (got {max_epsilon})")
        with sidecar_lock(self.path):
            self._reload()
            old = self.max_epsilon
            self._body["max_epsilon"] = float(max_epsilon)
            self._body["events"].append(
                {"kind": "budget", "from": old, "to": float(max_epsilon), "reason": reason, "time": _now(), "user": _user()}
            )
            self._persist()
        log.warning("site '%s': privacy budget changed %g -> %g (%s)", self.site, old, max_epsilon, reason)

    def re_anchor(self, *, reason: str) -> None:
        """Operator command: write a new anchor for this ledger as it is (its anchor was lost); logged."""
        _check_reason(reason)
        with sidecar_lock(self.path):
            self._reload(check_anchor=False)
            previous = _read_anchor(self.anchor_dir, self.site, strict=False)
            self._body["events"].append({"kind": "re-anchored", "reason": reason, "time": _now(), "user": _user(),
                                         "epsilon": self.epsilon(), "previous_anchor": previous is not None})
            self._persist()
        log.warning("site '%s': privacy ledger re-anchored by %s (%s) at epsilon %.4f", self.site, _user(), reason,
                    self.epsilon())

    @classmethod
    def reset(
        cls,
        path: str | Path,
        *,
        site: str,
        reason: str,
        anchor_dir: str | Path | None = None,
        delta: float | None = None,
        max_epsilon: float | None = None,
        accountant: str | None = None,
    ) -> "PrivacyLedger":
        """Operator command: start a new, empty ledger for ``site``. The only way spending goes back to 0.

        The old file (readable or not) is kept beside it as ``<name>.replaced-<time>``; the reset
        event records the reason, the user, and the previous epsilon and history when known.
        Settings not given are taken from the old ledger, else from the anchor.
        """
        _check_site(site)
        _check_reason(reason)
        path = Path(path).expanduser().absolute()
        anchor_dir = Path(anchor_dir).expanduser() if anchor_dir else default_anchor_dir()
        with sidecar_lock(path):
            previous: dict[str, Any] = {}
            old_body = None
            if path.exists():
                try:
                    old_body = _validate_body(path, _read_checked(path, FORMAT, "privacy ledger", ""))
                    previous["epsilon"] = epsilon_of(_normalise(old_body["history"]), delta=old_body["delta"],
                                                     accountant=old_body["accountant"])
                    previous["history"] = old_body["history"]
                except LedgerError as err:
                    previous["unreadable"] = str(err)
                kept = path.with_name(f"{path.name}.replaced-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}")
                os.replace(path, kept)
                previous["kept_as"] = str(kept)
            anchor = _read_anchor(anchor_dir, site, strict=False)
            if anchor is not None:
                previous.setdefault("epsilon", anchor.get("epsilon"))
            source = old_body or anchor or {}
            settings = {
                "delta": delta if delta is not None else source.get("delta"),
                "max_epsilon": max_epsilon if max_epsilon is not None else source.get("max_epsilon"),
                "accountant": accountant if accountant is not None else source.get("accountant", "rdp"),
            }
            if settings["delta"] is None or settings["max_epsilon"] is None:
                raise LedgerError(
                    f"{path}: no readable ledger or anchor to take delta and budget from: give --delta and --max-epsilon"
                )
            check_accountant(settings["accountant"])
            resets = 1 + max(int((old_body or {}).get("resets", 0)), int((anchor or {}).get("resets", 0)))
            body = _new_body(site, resets=resets, **settings)
            body["events"].append({"kind": "reset", "reason": reason, "previous": previous, "time": _now(), "user": _user()})
            ledger = cls(path, body, anchor_dir)
            ledger._persist()
        log.warning("site '%s': privacy ledger RESET by %s (%s); previous epsilon %s; new ledger %s",
                    site, _user(), reason, previous.get("epsilon"), path)
        return ledger

    # ----------------------------------------------------------------- internals
    def _reload(self, *, check_anchor: bool = True) -> None:
        fresh = PrivacyLedger._load(self.path, self.site, self.anchor_dir)
        if check_anchor:
            fresh._check_anchor()
        self._body = fresh._body

    def _anchor_record(self, patients: list[str] | None = None) -> dict:
        history = self.history
        known = (_read_anchor(self.anchor_dir, self.site, strict=False) or {}).get("patients", [])
        return {
            "site": self.site,
            "ledger": str(self.path),
            "resets": self.resets,
            "total_steps": _total_steps(history),
            "history": [list(h) for h in history],
            "history_sha256": _sha256([list(h) for h in history]),
            "epsilon": epsilon_of(history, delta=self.delta, accountant=self.accountant),
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "accountant": self.accountant,
            "patients": sorted(set(known) | set(patients or [])),
            "time": _now(),
        }

    def _persist(self, *, patients: list[str] | None = None) -> None:
        # Ledger first, anchor second: a crash in between leaves the ledger ahead, which open() accepts.
        try:
            atomic_write_json(self.path, {"format": FORMAT, "version": VERSION, "sha256": _sha256(self._body), "body": self._body})
        except OSError as err:
            raise LedgerWriteError(
                f"{self.path}: privacy ledger could not be written ({err}); the previous ledger is unchanged. "
                "Do not send this round's update: its spending is not on record. Fix the disk or permissions."
            ) from err
        self._write_anchor_only(patients)

    def _write_anchor_only(self, patients: list[str] | None = None) -> None:
        anchor = self._anchor_record(patients)
        path = _anchor_path(self.anchor_dir, self.site)
        try:
            atomic_write_json(path, {"format": ANCHOR_FORMAT, "version": VERSION, "sha256": _sha256(anchor), "body": anchor})
        except OSError as err:
            raise LedgerWriteError(
                f"{path}: privacy ledger anchor could not be written ({err}). Make the directory writable or choose "
                "another anchor_dir in the site config (outside the site's state directory)."
            ) from err

    def _check_anchor(self, *, repair: bool = False, patients: list[str] | None = None) -> None:
        """Refuse a ledger its anchor does not vouch for; with ``repair``, bring a lagging anchor up to date."""
        anchor = _read_anchor(self.anchor_dir, self.site)
        if anchor is None:
            if self.total_steps:
                raise AnchorMissing(
                    f"{self.path}: ledger of site '{self.site}' has spent epsilon {self.epsilon():.3f} but its anchor "
                    f"{_anchor_path(self.anchor_dir, self.site)} is missing: the ledger could be an older copy, so the "
                    "site refuses to train. Put the anchor back (check anchor_dir in the site config), or, with the "
                    "data custodian's approval, run "
                    f"`{REANCHOR_COMMAND.format(path=self.path, site=self.site, anchor_dir=self.anchor_dir)}` (logged)."
                )
            if repair:
                self._write_anchor_only(patients)
            return
        problem = self._behind(anchor)
        if problem:
            raise LedgerCorrupted(
                f"{self.path}: ledger of site '{self.site}' is not vouched for by its anchor "
                f"{_anchor_path(self.anchor_dir, self.site)}: {problem} (anchor: {anchor['total_steps']} steps, epsilon "
                f"{anchor['epsilon']:.3f}, {anchor['resets']} resets). Was an older copy restored or the file edited? "
                f"The site refuses to train. Restore the newest ledger, or run "
                f"`{RESET_COMMAND.format(path=self.path, site=self.site)}`."
            )
        new_patients = set(patients or []) - set(anchor.get("patients", []))
        same = (anchor["ledger"], anchor["total_steps"], anchor["resets"], anchor["max_epsilon"]) == (
            str(self.path), self.total_steps, self.resets, self.max_epsilon)
        if repair and (not same or new_patients):
            self._write_anchor_only(patients)  # ledger ahead (crash between the two writes), moved, or new patients

    def _behind(self, anchor: dict) -> str | None:
        """Why the anchor does not vouch for this ledger (None: it does)."""
        if self.resets < anchor["resets"]:
            return f"it is behind its anchor ({self.resets} resets against {anchor['resets']}: an older copy?)"
        if self.resets > anchor["resets"]:
            return None   # reset since, and the anchor not yet written (a crash between the two writes)
        if self.total_steps < anchor["total_steps"]:
            return f"it is behind its anchor ({self.total_steps} steps against {anchor['total_steps']}: an older copy?)"
        if "history" in anchor:
            try:
                history_increment(_normalise(anchor["history"]), self.history)
            except LedgerError:
                return "its history does not extend the anchored history (edited?)"
        elif self.total_steps == anchor["total_steps"] and _sha256([list(h) for h in self.history]) != anchor["history_sha256"]:
            return "its history differs from the anchored one (edited?)"
        if self.epsilon() < anchor["epsilon"] - EPSILON_SLACK:
            return f"its epsilon {self.epsilon():.4f} is below the anchored epsilon"
        return None


def _refuse_patients_spent_elsewhere(anchor_dir: Path, site: str, patients: list[str]) -> None:
    """A new ledger whose patients already spent budget under another site's anchor is refused."""
    if not patients or not anchor_dir.is_dir():
        return
    mine = set(patients)
    for path in sorted(anchor_dir.glob("*.json")):
        other = _read_anchor(anchor_dir, path.stem, strict=False)
        if other is None or other.get("site") == site:
            continue
        shared = mine & set(other.get("patients", []))
        if shared:
            raise DatasetSpentElsewhere(
                f"site '{site}': {len(shared)} of this dataset's {len(mine)} patients already spent privacy budget as "
                f"site '{other['site']}' (epsilon {other['epsilon']:.3f}, ledger {other['ledger']}). The budget belongs "
                f"to the patients, not to the site's name: keep the name '{other['site']}' and its ledger, or, if the "
                f"data custodian approves, reset that ledger with `{RESET_COMMAND.format(path=other['ledger'], site=other['site'])}`."
            )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _check_site(site: str) -> None:
    if not isinstance(site, str) or not SITE_NAME.match(site):
        raise LedgerError(f"site name {site!r}: use letters, digits, '_', '.' or '-' (at most 64, no leading punctuation)")


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or len(reason.strip()) < 5:
        raise LedgerError("a reason is required (--confirm '<why>', at least 5 characters); it is kept in the ledger")


def _new_body(site: str, *, delta: float, max_epsilon: float, accountant: str, resets: int) -> dict:
    return {"site": site, "delta": float(delta), "max_epsilon": float(max_epsilon), "accountant": accountant,
            "resets": int(resets), "history": [], "events": []}


def _fix(path: Path, site: str | None) -> str:
    return (f"Restore the file from a backup, or, if its spending is known and accepted as lost, run "
            f"`{RESET_COMMAND.format(path=path, site=site or '<site>')}`.")


def _validate_body(path: Path, body: dict) -> dict:
    """Structure and internal consistency: the history's steps equal the round events' since the last reset."""
    def bad(problem: str) -> LedgerCorrupted:
        return LedgerCorrupted(f"{path}: privacy ledger {problem}. The site refuses to train. {_fix(path, body.get('site'))}")

    try:
        _check_site(body["site"])
        check_accountant(body["accountant"])
        float(body["delta"]), float(body["max_epsilon"]), int(body["resets"])
        history = _normalise(body["history"])
        events = list(body["events"])
        kinds = [e["kind"] for e in events]
    except (KeyError, TypeError, ValueError, LSEMVAEError) as err:
        raise bad(f"has a missing or malformed field ({type(err).__name__}: {err})") from None
    if any(s <= 0 or not (0 < q <= 1) or n < 0 for s, q, n in history):
        raise bad("history holds an impossible entry")
    last_reset = max((i for i, k in enumerate(kinds) if k == "reset"), default=-1)
    logged = sum(int(e.get("steps", 0)) for e in events[last_reset + 1 :] if e["kind"] == "round")
    if logged != _total_steps(history):
        raise bad(f"history holds {_total_steps(history)} steps but its round events log {logged}")
    return body


def _anchor_path(anchor_dir: Path, site: str) -> Path:
    return anchor_dir / f"{site}.json"


def _read_anchor(anchor_dir: Path, site: str, *, strict: bool = True) -> dict | None:
    path = _anchor_path(anchor_dir, site)
    if not path.exists():
        return None
    try:
        body = _read_checked(path, ANCHOR_FORMAT, "privacy ledger anchor",
                             f"Run `{RESET_COMMAND.format(path='<ledger>', site=site)}` after checking the ledger.")
        if body.get("site") != site:
            raise LedgerCorrupted(f"{path}: anchor names site {body.get('site')!r}, expected '{site}'")
        return body
    except LedgerCorrupted:
        if strict:
            raise
        return None


def _missing_message(path: Path, site: str, anchor: dict, anchor_dir: Path) -> str:
    where = "" if anchor.get("ledger") == str(path) else f" It was last kept at {anchor.get('ledger')}: check dp-ledger-dir."
    return (
        f"{path}: privacy ledger of site '{site}' is missing, but its anchor {_anchor_path(anchor_dir, site)} shows "
        f"epsilon {anchor.get('epsilon', float('nan')):.3f} already spent ({anchor.get('total_steps')} steps). "
        f"Deleting the ledger does not reset the budget; the site refuses to train.{where} Restore the file, or, "
        f"with the data custodian's approval, run `{RESET_COMMAND.format(path=path, site=site)}` (logged)."
    )
