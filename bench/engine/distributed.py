"""Several devices for one model: ``torchrun --nproc_per_node N -m bench run ...``.

Every rank runs the same (task, method, fold) units in the same order; inside a unit the ranks
train one model together with ``DistributedDataParallel``, one slide per rank per forward pass
and gradient accumulation between optimizer steps, as the paper trained on 8 GPUs (the
effective batch is ``world_size * grad_accum`` slides). Rank 0 decides which units to run
(done, claimed by another worker) and broadcasts the decision, and only rank 0 writes results.
The backend is ``nccl`` on CUDA and ``gloo`` on CPU.

Outside torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op with
``world_size == 1``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")


def launched() -> bool:
    """True inside a torchrun worker of a group of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> None:
    """Join the process group torchrun describes (idempotent)."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    log.debug("rank %d of %d joined (%s)", rank(), world_size(), backend)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any (e.g. a NaN loss on one rank stops all)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes split files, fills a cache), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(order: list[int]) -> list[int]:
    """This rank's share of an epoch's order: every ``world_size``-th item, the order padded by
    wrapping around so that all ranks take the same number of steps (``DistributedSampler``)."""
    n, w = len(order), world_size()
    if w == 1:
        return list(order)
    total = -(-n // w) * w
    padded = (order * (-(-total // max(n, 1))))[:total]
    return padded[rank()::w]
