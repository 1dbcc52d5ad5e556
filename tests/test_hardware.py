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
    assert hardware.resolve_threads("auto", share) == 2 and hardware.resolve_threads(3, share) == 3
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert hardware.resolve_workers("auto", 2, cpu) == 1 and hardware.resolve_workers("auto", 1, cpu) == 0
    assert hardware.resolve_workers("auto", 16, cuda) == 15 and hardware.resolve_workers(5, 1, cpu) == 5


@pytest.mark.skipif(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2, reason="not under pytest-xdist")
def test_an_xdist_worker_and_what_it_starts_see_only_its_own_cores():
    count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    from tests.conftest import worker_cores

    cores = [int(c) for c in os.environ["FFDI_TEST_CORES"].split(",")]  # the session's, before pinning
    mine = os.sched_getaffinity(0)
    assert mine == set(worker_cores(cores, int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")), count))
    assert worker_cores([0, 1], 0, 2) == [0] and worker_cores([0, 1], 1, 2) == [1]
    assert worker_cores([0, 1], 2, 3) == [0] and worker_cores([0, 1, 2, 3], 1, 2) == [1, 3]
    child = subprocess.run([sys.executable, "-c", "from ffdi import hardware; print(hardware.available_cores())"],
                           capture_output=True, text=True, check=True)
    assert int(child.stdout) == len(mine) and torch.get_num_threads() == len(mine)
