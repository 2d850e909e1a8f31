"""Runtime set-up shared by every entry point (train, eval, predict, the benchmarks): device,
distributed context, seeding, CPU allocator and the encoder's memory format."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch_geometric import seed_everything

from p2m_geo.allocator import keep_freed_cpu_memory

__all__ = [
    "DistributedContext",
    "Runtime",
    "init_distributed",
    "resolve_device",
    "seed_everything",
    "setup_runtime",
    "setup_training_runtime",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; an unavailable GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: expected an available device, got {name!r} but CUDA is not available")
    return device


@dataclass
class DistributedContext:
    """This process's place in a ``torchrun`` group (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_name: str) -> DistributedContext:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1); gloo on CPU, NCCL on GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistributedContext(rank, world_size, local_rank)


@dataclass(frozen=True)
class Runtime:
    """What :func:`setup_runtime` decided: where tensors live and how images are laid out."""

    device: torch.device
    memory_format: torch.memory_format

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on :attr:`device` with :attr:`memory_format` (the encoder's layout)."""
        return model.to(self.device, memory_format=self.memory_format)


def setup_runtime(
    device: str = "auto",
    *,
    ctx: Optional[DistributedContext] = None,
    seed: Optional[int] = None,
    channels_last: bool = True,
    retain_cpu_memory: bool = True,
    deterministic_cpu: bool = False,
) -> Runtime:
    """One place for the process-wide choices every entry point makes.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` (a rank under torchrun takes its local GPU).
        seed: seeds Python, numpy and torch when given (``torch_geometric.seed_everything``).
        channels_last: NHWC convolutions (faster on CPU and on tensor cores).
        retain_cpu_memory: on CPU, keep freed memory in the process (no page faults on every
            step's large activations; :func:`~p2m_geo.allocator.keep_freed_cpu_memory`).
        deterministic_cpu: on CPU, deterministic algorithms (bit-identical resumes), without
            PyTorch's debugging fill of every new tensor with NaN (``fill_uninitialized_memory``:
            8% of a ``cpu-quick`` step; the results are the same bit for bit).
    """
    torch_device = resolve_device(device)
    if torch_device.type == "cuda" and ctx is not None and ctx.enabled:
        torch_device = torch.device("cuda", ctx.local_rank)
    if deterministic_cpu:
        torch.use_deterministic_algorithms(torch_device.type == "cpu", warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    if torch_device.type == "cpu" and retain_cpu_memory:
        keep_freed_cpu_memory()
    if seed is not None:
        seed_everything(seed % 2**32)  # numpy takes 32-bit seeds
    return Runtime(torch_device, torch.channels_last if channels_last else torch.contiguous_format)


def setup_training_runtime(train, ctx: Optional[DistributedContext] = None) -> Runtime:
    """:func:`setup_runtime` from a :class:`~p2m_geo.config.TrainConfig` (seeded, deterministic on CPU)."""
    return setup_runtime(
        train.device,
        ctx=ctx,
        seed=train.seed,
        channels_last=train.channels_last,
        retain_cpu_memory=train.cpu_retain_memory,
        deterministic_cpu=True,
    )
