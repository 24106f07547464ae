"""Every task's labels reach training, aggregation and evaluation intact, at 12- and 6-lead sites.

Guards the suspects of a task that learns at the centre but not in the federation (left_atrial,
benchmarks/results/federation.json): a label column mis-read or swapped at a site, a head that is not
trained, not sent or averaged with the wrong weights, evaluation histograms scored from another
task's output.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from lsemvae.federation.training import evaluate, train_round
from lsemvae.federation.runtime import load_site_data, model_from_config
from lsemvae.federation.groups import group_of
from lsemvae.errors import ConfigError
from lsemvae.site import federation_config, load_site_config
from lsemvae.federation.aggregation import Contribution, ServerOptimizer, ServerOptimizerState, aggregate_round
from lsemvae.federation.server_round import initial_state
from tests.federation.helpers import write_checkpoint, write_sites

TASKS = ("right_heart", "left_atrial")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("taskplumbing")
    names = write_sites(tmp, n_sites=3, records=16)   # the third site (clinic_c) records 6 leads
    fed = federation_config({"checkpoint": str(write_checkpoint(tmp / "ckpt.pt")), "tasks": ",".join(TASKS)})
    state = initial_state(fed)
    out = []
    for name in names:
        cfg = load_site_config(tmp / "sites" / f"{name}.toml")
        with open(cfg.data.labels) as fh:
            csv_rows = {r["record_id"]: r for r in csv.DictReader(fh)}
        out.append((cfg, load_site_data(cfg, state.preprocess_config), csv_rows))
    return state, out


def fresh_model(state):
    model = model_from_config(state.model_config)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.model.items()})
    return model


def test_each_task_reads_its_own_column_at_every_site(sites):
    _, site_list = sites
    for cfg, data, csv_rows in site_list:
        assert list(data.tasks) == list(TASKS)
        ids = list(data.cohort.record_ids)
        for task in TASKS:
            got = np.asarray(data.cohort.labels[task])[:, 0]
            want = np.array([float(csv_rows[i][task]) if csv_rows[i][task] != "" else np.nan for i in ids])
            np.testing.assert_array_equal(got, want, err_msg=f"{cfg.name}/{task}")
        for idx in (data.train_idx, data.eval_idx):   # what the loaders hand to the loss and the metrics
            ds = data.dataset(idx[:4], cfg.lead_names)
            for j in range(len(ds)):
                for task in TASKS:
                    assert float(ds[j]["y"][task]) == float(csv_rows[ids[idx[j]]][task])


def test_every_head_is_trained_sent_and_averaged_by_its_label_count(sites):
    state, site_list = sites
    contributions = []
    for cfg, data, _ in site_list:
        res = train_round(fresh_model(state), data, cfg, lr=1e-2, batch_size=8, local_epochs=1, proximal_mu=0.0,
                          dp=False, noise_multiplier=None, history=None, seed=1)
        for task in TASKS:
            keys = [k for k in res.arrays if group_of(k) == f"heads.{task}"]
            assert keys, f"{cfg.name} did not send heads.{task}"
            assert any(not np.array_equal(res.arrays[k], state.model[k]) for k in keys), f"{cfg.name}: {task} head not trained"
            labelled = (~np.isnan(np.asarray(data.cohort.labels[task])[data.train_idx, 0])).sum()
            assert res.group_weights[f"heads.{task}"] == labelled
        contributions.append(Contribution(cfg.name, res.arrays, res.group_weights))
    new, _, contributors = aggregate_round(state.model, contributions, ServerOptimizer("fedavg"), ServerOptimizerState())
    for task in TASKS:
        assert sorted(contributors[f"heads.{task}"]) == sorted(c.site for c in contributions)
        w = np.array([c.group_weights[f"heads.{task}"] for c in contributions])
        for key in (k for k in state.model if group_of(k) == f"heads.{task}"):
            expected = sum(wi * c.arrays[key].astype(np.float64) for wi, c in zip(w, contributions)) / w.sum()
            np.testing.assert_allclose(new[key], expected, rtol=1e-5, atol=1e-7)


def test_evaluation_histograms_score_each_task_from_its_own_head(sites):
    """Pin the heads to opposite constant scores: each task's histogram must hold its own labels there."""
    state, site_list = sites
    model = fresh_model(state)
    with torch.no_grad():
        for task, bias in (("right_heart", -8.0), ("left_atrial", 8.0)):
            last = model.heads[task].net[-1]
            last.weight.zero_()
            last.bias.fill_(bias)
    for cfg, data, _ in site_list:
        res = evaluate(model, data, cfg)
        for task, score in (("right_heart", 1 / (1 + np.exp(8.0))), ("left_atrial", 1 / (1 + np.exp(-8.0)))):
            y = np.asarray(data.cohort.labels[task])[data.eval_idx]
            np.testing.assert_array_equal(res.targets[task], y, err_msg=f"{cfg.name}/{task}")
            np.testing.assert_allclose(res.scores[task], score, rtol=1e-5, err_msg=f"{cfg.name}/{task}")


@pytest.mark.parametrize("head_input, width", [("fused", 1), ("leads+fused", 13)])
def test_federation_heads_follow_the_run_config_not_the_checkpoint_profile(tmp_path, head_input, width):
    """The compact profile's leads+fused heads are 13x wider than fused ones, which costs DP dearly;
    the federation chooses its own fresh heads (run-config head-input, default fused)."""
    from lsemvae.model.config import ModelConfig
    fed = federation_config({"checkpoint": str(write_checkpoint(tmp_path / "ckpt.pt")), "tasks": "right_heart",
                             "head-input": head_input})
    state = initial_state(fed)
    latent = ModelConfig.model_validate_json(state.model_config).latent_dim
    assert ModelConfig.model_validate_json(state.model_config).head_input == head_input
    assert state.model["heads.right_heart.net.1.weight"].shape == (1, width * latent)


def test_federation_default_heads_read_the_fused_mean():
    assert federation_config({}).head_input == "fused" and federation_config({}).head_dropout == 0.0


def test_federated_probe_trains_and_sends_only_fusion_and_heads(sites):
    """run-config train-encoders = false: the encoders stay as pretrained and never leave the site."""
    state, site_list = sites
    cfg, data, _ = site_list[0]
    model = fresh_model(state)
    res = train_round(model, data, cfg, lr=1e-2, batch_size=8, local_epochs=1, proximal_mu=0.0,
                      dp=False, noise_multiplier=None, history=None, seed=1, train_encoders=False)
    sent = {group_of(k) for k in res.arrays}
    assert sent == {"fusion", *(f"heads.{t}" for t in TASKS)}
    for key, value in model.state_dict().items():
        if key.startswith("encoders."):
            np.testing.assert_array_equal(value.numpy(), state.model[key], err_msg=key)
    assert federation_config({"train-encoders": False}).train_encoders is False


@pytest.mark.parametrize("value, dp, trains", [("auto", True, False), ("auto", False, True), (True, True, True),
                                               (False, False, False)])
def test_train_encoders_auto_means_a_probe_under_dp_only(value, dp, trains):
    assert federation_config({"train-encoders": value, "dp": dp}).encoders_train is trains


def test_train_encoders_rejects_other_words_naming_the_field():
    with pytest.raises(ConfigError, match="train-encoders|train_encoders"):
        federation_config({"train-encoders": "sometimes"})
