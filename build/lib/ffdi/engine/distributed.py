"""DistributedDataParallel plumbing for torchrun: the process group, ranks, and gathering results.

Under torchrun each process trains on its shard of the rows; validation gathers every
shard so its metrics cover the whole val set once; only rank 0 writes files and talks to MLflow.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ffdi.config import TrainConfig
from ffdi.hardware import select_device


def use_distributed(cfg: TrainConfig) -> bool:
    world = os.environ.get("WORLD_SIZE")
    if cfg.distributed == "on" and world is None:
        raise RuntimeError("train.distributed is 'on' but WORLD_SIZE is not set: launch with torchrun")
    return cfg.distributed == "on" or (cfg.distributed == "auto" and int(world or 1) > 1)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


@contextmanager
def process_group(cfg: TrainConfig, device: str = "auto"):
    """Join torchrun's processes into one group for the duration; a no-op otherwise.

    gloo on CPU, nccl on CUDA with one GPU per process (LOCAL_RANK). device: runtime.device.
    """
    if not use_distributed(cfg) or is_distributed():
        yield
        return
    cuda = select_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t)
    return t


def gather_rows(index: np.ndarray, *columns):
    """Every process's rows, on every process, one per dataset index, in index order.

    DistributedSampler pads the last shards with repeats of the first rows; those are dropped.
    """
    if not is_distributed():
        return (index, *columns)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (index, *columns))
    index, first = np.unique(np.concatenate([p[0] for p in parts]), return_index=True)
    return (index, *(torch.cat([p[i + 1] for p in parts])[first] for i in range(len(columns))))


def gather_set(items: list) -> list:
    """The union of every process's list (e.g. unreadable files), sorted."""
    if not is_distributed():
        return sorted(set(map(tuple, items)))
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return sorted({tuple(s) for p in parts for s in p})


def sync_buffers(*models: nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics of each model, which are the ones it checkpoints.

    DDP syncs buffers before each forward, so after the last training step each process
    holds the statistics of its own last batch.
    """
    if is_distributed():
        for model in models:
            for buf in model.buffers():
                dist.broadcast(buf, src=0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
