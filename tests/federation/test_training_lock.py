"""A site trains one round at a time: a late ClientApp (its round already given up by the server) and
the next round's ClientApp must not both pass the privacy-budget check (client_app.train holds this lock
from the budget check to the ledger record)."""

from __future__ import annotations

import multiprocessing as mp
import time

from lsemvae.federation.runtime import site_training_lock
from lsemvae.site import load_site_config
from tests.federation.helpers import write_sites


def _hold(config_path: str, seconds: float, ready) -> None:
    site = load_site_config(config_path)
    with site_training_lock(site):
        ready.set()
        time.sleep(seconds)


def test_second_training_waits_for_the_first_and_a_dead_holder_frees_the_lock(tmp_path):
    name = write_sites(tmp_path, n_sites=1, records=4)[0]
    path = tmp_path / "sites" / f"{name}.toml"
    site = load_site_config(path)
    ctx = mp.get_context("spawn")   # a separate process, as Flower runs each ClientApp
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), 1.5, ready))
    holder.start()
    assert ready.wait(60)
    t0 = time.monotonic()
    with site_training_lock(site):
        waited = time.monotonic() - t0
    holder.join(10)
    assert waited > 0.5, waited

    ready = ctx.Event()
    killed = ctx.Process(target=_hold, args=(str(path), 600, ready))
    killed.start()
    assert ready.wait(60)
    killed.kill()                     # SIGKILL while holding it: the kernel releases the lock
    killed.join(10)
    t0 = time.monotonic()
    with site_training_lock(site):
        assert time.monotonic() - t0 < 5
