"""Names on the wire between ServerApp and ClientApp, and the error codes a site answers with, named once.

The content of every message is a typed model (:mod:`lsemvae.federation.messages`); these are only
the names of the Flower records that carry it.
"""

from __future__ import annotations

# Message types (Flower dispatches @app.train / @app.evaluate / @app.query on these).
TRAIN = "train"
EVALUATE = "evaluate"
QUERY = "query"

# RecordDict entries of every message.
BODY = "body"          # ConfigRecord {JSON: the typed instruction or reply as JSON}
JSON = "json"
ARRAYS = "arrays"      # ArrayRecord {PACKED: all model arrays in one uint8 buffer (codec.pack)}
PACKED = "packed"

# Error-reply codes (Message(Error(code, reason))). A site sends the code and its category only;
# the details (which may name records or local paths) stay in the site's own log.
ERR_INTERNAL = 4000
ERR_BUDGET = 4001            # next round would exceed the site's privacy budget
ERR_SITE_SETUP = 4002        # site config / data problem at the site
ERR_NON_DP_REFUSED = 4003    # server asked for non-DP training, site does not allow it
ERR_BAD_MESSAGE = 4004       # malformed or out-of-bounds server message
ERR_NO_BASE = 4005           # the message relies on frozen encoders the site does not hold: send them again
ERR_NOISE_CEILING = 4006     # the noise the round needs exceeds the site's ceiling: it would train on noise
ERR_EVAL_REFUSED = 4007      # evaluation refused by the site's policy (disabled, or too few records)
ERR_AUDIT = 4008             # the site could not log the reply it was about to send: nothing was sent

CATEGORIES = {
    ERR_INTERNAL: "internal error at the site (details in the site's log)",
    ERR_BUDGET: "privacy budget would be exceeded",
    ERR_SITE_SETUP: "site data or configuration problem (details in the site's log)",
    ERR_NON_DP_REFUSED: "training without differential privacy refused by the site",
    ERR_BAD_MESSAGE: "malformed or out-of-bounds server message",
    ERR_NO_BASE: "the site holds no copy of the frozen encoders: send them again",
    ERR_NOISE_CEILING: "no useful update possible: the noise the round needs exceeds the site's ceiling",
    ERR_EVAL_REFUSED: "evaluation refused by the site's policy",
    ERR_AUDIT: "the site could not record its reply, so it sent nothing (details in the site's log)",
}
