"""Pretraining over several processes with PyTorch's own engine: ``torchrun ... -m lsemvae pretrain``.

torchrun starts one process per GPU (or per CPU share) and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`start` joins the process group (``nccl`` on CUDA, ``gloo`` on the CPU)
and the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages gradients.

N processes with ``--batch-size B`` train exactly as one process with ``--batch-size N*B`` (the model has no batch
statistics): :class:`EpochBatches` deals each of that one process' batches out to the N processes (record ``j`` of
a batch to process ``j mod N``), and the batch's randomness (expert dropout, augmentation, the reparameterisation
noise) is drawn for the whole batch on every process from the same seeds, each process keeping its records' rows
(:func:`gather_rows` brings the batch's inputs together). Each process' loss is weighted by its share of the
batch, so the averaged gradient is the one process' gradient even when the last batch does not divide evenly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from lsemvae.errors import ConfigError


@dataclass(frozen=True)
class Processes:
    """This process' place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and progress."""
        return self.rank == 0


def from_environment() -> Processes:
    """The process layout torchrun set in the environment (none: one process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise ConfigError(f"torchrun's RANK / WORLD_SIZE / LOCAL_RANK are not whole numbers ({err})") from None
    return Processes(rank=rank, world=world, local_rank=local)


_CPU_GROUP = None  # gloo: the batch's inputs are gathered on the CPU, where augmentation draws its randomness


def start(procs: Processes, device: torch.device) -> None:
    """Join the process group (nothing for one process)."""
    global _CPU_GROUP
    if procs.world == 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    _CPU_GROUP = torch.distributed.new_group(backend="gloo") if backend != "gloo" else None


def stop() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def epoch_order(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """The batches one process draws in an epoch, from a shuffling DataLoader itself (whatever torch does inside).

    Pretraining iterated that DataLoader through ``tqdm.auto``, which makes an iterator in its constructor and
    another when iterated; each draws its workers' seed from the generator before the permutation. The discarded
    first iterator is made here too, so a seed keeps giving the weights it gave before this sampler existed."""
    loader = DataLoader(range(n), batch_size=batch_size, shuffle=True, generator=generator)
    iter(loader)
    return [b.tolist() for b in loader]


@dataclass(frozen=True)
class Share:
    """This process' records of one batch: their ``rows`` in the batch and the weight of its loss."""

    rows: torch.Tensor
    size: int  # records in the whole batch
    count: int  # this process' records of it (0: it trains on a stand-in at weight 0)
    weight: float  # (its records / the batch's) x processes: the average of the weighted losses is the batch's loss


class EpochBatches(Sampler[list[int]]):
    """A distributed sampler with a per-epoch seed: this process' records of each batch of one process' epoch.

    ``batches`` are the one-process batches (:func:`epoch_order`); record ``j`` goes to rank ``j mod world``. A
    process with no record in a short last batch gets the batch's first one at weight 0, so every process takes
    every step (collectives must match).
    """

    def __init__(self, batches: list[list[int]], procs: Processes):
        self.batches, self.procs = batches, procs

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.procs.rank::self.procs.world] or batch[:1]

    def shares(self):
        for batch in self.batches:
            rows = list(range(self.procs.rank, len(batch), self.procs.world))
            weight = len(rows) * self.procs.world / len(batch)
            yield Share(torch.tensor(rows or [0]), len(batch), len(rows), weight)


def gather_rows(local: torch.Tensor, share: Share, procs: Processes) -> torch.Tensor:
    """The whole batch from each process' rows (rank ``r`` holds rows ``r, r + world, ...``), in batch order."""
    if procs.world == 1:
        return local
    per = -(-share.size // procs.world)
    padded = local.new_zeros((per, *local.shape[1:]))
    padded[:share.count] = local[:share.count]
    parts = [torch.empty_like(padded) for _ in range(procs.world)]
    torch.distributed.all_gather(parts, padded, group=_CPU_GROUP)
    return torch.stack(parts, dim=1).reshape(per * procs.world, *local.shape[1:])[:share.size]


def all_sum(values: list[float], procs: Processes) -> list[float]:
    """Element-wise sum of ``values`` over the processes (float64; unchanged for one process)."""
    if procs.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t, group=_CPU_GROUP)
    return t.tolist()


def shard(n: int, procs: Processes) -> list[int]:
    """This process' records of ``n`` (validation): every ``world``-th from its rank."""
    return list(range(procs.rank, n, procs.world))


def gather_shards(local: torch.Tensor, n: int, procs: Processes) -> torch.Tensor:
    """All ``n`` rows back in their order from each process' :func:`shard` (rows on the CPU)."""
    if procs.world == 1:
        return local
    rows = shard(n, procs)
    return gather_rows(local.cpu(), Share(torch.tensor(rows), n, len(rows), 1.0), procs)
