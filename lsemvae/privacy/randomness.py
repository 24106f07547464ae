"""The randomness DP-SGD rests on, owned by the site: drawn from the operating system, never from a message.

A site's (epsilon, delta) holds only if the coordinator cannot predict the Gaussian noise or which
records a Poisson batch holds. Seeding either from a value the server sends lets a coordinator
replay the site's training exactly, subtract the noise and read the clipped gradients; and without
secret sampling the amplification by subsampling that the accountant counts does not hold.

Opacus offers ``PrivacyEngine(secure_mode=True)`` for this: noise from a CSPRNG (``torchcsprng``) plus
a noise draw that resists floating-point attacks (the sum of four Gaussians, halved). torchcsprng is
archived and has no builds for current torch, so the site does instead:

* **Sampling:** :class:`PoissonBatches` includes each record with probability ``q`` from uniforms
  made of ``os.urandom`` bytes (53 bits each), fresh for every batch. No seed exists to replay.
* **Noise:** the optimiser's generator is re-seeded with 64 bits of ``secrets`` (the OS CSPRNG)
  before every step (:func:`os_generator`), and Opacus' secure noise draw is switched on. Each
  step's noise is a Mersenne-Twister stream from a fresh, secret 64-bit seed: it cannot be replayed
  (2^64 seeds) and no stream is long enough to recover a generator's state from.
* **Everything else random in a DP round** (torch's global generator: dropout, augmentation) is
  seeded from ``secrets`` too.

Non-DP rounds may stay reproducible from a seed (for bitwise resume tests); they carry no
guarantee anyway.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.dataloader import default_collate


def os_seed() -> int:
    """64 bits from the operating system's CSPRNG."""
    return secrets.randbits(64)


def os_generator() -> torch.Generator:
    """A torch generator seeded from the OS CSPRNG (see module docstring)."""
    return torch.Generator().manual_seed(os_seed())


def os_uniform(n: int) -> np.ndarray:
    """``n`` uniforms in [0, 1) with 53 random bits each, straight from ``os.urandom``."""
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53


class PoissonBatches(Sampler[list[int]]):
    """``steps`` batches; each includes every record independently with probability ``sample_rate``."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int):
        if num_samples <= 0 or not 0 < sample_rate <= 1 or steps <= 0:
            raise ValueError(f"need num_samples > 0, 0 < sample_rate <= 1, steps > 0 "
                             f"(got {num_samples}, {sample_rate}, {steps})")
        self.num_samples, self.sample_rate, self.steps = num_samples, sample_rate, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield np.flatnonzero(os_uniform(self.num_samples) < self.sample_rate).tolist()


def poisson_loader(dataset: Dataset, *, steps: int) -> DataLoader:
    """A loader of ``steps`` Poisson batches at rate ``1 / steps`` (Opacus reads the rate as ``1 / len(loader)``).

    Empty batches come out as zero-length tensors of the dataset's structure (Opacus' collate wrapper),
    so the optimiser still adds noise and counts the step.
    """
    from opacus.data_loader import wrap_collate_with_empty

    collate = wrap_collate_with_empty(collate_fn=default_collate)
    collate.first_batch = default_collate([dataset[0]])   # the structure an empty batch takes
    return DataLoader(dataset, batch_sampler=PoissonBatches(len(dataset), 1 / steps, steps), collate_fn=collate)
