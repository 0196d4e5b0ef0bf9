"""Device choice and DistributedDataParallel set-up.

The same training code runs single-process (the default) and under
``torchrun --nproc_per_node N`` (it reads ``WORLD_SIZE`` / ``RANK`` /
``LOCAL_RANK``): gloo on CPU, NCCL on GPU, one GPU per process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from weightspace.errors import WeightspaceError

logger = logging.getLogger(__name__)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: the process's CUDA device when CUDA is available, else the
    CPU; anything else is passed to :class:`torch.device`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise WeightspaceError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:1 ...)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WeightspaceError(f"device {name!r} was asked for but CUDA is not available; use "
                               f"device 'auto'", parameter="device")
    return device


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sums of ``values`` over all processes (identity single-process)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1),
    else a single process. Call :func:`teardown_distributed` at the end."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group(backend=backend)
        logger.info("joined %s process group: rank %d of %d on %s", backend, rank, world_size, target)
    return Distributed(rank, world_size, local_rank, target)


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Distributed", "resolve_device", "setup_distributed", "teardown_distributed"]
