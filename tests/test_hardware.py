"""Device, precision, and sharing the CPU between pipelines that run at once."""

import multiprocessing as mp
import os
import subprocess
import sys

import pytest
import torch

from ffdi import hardware


def test_describe_names_precision_device_and_versions():
    tags = hardware.describe(torch.device("cpu"), "fp32")
    assert tags["hw.precision"] == "fp32" and tags["hw.device"] == "cpu"
    assert tags["hw.device_name"] == hardware.cpu_name() and tags["hw.device_name"]
    assert tags["torch.version"] == torch.__version__
    assert tags["torch.deterministic"] in ("true", "false")


def _hold(lock_dir, started, release):
    share = hardware.CpuShare(lock_dir, cores=4)
    started.set()
    release.wait(30)
    share.close()


@pytest.mark.slow
def test_cpu_share_counts_the_processes_holding_a_slot(tmp_path):
    me = hardware.CpuShare(tmp_path, cores=4)
    assert me.active() == 1 and me.threads() == 4
    ctx = mp.get_context("spawn")
    release = ctx.Event()
    others = []
    for _ in range(2):
        started = ctx.Event()
        p = ctx.Process(target=_hold, args=(tmp_path, started, release))
        p.start()
        assert started.wait(60)
        others.append(p)
    assert me.active() == 3 and me.threads() == 1
    release.set()
    for p in others:
        p.join(30)
    assert me.active() == 1 and me.threads() == 4  # a finished (or killed) process frees its slot
    me.close()


def test_threads_and_workers_resolution(tmp_path):
    share = hardware.CpuShare(tmp_path, cores=2)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cores = hardware.core_share(share)
    assert cores == 2 and hardware.resolve_threads("auto", cores, cpu) == 2
    assert hardware.resolve_threads(3, cores, cpu) == 3 and hardware.resolve_threads(3, 16, cuda) == 3
    # On a GPU the main process feeds the device: few threads, and every other core decodes.
    assert hardware.resolve_threads("auto", 16, cuda) == hardware.GPU_MAIN_THREADS == 2
    assert hardware.resolve_threads("auto", 1, cuda) == 1
    assert hardware.resolve_workers("auto", 2, cpu) == 1 and hardware.resolve_workers("auto", 1, cpu) == 0
    assert hardware.resolve_workers("auto", 16, cuda) == 15 and hardware.resolve_workers(5, 1, cpu) == 5


def _gpu_present_but_unusable(monkeypatch, tmp_path, via: str):
    """A machine with an NVIDIA GPU that this torch cannot use (here: no driver answers it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if via == "nvidia-smi":
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)'\n")
        smi.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        monkeypatch.setattr(hardware, "NVIDIA_PROC", tmp_path / "none")
    else:
        monkeypatch.setenv("PATH", "/nonexistent")
        gpu = tmp_path / "gpus" / "0000:17:00.0"
        gpu.mkdir(parents=True)
        (gpu / "information").write_text("Model: \t\t NVIDIA H200\nIRQ:   123\n")
        monkeypatch.setattr(hardware, "NVIDIA_PROC", tmp_path / "gpus")


@pytest.mark.parametrize("via", ["nvidia-smi", "proc"])
def test_auto_refuses_the_cpu_of_a_machine_whose_gpu_torch_cannot_use(monkeypatch, tmp_path, via):
    from ffdi.errors import DeviceError, FfdiError

    _gpu_present_but_unusable(monkeypatch, tmp_path, via)
    with pytest.raises(DeviceError) as err:
        hardware.select_device("auto")
    message = str(err.value)
    assert ("NVIDIA H100 80GB HBM3" if via == "nvidia-smi" else "NVIDIA H200") in message
    assert torch.__version__ in message and str(torch.version.cuda) in message
    assert hardware.cuda_refusal() in message and "runtime.device: cpu" in message
    assert isinstance(err.value, FfdiError)  # stage_main prints it as one line, no traceback
    assert hardware.select_device("cpu") == torch.device("cpu")  # asked for: trains there anyway


def test_auto_on_a_machine_without_an_nvidia_gpu_is_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(hardware, "NVIDIA_PROC", tmp_path / "none")
    assert hardware.nvidia_gpus() == [] and hardware.select_device("auto") == torch.device("cpu")


def test_pipelines_side_by_side_each_take_their_own_gpu_then_share(tmp_path):
    """`dvc queue start -j N` on a 4-GPU machine: each pipeline its own GPU, the least used one."""
    shares = [hardware.GpuShare(tmp_path, count=4) for _ in range(4)]
    assert [s.index for s in shares] == [0, 1, 2, 3]
    more = [hardware.GpuShare(tmp_path, count=4) for _ in range(2)]
    assert [s.index for s in more] == [0, 1]  # more pipelines than GPUs: they share
    shares[2].close()  # a pipeline ends: its GPU is the least used again
    later = [hardware.GpuShare(tmp_path, count=4) for _ in range(3)]
    assert [s.index for s in later] == [2, 2, 3]  # 2 had none; then 2 and 3 one each


def test_claim_gpu_makes_the_taken_gpu_current_and_the_run_says_which(monkeypatch, tmp_path):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake GPU")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    other = hardware.GpuShare(tmp_path / "gpu", count=3)  # another pipeline already holds GPU 0
    assert hardware.claim_gpu("auto", tmp_path / "gpu") == 1 and chosen == [1]
    assert hardware.claim_gpu("auto", tmp_path / "gpu") == 1  # the same process keeps its GPU
    assert hardware.describe(torch.device("cuda"), "bf16", 2)["hw.gpu_index"] == "1"
    assert hardware.device_label(torch.device("cuda")) == "cuda:1 (Fake GPU)"
    assert hardware.claim_gpu("cpu", tmp_path / "gpu") is None
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun places its processes itself
    assert hardware.claim_gpu("auto", tmp_path / "gpu2") is None
    other.close()


@pytest.mark.skipif(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2, reason="not under pytest-xdist")
def test_an_xdist_worker_and_what_it_starts_see_only_its_own_cores():
    count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    from tests.conftest import worker_cores

    cores = [int(c) for c in os.environ["FFDI_TEST_CORES"].split(",")]  # the session's, before pinning
    mine = os.sched_getaffinity(0)
    assert mine == set(worker_cores(cores, int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")), count))
    assert worker_cores([0, 1], 0, 2) == [0] and worker_cores([0, 1], 1, 2) == [1]
    assert worker_cores([0, 1], 2, 3) == [0] and worker_cores([0, 1, 2, 3], 1, 2) == [1, 3]
    child = subprocess.run(
        [sys.executable, "-c", "from ffdi import hardware; print(hardware.available_cores())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(child.stdout) == len(mine) and torch.get_num_threads() == len(mine)
