"""Training on several devices with ``torch.distributed`` DDP: the setup and
teardown of a run (rank, sharded sampler, wrapped model, rank-0 writes,
one clock for all ranks), kept out of the training loop.

Decisions:

* ``batch_size`` is the *global* batch: each of N ranks takes
  ``batch_size / N`` chips per step, so 1 and N devices take the same
  optimisation steps over the same chips (the schedule, warm-up and EMA are
  those of one process).
* Every rank draws the same epoch sample (:class:`RepeatFactorSampler`, same
  seed and epoch); global batch ``k`` is ``draw[k*B:(k+1)*B]`` and rank ``r``
  takes its ``r``-th slice of it (:class:`ShardedSampler`).
* Only rank 0 validates, logs, calls back and writes the model and
  checkpoints; the others train.
* The wall clock of rank 0 is broadcast at every step, so the learning rate
  and a ``max_time`` stop are the same on every rank (all stop at one step).
* NCCL on CUDA (one device per rank, BatchNorm turned into SyncBatchNorm so
  statistics cover the global batch); gloo on the CPU with BatchNorm
  statistics per rank (SyncBatchNorm needs a GPU), and ``torch`` threads set
  to a fair share of the cores per rank.

Launch: ``geodet train ... --devices N`` spawns N processes here
(:func:`launch`); ``torchrun --nproc-per-node N -m geodet_cli.main train ...``
starts them itself and :func:`from_env` reads its environment variables.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

from geodet.errors import GeodetError
from geodet.modeling.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a run: ``rank`` of ``world_size`` (1 = one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Does this rank validate, log and write files (rank 0)?"""
        return self.rank == 0

    def per_rank_batch(self, batch_size: int) -> int:
        """Chips per step on this rank of a global ``batch_size``."""
        if batch_size % self.world_size:
            raise GeodetError(
                f"--batch-size {batch_size} is the global batch and must be a multiple of --devices "
                f"{self.world_size}."
            )
        return batch_size // self.world_size

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank (one CUDA device per local rank)."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``net`` in DDP (SyncBatchNorm on CUDA); ``net`` itself with one process."""
        if not self.active:
            return net
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            return DistributedDataParallel(net, device_ids=[device.index])
        return DistributedDataParallel(net)

    def shard(self, sampler, batch_size: int):
        """This rank's share of ``sampler``'s draws for a global ``batch_size``."""
        return ShardedSampler(sampler, self.rank, self.world_size, batch_size) if self.active else sampler

    def shared(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (a collective: every rank calls it)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def sum(self, *values: float):
        """Each of ``values`` summed over the ranks (a collective)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return tuple(float(v) for v in t.tolist())


SINGLE = Distributed()


class ShardedSampler(torch.utils.data.Sampler):
    """Rank ``rank``'s slice of each global batch of an epoch draw.

    Global batch ``k`` is draws ``[k*B, (k+1)*B)``; rank ``r`` takes its
    ``r``-th contiguous slice, ``B / N`` long (the last, shorter batch is
    split evenly after wrapping draws from the epoch's start so that every
    rank takes as many steps). Iterated with a per-rank batch of ``B / N``,
    the ranks' batches together are one process's batches.
    """

    def __init__(self, sampler, rank: int, world_size: int, batch_size: int) -> None:
        self.sampler, self.rank, self.world_size, self.batch_size = sampler, rank, world_size, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def expected_len(self) -> float:
        return self.sampler.expected_len()

    def _keys(self) -> list:
        keys = list(self.sampler)
        short = (-len(keys)) % self.world_size
        keys += (keys * (short // max(len(keys), 1) + 1))[:short]  # wrap the last batch to an even split
        mine = []
        for start in range(0, len(keys), self.batch_size):
            batch = keys[start:start + self.batch_size]
            part = len(batch) // self.world_size
            mine += batch[self.rank * part:(self.rank + 1) * part]
        return mine

    def __len__(self) -> int:
        return len(self._keys())

    def __iter__(self) -> Iterator:
        return iter(self._keys())


def from_env() -> Optional[Distributed]:
    """The place given by ``torchrun``'s environment (RANK, WORLD_SIZE, LOCAL_RANK), or None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                       int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def setup(place: Distributed, device_name: str, local_world_size: Optional[int] = None) -> None:
    """Join the process group: NCCL when training on CUDA, else gloo with a fair
    share of the CPU threads per rank."""
    if not place.active or torch.distributed.is_initialized():
        return
    cuda = resolve_device(device_name).type == "cuda"
    if not cuda:
        share = max(1, (os.cpu_count() or 1) // (local_world_size or place.world_size))
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=place.rank,
                                         world_size=place.world_size)
    if not place.is_writer:  # rank 0 speaks for the run
        logging.getLogger("geodet").setLevel(logging.WARNING)


def teardown(place: Distributed) -> None:
    if place.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, fn: Callable[..., Any], kwargs: dict, results) -> None:
    place = Distributed(rank, world_size, rank)
    try:
        result = fn(distributed=place, **kwargs)
        if place.is_writer:
            results.put(("ok", result))
    except GeodetError as exc:
        if place.is_writer:
            results.put(("error", str(exc)))
        raise


def launch(devices: int, fn: Callable[..., Any], **kwargs) -> Any:
    """Run ``fn(distributed=Distributed(rank, devices), **kwargs)`` in ``devices``
    spawned processes on this machine; rank 0's return value."""
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    try:
        mp.spawn(_worker, args=(devices, fn, kwargs, results), nprocs=devices, join=True)
    except mp.ProcessRaisedException:
        if not results.empty():
            status, value = results.get()
            if status == "error":
                raise GeodetError(value) from None
        raise
    status, value = results.get()
    return value
