"""Which device and precision to compute in, what they are, and how many CPU cores this process may use.

Results depend on all three: the same params gave val AUC 0.9791 in bf16 on an Intel CPU with
AMX and 0.9717 in fp32 on an AMD one. So every run records what it resolved to (`describe`).
"""

from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path
from typing import Optional

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def resolve_precision(mode: str, device: torch.device) -> str:
    """train.amp -> 'fp32' | 'bf16' | 'fp16'.

    auto: bf16 on CUDA (fp16 where the GPU lacks bf16); on CPU, bf16 only where the CPU has
    bf16 matrix units (AMX). Without them bf16 is emulated and slower, so auto stays fp32.
    """
    if mode in ("off", "fp32"):
        return "fp32"
    if mode == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if mode == "fp16" and device.type != "cuda":
        raise RuntimeError(f"precision fp16 needs CUDA but the device is {device.type}; use bf16 or off")
    return mode


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    return PRECISIONS[precision]


def cpu_has_native_bf16() -> bool:
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("amx_bf16"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def describe(device: torch.device, precision: str, threads: Optional[int] = None) -> dict[str, str]:
    """How a run computed: MLflow tags that explain why identical params gave other numbers.

    threads: the torch threads training starts with (its CPU share); default: the current setting.
    """
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "hw.precision": precision,
        "hw.device": device.type,
        "hw.device_name": device_name(device),
        "hw.amx_bf16": str(cpu_has_native_bf16()).lower(),
        "hw.cpu_threads": str(threads or torch.get_num_threads()),
        "torch.version": torch.__version__,
        "torch.cuda": torch.version.cuda or "none",
        "torch.cudnn": str(cudnn) if cudnn and device.type == "cuda" else "none",
        "torch.deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
    }


# --- sharing the CPU between pipelines ------------------------------------------------------


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, cgroups' cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CpuShare:
    """This process's share of the cores, among the ffdi processes of one project running at once.

    `dvc queue start -j N` runs N pipelines side by side. Each one sizing torch threads and
    loader workers for the whole machine oversubscribes it: two queued runs took 2.4x as long
    as the same two run one after the other. So each process holds one slot, an flock'd file
    under `lock_dir`, for its lifetime (the kernel frees it if the process dies), and counts the
    held slots to learn how many share the cores. Counting again later (each epoch) lets a run
    that started alone shrink when another one starts.
    """

    def __init__(self, lock_dir: Path, cores: Optional[int] = None):
        self.cores = cores or available_cores()
        self.lock_dir = Path(lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self._slot = self._claim()

    def _claim(self):
        for i in range(4096):
            f = open(self.lock_dir / f"slot-{i}", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return f
            except BlockingIOError:
                f.close()
        raise RuntimeError(f"{self.lock_dir}: no free CPU slot")

    def active(self) -> int:
        """Processes holding a slot now, this one included."""
        held = 0
        for path in self.lock_dir.glob("slot-*"):
            if path.name == Path(self._slot.name).name:
                held += 1
                continue
            with open(path, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except BlockingIOError:
                    held += 1
        return held

    def threads(self) -> int:
        return max(1, self.cores // self.active())

    def close(self) -> None:
        self._slot.close()


def resolve_threads(setting: int | str, share: Optional[CpuShare]) -> int:
    if setting != "auto":
        return int(setting)
    return share.threads() if share else available_cores()


def resolve_workers(setting: int | str, threads: int, device: torch.device) -> int:
    """Loader processes. auto: on a GPU, every core but the main process's decodes; on a CPU the
    model needs the cores, so one loader process once there are two or more, none on one."""
    if setting != "auto":
        return int(setting)
    if device.type == "cuda":
        return max(1, threads - 1)
    return 1 if threads >= 2 else 0


def apply_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
