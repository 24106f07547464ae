"""A site's round and the server's bookkeeping as plain library functions: the job share, FedProx, the non-DP
warning, a rolled-back epsilon."""

from __future__ import annotations

import logging
import tomllib

import numpy as np
import pytest

from lsemvae.federation.groups import federated
from lsemvae.federation.server_round import initial_state, instruction, track_epsilon
from lsemvae.fileio import dump_toml
from lsemvae.site import federation_config, load_site_config
from tests.federation.helpers import write_checkpoint, write_sites

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("siteround")
    name = write_sites(tmp, n_sites=1, records=24, epsilon=8.0)[0]
    fed = federation_config({"checkpoint": str(write_checkpoint(tmp / "ckpt.pt")), "num-server-rounds": 1,
                             "batch-size": 8})
    return tmp, name, fed, initial_state(fed)


def _site(world, **privacy):
    tmp, name, _, _ = world
    path = tmp / "sites" / f"{name}.toml"
    doc = tomllib.loads(path.read_text())
    doc["privacy"].update(privacy)
    path.write_text(dump_toml(doc))
    return load_site_config(path)


def test_a_job_spends_at_most_the_sites_share_of_its_budget(world):
    """privacy.run_epsilon caps what one job plans to spend, whatever the job's length; the next job gets the next share."""
    from lsemvae.federation.site_round import train

    _, _, fed, state = world
    site = _site(world, epsilon=8.0, run_epsilon=1.0)
    spent = []
    for job in ("aa", "bb"):
        ins = instruction(fed, state, 1, seed=1).model_copy(update={"job_id": job * 8})
        reply, _ = train(site, ins, federated(state.model))
        spent.append(reply.epsilon)
    assert 0.99 <= spent[0] <= 1.0 and 1.98 <= spent[1] <= 2.0, spent   # a quarter would be 2: the share is 1


def test_fedprox_pulls_the_site_towards_the_global_model(world):
    """proximal-mu > 0 (strategy fedprox): the same round ends closer to the global weights than without it."""
    from lsemvae.federation.runtime import load_site_data, model_from_config
    from lsemvae.federation.site_round import _load_weights
    from lsemvae.federation.training import train_round

    _, _, fed, state = world
    site = _site(world)
    data = load_site_data(site, state.preprocess_config)

    def distance(mu: float) -> float:
        model = model_from_config(state.model_config)
        _load_weights(model, federated(state.model))
        res = train_round(model, data, site, lr=5e-2, batch_size=8, local_epochs=3, proximal_mu=mu, dp=False,
                          noise_multiplier=None, history=None, seed=3)
        return float(sum(np.sum((v - state.model[k]) ** 2) for k, v in res.arrays.items()))

    free, pulled = distance(0.0), distance(5.0)
    assert 0 < pulled < 0.8 * free, (pulled, free)
    assert federation_config({"strategy": "fedprox", "proximal-mu": 0.5}).proximal_mu == 0.5
    ins = instruction(federation_config({"strategy": "fedprox", "proximal-mu": 0.5}), state, 1, seed=1)
    assert ins.proximal_mu == 0.5 and instruction(fed, state, 1, seed=1).proximal_mu == 0.0   # only under fedprox


def test_a_site_training_without_dp_says_so_loudly(world, caplog):
    from lsemvae.federation.site_round import train

    _, _, fed, state = world
    site = _site(world, allow_non_dp=True)
    ins = instruction(federation_config({**fed.as_run_config(), "dp": False}), state, 1, seed=1)
    with caplog.at_level(logging.WARNING, logger="lsemvae.site"):
        reply, _ = train(site, ins, federated(state.model))
    assert reply.noise_multiplier == 0 and reply.train_loss is not None
    assert any("NON-DP MODE" in r.getMessage() and "NO privacy guarantee" in r.getMessage() for r in caplog.records)


def test_the_coordinator_flags_a_site_whose_epsilon_went_down(world, caplog):
    _, _, _, state = world
    state.site_epsilon.clear()
    first = {"train": {"aspire": {"epsilon": 3.0}, "bravo": {"epsilon": 1.0}}}
    track_epsilon(state, first)
    assert first["epsilon_max"] == 3.0 and first["epsilon_decreased"] == {}
    with caplog.at_level(logging.ERROR, logger="flwr.lsemvae.server"):
        second = {"train": {"aspire": {"epsilon": 0.4}, "bravo": {"epsilon": 1.5}}}
        track_epsilon(state, second)
    assert second["epsilon_decreased"] == {"aspire": {"before": 3.0, "now": 0.4}}
    assert state.site_epsilon == {"aspire": 3.0, "bravo": 1.5}        # the high-water mark stays
    assert any("LOWER" in r.getMessage() and "aspire" in r.getMessage() for r in caplog.records)
