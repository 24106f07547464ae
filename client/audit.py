"""The site's record of what left it, and its own log.

* ``<state_dir>/outgoing-messages.jsonl``: one JSON line per reply, written before the reply is
  returned. A data custodian reads exactly what the site sent: the message body in full (all
  aggregates: lsemvae.federation.messages declares every field) and, for the model arrays, their
  names, shapes, dtype and bytes (the values are DP-trained weights). Error replies are recorded
  with their code and the reason as sent. **Fail closed**: if the line cannot be written, the reply
  is replaced by an error that carries nothing (code 4008).
* ``<state_dir>/site.log``: the site's log with timestamps (one line per round: noise, epsilon spent
  and left, records used and skipped), also printed on the SuperNode's console.

Both files are private to the site's user (0600).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any, Iterator

from flwr.app import Error, Message

from lsemvae.federation import keys as K
from lsemvae.fileio import append_private, private_dir

log = logging.getLogger("lsemvae.site")


def summarise(msg: Message) -> dict[str, Any]:
    """A JSON-ready description of an outgoing message (no array values)."""
    row: dict[str, Any] = {"time": time.time(), "run_id": int(msg.metadata.run_id),
                           "message_type": msg.metadata.message_type, "group_id": msg.metadata.group_id}
    if msg.has_error():
        row["error"] = {"code": int(msg.error.code), "reason": msg.error.reason}
        return row
    content = msg.content
    row["records"] = {"arrays": sorted(content.array_records), "configs": sorted(content.config_records),
                      "metrics": sorted(content.metric_records)}
    row["body"] = json.loads(content.config_records[K.BODY][K.JSON]) if K.BODY in content.config_records else None
    row["array_bytes"] = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    return row


def record_outgoing(site, reply: Message, msg: Message) -> Message:
    """Record ``reply`` in the site's outgoing-message log, then return it; an error that carries nothing
    if it could not be recorded."""
    try:
        append_private(site.outgoing_log, json.dumps(summarise(reply), default=str) + "\n")
        return reply
    except Exception as err:   # never send what the custodian cannot see
        log.error("outgoing-message log %s not written (%s): the reply is withheld", site.outgoing_log, err)
        return Message(Error(code=K.ERR_AUDIT, reason=K.CATEGORIES[K.ERR_AUDIT]), reply_to=msg)


@contextlib.contextmanager
def site_log(site) -> Iterator[None]:
    """Log the site's work, with timestamps, to ``<state_dir>/site.log`` and the console while a message is handled."""
    logger = logging.getLogger("lsemvae")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        path = private_dir(site.state_dir) / "site.log"
        path.touch(mode=0o600, exist_ok=True)
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    except OSError as err:
        log.warning("site log not written: %s", err)
    level = logger.level
    logger.setLevel(logging.INFO)
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(level)
