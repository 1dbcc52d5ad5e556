"""Which device and precision to compute in, what they are, and how many CPU cores this process may use.

Results depend on all three: the same params gave val AUC 0.9791 in bf16 on an Intel CPU with
AMX and 0.9717 in fp32 on an AMD one. So every run records what it resolved to (`describe`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from ffdi.errors import DeviceError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Torch threads of the main process on a GPU machine: it dispatches work to the GPU and finishes
# batches; more threads only take cores from the loader workers that decode the images.
GPU_MAIN_THREADS = 2
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")


def select_device(name: str) -> torch.device:
    """runtime.device -> the device to compute on.

    auto: CUDA where torch can use it; else the CPU, unless the machine has an NVIDIA GPU that
    torch cannot use (a CPU-only build, a driver too old for its CUDA): then an error that says
    why, since silently training on the CPU of a GPU machine costs days. `cpu` trains there anyway.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        gpus = nvidia_gpus()
        if gpus:
            raise DeviceError(
                f"runtime.device is auto and this machine has {len(gpus)} NVIDIA GPU(s) ({gpus[0]}), but torch "
                f"{torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU-only build'}) cannot use them: "
                f"{cuda_refusal()}. Install a torch build for this driver, or set runtime.device: cpu (`--device cpu` "
                "for ffdi score and explain) to compute on the CPU anyway"
            )
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"runtime.device is cuda but torch {torch.__version__} cannot use CUDA: {cuda_refusal()}")
    return torch.device(name)


def nvidia_gpus() -> list[str]:
    """The NVIDIA GPUs this machine has, whether or not torch can use them: `nvidia-smi -L`'s
    lines, else the models the kernel driver lists under /proc/driver/nvidia/gpus."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        listed = [line.strip() for line in out.splitlines() if line.startswith("GPU ")]
        if listed:
            return listed
    found = []
    for gpu in sorted(NVIDIA_PROC.glob("*")) if NVIDIA_PROC.is_dir() else []:
        info = gpu / "information"
        model = next((line.split(":", 1)[1].strip() for line in _lines(info) if line.startswith("Model:")), "")
        found.append(f"{model or 'NVIDIA GPU'} at {gpu.name}")
    return found


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def cuda_refusal() -> str:
    """Why torch cannot use CUDA, in torch's own words where it has them."""
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    try:
        torch.cuda.init()
    except Exception as e:  # torch raises RuntimeError or AssertionError with the driver's reason
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"torch sees {torch.cuda.device_count()} CUDA device(s)"


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


def autocast_dtype(precision: str) -> torch.dtype | None:
    return PRECISIONS[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast in `dtype`; in fp32 (None) no context at all, which is the same computation
    and also runs where autocast has no backend (the meta device of ffdi.engine.sync_audit)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


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


def device_label(device: torch.device) -> str:
    """'cuda:1 (NVIDIA H100 80GB HBM3)', 'cpu (Intel Xeon ...)': what a log line names."""
    if device.type == "cuda":
        device = torch.device("cuda", _gpu_index(device))
    return f"{device} ({device_name(device)})"


def describe(device: torch.device, precision: str, threads: int | None = None) -> dict[str, str]:
    """How a run computed: MLflow tags that explain why identical params gave other numbers.

    threads: the torch threads training starts with (its CPU share); default: the current setting.
    """
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "hw.precision": precision,
        "hw.device": device.type,
        "hw.device_name": device_name(device),
        "hw.gpu_index": str(_gpu_index(device)) if device.type == "cuda" else "none",
        "hw.amx_bf16": str(cpu_has_native_bf16()).lower(),
        "hw.cpu_threads": str(threads or torch.get_num_threads()),
        "torch.version": torch.__version__,
        "torch.cuda": torch.version.cuda or "none",
        "torch.cudnn": str(cudnn) if cudnn and device.type == "cuda" else "none",
        "torch.deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
    }


def _gpu_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


