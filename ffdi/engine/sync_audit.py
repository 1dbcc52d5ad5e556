"""Counting the host-device synchronisations of a loop, without a GPU.

On a GPU the host queues work and runs ahead; anything that needs a value from the device (`item`,
`tolist`, `float`, a copy back to the host), or that copies host data to it from ordinary memory,
makes the host wait until the device has finished everything queued. Once an epoch is free; once
a step makes the GPU idle while the host prepares the next one.

`SyncAudit` counts those calls while a loop runs on PyTorch's `meta` device (shapes, no data), so a
CPU machine can prove that a loop has none per step: run it for 2 steps and for 60, and compare.
Reads of a meta tensor have no value: the audit answers them with ones, so the loop runs to its end.
Autocast has no meta backend: audit a loop with it switched off.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# Reads that wait for the device to produce a value on the host.
READS = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__float__: "float",
    torch.Tensor.__int__: "int",
    torch.Tensor.__index__: "index",
    torch.Tensor.cpu: "cpu",
    torch.Tensor.numpy: "numpy",
}


def _on_device(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "cpu"


def _on_meta(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def _target_device(args: tuple, kwargs: dict) -> torch.device | None:
    """Where Tensor.to(...) sends its tensor; None where it stays (a dtype change alone)."""
    target = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, (torch.device, str)):
            target = a
        elif isinstance(a, torch.Tensor):
            target = a.device
    return torch.device(target) if target is not None else None


def _non_blocking(args: tuple, kwargs: dict) -> bool:
    return bool(kwargs.get("non_blocking", False)) or any(a is True for a in args[2:])


class SyncAudit(TorchFunctionMode):
    """Counts, by kind, the calls that make the host wait for the device (see the module's docstring).

    Counted: `torch.tensor`/`as_tensor` of host data onto a device; a blocking `.to(device)` or
    `.cuda()` of a host tensor; a blocking copy to the host (`.to('cpu')`, `copy_` into a host tensor);
    and every read in READS of a device tensor. A non-blocking copy to the device is not counted:
    on a GPU machine the loader hands over pinned batches, which copy without waiting.
    """

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_function__(self, func: Callable, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self._kind(func, args, kwargs)
        if kind is not None:
            self.counts[kind] += 1
        # A meta tensor has no value: a copy out of one, blocking or not, fills its host destination with
        # ones, and a read of one answers as ones in its shape (counts and sums stay non-zero).
        if func is torch.Tensor.copy_ and len(args) >= 2 and args[0].device.type == "cpu" and _on_meta(args[1]):
            return args[0].fill_(1)
        if kind is not None and kind.startswith("read ") and _on_meta(args[0]):
            return func(torch.ones(args[0].shape, dtype=args[0].dtype), *args[1:], **kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def _kind(func: Callable, args: tuple, kwargs: dict) -> str | None:
        if func in READS and args and _on_device(args[0]):
            return f"read {READS[func]}"
        if func in (torch.tensor, torch.as_tensor):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu" and not _on_device(args[0] if args else None):
                return "host data to device"
            return None
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args and isinstance(args[0], torch.Tensor):
            target = torch.device("cuda") if func is torch.Tensor.cuda else _target_device(args, kwargs)
            if target is None or _non_blocking(args, kwargs):
                return None
            if target.type != "cpu" and args[0].device.type == "cpu":
                return "blocking copy to device"
            if target.type == "cpu" and _on_device(args[0]):
                return "read to(cpu)"
            return None
        if func is torch.Tensor.copy_ and len(args) >= 2:
            dst, src = args[0], args[1]
            if dst.device.type == "cpu" and _on_device(src) and not _non_blocking(args, kwargs):
                return "copy to host"
        return None


def count_syncs(fn: Callable[[], Any]) -> Counter:
    """The synchronisations `fn()` makes, by kind."""
    with SyncAudit() as audit:
        fn()
    return audit.counts


def on_meta(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device: its shapes and operators, none of its data."""
    return copy.deepcopy(model).to("meta")
