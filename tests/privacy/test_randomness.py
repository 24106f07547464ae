"""The site's DP randomness: Poisson batches and noise seeds from the operating system alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from lsemvae.privacy import randomness as R


def test_uniforms_use_53_bits_of_os_bytes_and_nothing_else(monkeypatch):
    monkeypatch.setattr(R.os, "urandom", lambda n: b"\xff" * n)
    assert np.all(R.os_uniform(4) == 1 - 2.0**-53)                      # the largest double below 1
    monkeypatch.setattr(R.os, "urandom", lambda n: (1 << 11).to_bytes(8, "little") * (n // 8))
    assert np.all(R.os_uniform(3) == 2.0**-53)                          # the low 11 bits are dropped


def test_poisson_batches_follow_the_os_bytes_not_any_seed(monkeypatch):
    stream = np.random.default_rng(7)
    monkeypatch.setattr(R.os, "urandom", lambda n: stream.bytes(n))
    torch.manual_seed(0)
    np.random.seed(0)
    first = list(R.PoissonBatches(50, 0.2, 4))
    stream = np.random.default_rng(7)
    torch.manual_seed(1)                                                 # other global seeds: same batches
    np.random.seed(1)
    assert list(R.PoissonBatches(50, 0.2, 4)) == first


def test_poisson_batches_have_the_planned_steps_and_rate():
    sampler = R.PoissonBatches(20_000, 0.05, 3)
    batches = list(sampler)
    assert len(sampler) == 3 and len(batches) == 3
    for b in batches:                                                    # mean 1000, sd 31: 6 sd either side
        assert 810 < len(b) < 1190 and b == sorted(set(b)) and 0 <= b[0] and b[-1] < 20_000
    assert batches[0] != batches[1]                                      # fresh bytes for every batch


@pytest.mark.parametrize("args", [(0, 0.1, 1), (10, 0.0, 1), (10, 1.5, 1), (10, 0.1, 0)])
def test_poisson_batches_refuse_impossible_settings(args):
    with pytest.raises(ValueError, match="need num_samples > 0"):
        R.PoissonBatches(*args)


def test_the_smallest_possible_settings_are_allowed(monkeypatch):
    assert list(R.PoissonBatches(1, 1.0, 1)) == [[0]]                   # one record, always sampled, one step
    monkeypatch.setattr(R.os, "urandom", lambda n: b"\x00" * n)
    (x,) = next(iter(R.poisson_loader(TensorDataset(torch.ones(1, 3)), steps=1)))
    assert x.shape == (1, 3)                                             # a one-record dataset still loads


def test_an_empty_poisson_batch_keeps_the_datasets_structure(monkeypatch):
    monkeypatch.setattr(R.os, "urandom", lambda n: b"\xff" * n)          # every uniform ~1: nobody is sampled
    loader = R.poisson_loader(TensorDataset(torch.ones(6, 3), torch.zeros(6)), steps=2)
    batches = list(loader)
    assert len(loader) == 2 and len(batches) == 2
    assert [tuple(t.shape) for t in batches[0]] == [(0, 3), (0,)]
    assert loader.batch_sampler.sample_rate == 0.5                       # Opacus reads q as 1 / len(loader)


def test_noise_generators_are_seeded_from_the_os_csprng(monkeypatch):
    monkeypatch.setattr(R.secrets, "randbits", lambda k: 12345 if k == 64 else 0)
    assert R.os_seed() == 12345 and R.os_generator().initial_seed() == 12345
    monkeypatch.undo()
    assert R.os_generator().initial_seed() != R.os_generator().initial_seed()
