"""Flower ClientApp: an adapter between Flower messages and a site's round in the library.

The round itself is :mod:`lsemvae.federation.site_round` (query, train, evaluate); this module
resolves which site this SuperNode is, hands it the message content, and turns the typed reply or
the site's refusal into a Flower message.

A refusal goes to the server as an error code and its category only (lsemvae.federation.keys): the
detail, which may name records or local paths, stays in the site's log (``<state_dir>/site.log``).
Every reply, error replies included, is recorded in ``<state_dir>/outgoing-messages.jsonl``
(:mod:`client.audit`) **before** it is returned; if that record cannot be written, the site sends
nothing but an error (fail closed).
"""

from __future__ import annotations

import logging
import traceback

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from client.audit import record_outgoing, site_log
from lsemvae.errors import LSEMVAEError
from lsemvae.federation import keys as K

log = logging.getLogger("lsemvae.site")

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    return answer(K.QUERY, msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return answer(K.TRAIN, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return answer(K.EVALUATE, msg, context)


def answer(kind: str, msg: Message, context: Context) -> Message:
    """The site's reply to one message, recorded before it leaves; never a traceback to the server."""
    from lsemvae.federation.runtime import resolve_site
    from lsemvae.federation.site_round import SiteRefusal, handle

    try:
        site = resolve_site(dict(context.node_config), dict(context.run_config))
    except Exception as err:   # no site config: nowhere to record, and the error carries its category only
        return _refuse(msg, kind, K.ERR_SITE_SETUP, f"{type(err).__name__}: {err}")
    with site_log(site):
        try:
            reply = Message(handle(kind, site, msg.content), reply_to=msg)
        except SiteRefusal as err:
            reply = _refuse(msg, kind, err.code, str(err), err.reason)
        except LSEMVAEError as err:   # site config or data: the detail stays here
            reply = _refuse(msg, kind, K.ERR_SITE_SETUP, str(err))
        except Exception as err:  # a bug: keep the traceback in the site's log, send only the category
            log.error("unexpected failure:\n%s", traceback.format_exc())
            reply = _refuse(msg, kind, K.ERR_INTERNAL, f"{type(err).__name__}: {err}")
        return record_outgoing(site, reply, msg)


def _refuse(msg: Message, kind: str, code: int, detail: str, reason: str | None = None) -> Message:
    log.error("refusing %s (code %d): %s", kind, code, detail)
    return Message(Error(code=code, reason=reason or K.CATEGORIES[code]), reply_to=msg)
