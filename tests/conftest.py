import os
from pathlib import Path

import pytest

from ffdi.config import SampleConfig
from ffdi.sample import generate

ROOT = Path(__file__).resolve().parents[1]

# Tests run offline; keep the tools from trying the network.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

TINY = SampleConfig(n_train=96, n_val=48, n_test=12, size=32, seed=3)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny sample data set in the multiFFDI layout, made once per session."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(TINY, root)
    return root
