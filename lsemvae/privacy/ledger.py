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
Deleting the state directory must not reset the budget. Each write also updates a small anchor
``<anchor_dir>/<site>.json`` *outside* the state directory: site, ledger path, number of resets,
total steps, epsilon, sha256 of the history, delta, budget and accountant, with its own checksum.
``anchor_dir`` is an argument, else ``$LSEMVAE_LEDGER_ANCHOR_DIR``, else ``~/.lsemvae/ledger-anchors``.

* Ledger present, anchor absent: the ledger is trusted and, when opened for training
  (:meth:`PrivacyLedger.open_or_create`), the anchor is rebuilt (new machine or cleaned home
  directory); logged. :meth:`PrivacyLedger.open` (preflight, ``show``) writes nothing.
* Ledger absent, anchor present: :class:`LedgerMissing`; the operator either restores the file
  or runs ``lsemvae privacy reset`` (explicit, with a reason, logged in the new ledger).
* Ledger present but behind its anchor (fewer resets, fewer steps, or same steps and another
  history): :class:`LedgerCorrupted` (a restored old backup would otherwise undo spending).
  The ledger is written before its anchor, so a crash between the two leaves the ledger *ahead*,
  which is accepted and the anchor caught up.

What the anchor does not do: it is a plain file of the same user, so someone who deletes both
files, or edits a file and recomputes its checksum, defeats it. Checksums catch accidents (bad
disks, truncation, hand edits); a site's operator who wants to cheat its own budget is outside this
threat model. Put the anchor directory on a different volume than the state directory when the
state directory is a container volume.
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
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lsemvae.errors import LSEMVAEError
from lsemvae.privacy.dp import BudgetExhausted, History, check_accountant, epsilon_of

log = logging.getLogger(__name__)

FORMAT = "lsemvae-privacy-ledger"
ANCHOR_FORMAT = "lsemvae-privacy-ledger-anchor"
VERSION = 1
ANCHOR_DIR_ENV = "LSEMVAE_LEDGER_ANCHOR_DIR"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESET_COMMAND = "lsemvae privacy reset --ledger {path} --site {site} --confirm '<reason>'"


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


def default_anchor_dir() -> Path:
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def sidecar_lock(path: Path):
    """Exclusive ``flock`` on ``.<name>.lock`` beside ``path`` (a sidecar: a ledger itself is replaced on write).
    Held across processes; a process that dies releases it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as fh:
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

    def remaining(self) -> float:
        return max(self.max_epsilon - self.epsilon(), 0.0)

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
        ledger = cls(path, _validate_body(path, _read_checked(path, FORMAT, "privacy ledger", _fix(path, site))), anchor_dir)
        if site is not None and ledger.site != site:
            raise LedgerMismatch(f"{path}: this ledger belongs to site '{ledger.site}', not '{site}': check dp-ledger-dir")
        ledger._check_anchor()
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
    ) -> "PrivacyLedger":
        """The site's ledger; created empty only if neither the file nor its anchor exists.

        An existing ledger must have the same delta and accountant. A lower ``max_epsilon`` than the
        ledger's is applied and logged (tightening is always safe); a higher one is refused.
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
                body = _new_body(site, delta=delta, max_epsilon=max_epsilon, accountant=accountant, resets=0)
                body["events"].append({"kind": "created", "time": _now(), "user": _user()})
                ledger = cls(path, body, anchor_dir)
                ledger._persist()
                log.info("privacy ledger created for site '%s' at %s (anchor in %s)", site, path, anchor_dir)
                return ledger
        ledger = cls.open(path, site=site, anchor_dir=anchor_dir)
        ledger._check_anchor(repair=True)
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
    def _reload(self) -> None:
        fresh = PrivacyLedger.open(self.path, site=self.site, anchor_dir=self.anchor_dir)
        self._body = fresh._body

    def _anchor_record(self) -> dict:
        history = self.history
        return {
            "site": self.site,
            "ledger": str(self.path),
            "resets": self.resets,
            "total_steps": _total_steps(history),
            "history_sha256": _sha256([list(h) for h in history]),
            "epsilon": epsilon_of(history, delta=self.delta, accountant=self.accountant),
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "accountant": self.accountant,
            "time": _now(),
        }

    def _persist(self) -> None:
        # Ledger first, anchor second: a crash in between leaves the ledger ahead, which open() accepts.
        try:
            atomic_write_json(self.path, {"format": FORMAT, "version": VERSION, "sha256": _sha256(self._body), "body": self._body})
        except OSError as err:
            raise LedgerWriteError(
                f"{self.path}: privacy ledger could not be written ({err}); the previous ledger is unchanged. "
                "Do not send this round's update: its spending is not on record. Fix the disk or permissions."
            ) from err
        self._write_anchor_only()

    def _write_anchor_only(self) -> None:
        anchor = self._anchor_record()
        path = _anchor_path(self.anchor_dir, self.site)
        try:
            atomic_write_json(path, {"format": ANCHOR_FORMAT, "version": VERSION, "sha256": _sha256(anchor), "body": anchor})
        except OSError as err:
            raise LedgerWriteError(
                f"{path}: privacy ledger anchor could not be written ({err}). Make the directory writable or choose "
                f"another with ${ANCHOR_DIR_ENV} (outside the site's state directory)."
            ) from err

    def _check_anchor(self, *, repair: bool = False) -> None:
        """Refuse a ledger behind its anchor; with ``repair``, bring a missing or lagging anchor up to date."""
        anchor = _read_anchor(self.anchor_dir, self.site)
        if anchor is None:
            log.warning("site '%s': ledger anchor missing in %s%s", self.site, self.anchor_dir,
                        f"; rebuilt from {self.path}" if repair else "")
            if repair:
                self._write_anchor_only()
            return
        steps = self.total_steps
        behind = (
            self.resets < anchor["resets"]
            or (self.resets == anchor["resets"] and steps < anchor["total_steps"])
            or (self.resets == anchor["resets"] and steps == anchor["total_steps"]
                and _sha256([list(h) for h in self.history]) != anchor["history_sha256"])
        )
        if behind:
            raise LedgerCorrupted(
                f"{self.path}: ledger of site '{self.site}' is behind its anchor {_anchor_path(self.anchor_dir, self.site)} "
                f"(ledger: {steps} steps, {self.resets} resets; anchor: {anchor['total_steps']} steps, epsilon "
                f"{anchor['epsilon']:.3f}, {anchor['resets']} resets). Was an older copy restored? The site refuses "
                f"to train. Restore the newest ledger, or run `{RESET_COMMAND.format(path=self.path, site=self.site)}`."
            )
        same = (anchor["ledger"], anchor["total_steps"], anchor["resets"], anchor["max_epsilon"]) == (
            str(self.path), steps, self.resets, self.max_epsilon)
        if repair and not same:
            self._write_anchor_only()  # ledger ahead (crash between the two writes) or moved: catch up



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
