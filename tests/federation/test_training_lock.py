"""A site trains one round at a time: a late ClientApp (its round already given up by the server) and
the next round's ClientApp must not both pass the privacy-budget check (site_round.train holds this lock
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


def _train(config_path: str, ins_json: str, arrays: dict, start, out) -> None:
    """One ClientApp's training, in its own process (as Flower runs each ClientApp)."""
    import torch

    from lsemvae.federation.messages import Instruction
    from lsemvae.federation.site_round import SiteRefusal, train

    torch.set_num_threads(1)
    site = load_site_config(config_path)
    start.wait(60)
    try:
        reply, _ = train(site, Instruction.model_validate_json(ins_json), arrays)
        out.put(("trained", reply.epsilon))
    except SiteRefusal as err:
        out.put(("refused", err.code))


def test_two_trainings_at_once_one_round_below_the_budget_one_is_refused(tmp_path):
    """Round 2 of a 2-round job sent twice at the same time (a late ClientApp and a new one): exactly one
    trains, the other is refused, and the site's epsilon never exceeds its budget."""
    from lsemvae.federation import keys as K
    from lsemvae.federation.groups import federated
    from lsemvae.federation.server_round import initial_state, instruction
    from lsemvae.federation.site_round import train
    from lsemvae.privacy.ledger import PrivacyLedger
    from lsemvae.site import federation_config
    from tests.federation.helpers import write_checkpoint

    name = write_sites(tmp_path, n_sites=1, records=24, epsilon=2.0)[0]
    path = tmp_path / "sites" / f"{name}.toml"
    site = load_site_config(path)
    fed = federation_config({"checkpoint": str(write_checkpoint(tmp_path / "ckpt.pt")), "num-server-rounds": 2,
                             "batch-size": 8})
    state = initial_state(fed)
    arrays = federated(state.model)
    train(site, instruction(fed, state, 1, seed=1), arrays)            # round 1: one round below the budget
    ins = instruction(fed, state, 2, seed=2).model_dump_json()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_train, args=(str(path), ins, arrays, start, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    results = sorted(out.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(30)
    assert [r[0] for r in results] == ["refused", "trained"], results
    assert results[0][1] == K.ERR_BUDGET
    epsilon = PrivacyLedger.open(site.ledger_path, site=site.name, anchor_dir=site.anchor_dir).epsilon()
    assert epsilon <= site.privacy.epsilon and epsilon == results[1][1]
