"""The site's record of what left it: one JSON line per reply in ``<state_dir>/outgoing-messages.jsonl``.

A data custodian can read exactly what the site sent: for arrays their names, shapes, dtypes and
bytes (the values are model weights); metric and config records in full (they are aggregates).
The federation tests read this file to check that nothing per-record ever leaves a site, and the
benchmarks read it for bytes sent per round.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

log = logging.getLogger("lsemvae.client")


def summarise(msg: Message) -> dict[str, Any]:
    """A JSON-ready description of an outgoing message (no array values)."""
    row: dict[str, Any] = {"time": time.time(), "run_id": int(msg.metadata.run_id),
                           "message_type": msg.metadata.message_type, "group_id": msg.metadata.group_id}
    if msg.has_error():
        row["error"] = {"code": int(msg.error.code), "reason": msg.error.reason}
        return row
    content = msg.content
    arrays, total = {}, 0
    for rec_name, rec in content.array_records.items():
        for key, arr in rec.items():
            n = len(arr.data)
            arrays[f"{rec_name}/{key}"] = {"shape": list(arr.shape), "dtype": arr.dtype, "bytes": n}
            total += n
    row["arrays"] = arrays
    row["array_bytes"] = total
    row["metrics"] = {name: dict(rec) for name, rec in content.metric_records.items()}
    row["configs"] = {name: {k: (v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in rec.items()}
                      for name, rec in content.config_records.items()}
    return row


def append_outgoing(path: Path, msg: Message) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(summarise(msg), default=str) + "\n")


def outgoing_log_mod(msg: Message, context: Context, call_next) -> Message:
    """ClientApp mod: run the handler, then log its reply before it leaves the site."""
    reply = call_next(msg, context)
    try:
        from client.site_runtime import resolve_site

        site = resolve_site(dict(context.node_config), dict(context.run_config))
        append_outgoing(site.outgoing_log, reply)
    except Exception as err:  # the log must never block a reply; say why it is missing
        log.warning("outgoing-message log not written: %s", err)
    return reply
