"""Losing a site's local state never resets its privacy budget.

The real ClientApp trains a round, then the site's whole state_dir (ledger, cache, logs) is deleted,
as a re-install or a wiped disk would. The next training request is refused (fails closed) with a
message naming the missing ledger and the operator command that may reset it; evaluation refuses
too rather than report epsilon 0. A corrupted (truncated) ledger is refused the same way.
"""

from __future__ import annotations

import json
import shutil

import pytest
from lsemvae.federation import keys as K
from lsemvae.federation.messages import TrainReply, from_content
from lsemvae.site import load_site_config
from tests.federation.test_client_messages import call, task_identity, world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


def _job(n: int) -> dict:
    return {"job_id": f"{n:016x}"}


def test_deleted_state_dir_does_not_reset_the_budget(world):
    tmp, names, fed, state = world
    site = names[0]
    cfg = load_site_config(tmp / "sites" / f"{site}.toml")
    first = call(world, site, K.TRAIN, 1, update=_job(31))
    assert not first.has_error(), first.error.reason
    spent = from_content(first.content, TrainReply, sender="site")[0].epsilon
    assert spent > 0 and cfg.ledger_path.is_file()

    shutil.rmtree(cfg.state_dir)                                        # the site's disk state is gone
    refused = call(world, site, K.TRAIN, 2, update=_job(32))
    assert refused.has_error() and refused.error.code == K.ERR_SITE_SETUP
    assert str(cfg.ledger_path) not in refused.error.reason             # the server gets the category only...
    log = (cfg.state_dir / "site.log").read_text()                      # ...the operator the file and the command
    assert str(cfg.ledger_path) in log and "lsemvae privacy" in log
    assert not cfg.ledger_path.exists()                                 # nothing recreated behind the operator's back
    ev = call(world, site, K.EVALUATE, 2, update=_job(32))
    assert ev.has_error() and ev.error.code == K.ERR_SITE_SETUP         # no "epsilon 0" report either


def test_truncated_ledger_refuses_to_train(world):
    tmp, names, fed, state = world
    site = names[1]
    cfg = load_site_config(tmp / "sites" / f"{site}.toml")
    assert not call(world, site, K.TRAIN, 1, update=_job(41)).has_error()
    raw = cfg.ledger_path.read_bytes()
    json.loads(raw)                                                     # a valid ledger before
    cfg.ledger_path.write_bytes(raw[: len(raw) // 2])
    refused = call(world, site, K.TRAIN, 2, update=_job(42))
    assert refused.has_error() and refused.error.code == K.ERR_SITE_SETUP
    assert str(cfg.ledger_path) in (cfg.state_dir / "site.log").read_text()
    assert cfg.ledger_path.read_bytes() == raw[: len(raw) // 2]         # left as found, for the operator
