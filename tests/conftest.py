import os
from pathlib import Path

import pytest

from ffdi.config import SampleConfig
from ffdi.sample.generate import generate

ROOT = Path(__file__).resolve().parents[1]

# Tests run offline; keep the tools from trying the network.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def worker_cores(cores: list[int], worker: int, count: int) -> list[int]:
    """The cores of xdist worker `worker` of `count`: a share of them, or one (shared) when there are
    more workers than cores."""
    return cores[worker::count] if count <= len(cores) else [cores[worker % len(cores)]]


def pytest_configure(config):
    """Under pytest-xdist, pin each worker to its own cores.

    Most of a pipeline test's time is subprocesses importing torch and MLflow on one core, or
    waiting, so several test files at a time use the cores. But every ffdi process sizes its torch
    threads from its CPU affinity (hardware.CpuShare), and unpinned workers each ran 2-thread
    training on the same 2 cores: the oversubscription slowed training several-fold. Pinned, each
    worker's pipelines (and the processes they start) size themselves to its cores: one thread each.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("FFDI_TEST_CORES", ",".join(map(str, cores)))  # before pinning, for test_hardware
    if worker and count > 1:
        mine = worker_cores(cores, int(worker.removeprefix("gw")), count)
        os.sched_setaffinity(0, mine)
        import torch

        torch.set_num_threads(len(mine))


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core this process may use (xdist's own count is psutil's physical
    cores, which ignores CPU affinity). One more worker than cores was slower here, and the MLflow UI
    test's server missed its start-up bound. At most 4: each worker's pipelines take 2-3 GiB, and the
    cores of a bigger machine go to its torch threads."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def pytest_collection_modifyitems(items):
    """Files with slow tests first, the FIRST ones first of all, so that under xdist no long file starts
    last. Whole files move: a file's module fixtures are set up once."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path.name not in FIRST, item.path not in slow))  # a stable sort


# The one that runs DVC's queue; the first user of the shared project (which builds it while the queue
# runs); the pipeline of `make test-fast`, which runs beside its unit tests.
FIRST = ("test_generalisation.py", "test_e2e.py", "test_smoke.py")


TINY = SampleConfig(n_train=96, n_val=48, n_test=12, size=32, seed=3)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny sample data set in the multiFFDI layout, made once per session."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(TINY, root)
    return root


@pytest.fixture(scope="session")
def manifests(tiny_data, tmp_path_factory):
    """The tiny data set's train and val manifests (the prepare stage's output)."""
    from ffdi.config import DataConfig
    from ffdi.data.labels import prepare, read_manifest

    out = tmp_path_factory.mktemp("prepared")
    prepare(DataConfig(root=str(tiny_data)), out)
    return read_manifest(out / "train.csv"), read_manifest(out / "val.csv")


@pytest.fixture(scope="session")
def shared_project(tmp_path_factory):
    """The trained project of tests/project.py (SHARED_PARAMS), built once per session: read it, or
    work on `copy_project(shared_project, ...)`."""
    from tests.project import build_shared_project

    base = tmp_path_factory.getbasetemp()
    # Under pytest-xdist each worker has its own base folder; their parent is the session's.
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return build_shared_project(root)