# --- sharing the CPU between pipelines ------------------------------------------------------


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, cgroups' cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _claim_slot(lock_dir: Path, prefix: str):
    """The first free `prefix-K` file under lock_dir, flock'd for as long as the file stays open
    (the kernel frees it if the process dies)."""
    for i in range(4096):
        f = open(lock_dir / f"{prefix}-{i}", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            f.close()
    raise RuntimeError(f"{lock_dir}: no free {prefix} slot")


def _held_slots(lock_dir: Path, prefix: str, mine=None) -> int:
    """How many `prefix-K` files some process holds now (`mine`, an open slot, counts as held)."""
    held = 0
    for path in lock_dir.glob(f"{prefix}-*"):
        if mine is not None and path.name == Path(mine.name).name:
            held += 1
            continue
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                held += 1
    return held


class CpuShare:
    """This process's share of the cores, among the ffdi processes of one project running at once.

    `dvc queue start -j N` runs N pipelines side by side. Each one sizing torch threads and
    loader workers for the whole machine oversubscribes it: two queued runs took 2.4x as long
    as the same two run one after the other. So each process holds one slot, an flock'd file
    under `lock_dir`, for its lifetime, and counts the held slots to learn how many share the
    cores. Counting again later (each epoch) lets a run that started alone shrink when another
    one starts.
    """

    def __init__(self, lock_dir: Path, cores: int | None = None):
        self.cores = cores or available_cores()
        self.lock_dir = Path(lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self._slot = _claim_slot(self.lock_dir, "slot")

    def active(self) -> int:
        """Processes holding a slot now, this one included."""
        return _held_slots(self.lock_dir, "slot", self._slot)

    def threads(self) -> int:
        return max(1, self.cores // self.active())

    def close(self) -> None:
        self._slot.close()


class GpuShare:
    """The GPU this process computes on, among the ffdi processes of one project running at once.

    Without it every pipeline of `dvc queue start -j 4` on a 4-GPU machine would use cuda:0. Each
    process takes the GPU that the fewest others hold, and holds a slot of it (an flock'd file,
    as CpuShare's) for its lifetime; with more pipelines than GPUs, they share. The choice is made
    under one exclusive lock, so that pipelines starting together do not all count the same GPU free.
    """

    def __init__(self, lock_dir: Path, count: int):
        self.lock_dir = Path(lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / "choosing", "a+") as choosing:
            fcntl.flock(choosing, fcntl.LOCK_EX)
            load = [_held_slots(self.lock_dir, f"gpu{i}") for i in range(count)]
            self.index = load.index(min(load))
            self._slot = _claim_slot(self.lock_dir, f"gpu{self.index}")

    def close(self) -> None:
        self._slot.close()


_gpu_shares: dict[Path, GpuShare] = {}  # held for the process's lifetime


def claim_gpu(setting: str, lock_dir: Path) -> int | None:
    """On a machine with several GPUs, make the least used one this process's current device.

    Only where the choice is ffdi's: runtime.device auto or cuda (not cuda:K), and not under
    torchrun, whose LOCAL_RANK places each process. Returns the index taken, None where none was.
    """
    if setting not in ("auto", "cuda") or "LOCAL_RANK" in os.environ or select_device(setting).type != "cuda":
        return None
    lock_dir = Path(lock_dir).resolve()
    if lock_dir not in _gpu_shares:
        _gpu_shares[lock_dir] = GpuShare(lock_dir, torch.cuda.device_count())
    index = _gpu_shares[lock_dir].index
    torch.cuda.set_device(index)
    return index


def claim_hardware(device: str, threads: int | str, state_dir: Path) -> tuple[torch.device, CpuShare]:
    """A pipeline stage's share of the machine, among the ffdi processes running at once: its CPU
    share (state_dir/cpu), its GPU (state_dir/gpu) made the current device, its torch threads set.
    device, threads: runtime.device and runtime.threads."""
    share = CpuShare(Path(state_dir) / "cpu")
    claim_gpu(device, Path(state_dir) / "gpu")
    chosen = select_device(device)
    apply_threads(resolve_threads(threads, share.threads(), chosen))
    return chosen, share


def core_share(share: CpuShare | None) -> int:
    """The cores this process may use now: its share among the pipelines running, or all of them."""
    return share.threads() if share else available_cores()


def resolve_threads(setting: int | str, cores: int, device: torch.device) -> int:
    """Torch threads. auto: on a CPU every core of the share computes; on a GPU the main process
    only feeds the device, and GPU_MAIN_THREADS leave the other cores to the loader workers."""
    if setting != "auto":
        return int(setting)
    return min(GPU_MAIN_THREADS, cores) if device.type == "cuda" else cores


def resolve_workers(setting: int | str, cores: int, device: torch.device) -> int:
    """Loader processes. auto: on a GPU, every core but the main process's decodes; on a CPU the
    model needs the cores, so one loader process once there are two or more, none on one."""
    if setting != "auto":
        return int(setting)
    if device.type == "cuda":
        return max(1, cores - 1)
    return 1 if cores >= 2 else 0


def apply_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
