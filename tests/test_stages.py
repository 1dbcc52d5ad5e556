import os
import subprocess
import sys

import pytest

from ffdi.config import TrackingConfig
from ffdi.schema import SKIPPED_IMAGES
from ffdi.tracking import mlflow_run
from tests.conftest import ROOT


def run_stage(stage, cwd, params_text):
    """The stage as dvc.yaml's cmd runs it (with the paths it gives), in cwd."""
    from ffdi.stage import _cmd_args

    (cwd / "params.yaml").write_text(params_text)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_ROOT": str(cwd)}
    args = _cmd_args(stage, str(ROOT / "dvc.yaml"))
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "stage, text, message",
    [
        ("train", "train:\n  lrr: 0.1\n", "error: params.yaml: unknown key train.lrr (did you mean train.lr?)"),
        ("train", "train:\n  batch_size: 0\n", "error: params.yaml: train.batch_size must be > 0, got 0"),
        ("prepare", "data:\n  root: /no/such/dir\n", "error: data.root '/no/such/dir': folder not found"),
    ],
)
@pytest.mark.slow
def test_stage_errors_are_one_clear_line(tmp_path, stage, text, message):
    proc = run_stage(stage, tmp_path, text)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in proc.stderr
    # Nothing written: no MLflow store, no outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once closed


@pytest.mark.slow
def test_unreachable_tracking_server_fails_fast(tmp_path):
    import time

    port = closed_port()
    t0 = time.monotonic()
    proc = run_stage("train", tmp_path, f"tracking:\n  uri: http://127.0.0.1:{port}\n")
    assert time.monotonic() - t0 < 30  # MLflow's own retries would take minutes
    assert proc.returncode == 1
    assert f"error: tracking.uri http://127.0.0.1:{port}: server unreachable" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_skipped_images_are_listed_and_counted(tmp_path, monkeypatch):
    import mlflow

    from ffdi.tracking.mlflow_run import log_skipped

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with mlflow_run.run(TrackingConfig(experiment="s")) as run:
        log_skipped([("/d/b.jpg", "/d/b.jpg: empty file"), ("/d/a.jpg", "/d/a.jpg: cannot decode")], "train")
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).data.metrics[SKIPPED_IMAGES + "train"] == 2
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/train/skipped_images.csv")
    assert text.splitlines() == ["path,reason", "/d/a.jpg,/d/a.jpg: cannot decode", "/d/b.jpg,/d/b.jpg: empty file"]


def test_the_train_and_val_sets_are_the_runs_dataset_inputs(tmp_path, monkeypatch):
    """The runs table's Dataset column: each manifest's name, a digest of its rows and their number."""
    import json

    import mlflow
    import pandas as pd

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train = pd.DataFrame({"img_name": ["a.jpg", "b.jpg", "c.jpg"], "target": [0, 1, 1], "group": ["", "x", "y"]})
    val = train.iloc[:2].assign(path=["/d/a.jpg", "/d/b.jpg"])
    with mlflow_run.run(TrackingConfig(experiment="s")) as run:
        mlflow_run.log_datasets(tmp_path, {"training": ("train", train), "validation": ("val", val)})
    inputs = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    got = {i.dataset.name: (i.tags[0].value, i.dataset.digest, json.loads(i.dataset.profile)) for i in inputs}
    assert {k: (c, p["num_rows"]) for k, (c, _, p) in got.items()} == {
        "train": ("training", 3),
        "val": ("validation", 2),
    }
    # The digest is of the rows' names, targets and manipulations: the same rows, the same digest.
    with mlflow_run.run(TrackingConfig(experiment="s")) as again:
        mlflow_run.log_datasets(tmp_path, {"training": ("train", train.assign(path="/elsewhere"))})
    (same,) = mlflow.MlflowClient().get_run(again.info.run_id).inputs.dataset_inputs
    assert same.dataset.digest == got["train"][1] != got["val"][1] and len(got["train"][1]) == 16


def test_failed_run_is_marked_failed_with_error(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(experiment="t")
    with pytest.raises(RuntimeError):
        with mlflow_run.run(cfg, run_name="boom"):
            raise RuntimeError("disk on fire")
    assert mlflow_run.tracking_uri(cfg) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    (run,) = mlflow.search_runs(experiment_names=["t"], output_format="list")
    assert run.info.status == "FAILED"
    assert run.data.tags["ffdi.error"] == "RuntimeError: disk on fire"


def test_the_experiment_says_how_to_read_a_run_and_the_run_name_says_the_variant(tmp_path, monkeypatch):
    import mlflow

    from ffdi.config import ModelConfig, Params

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    mlflow_run.setup(TrackingConfig(experiment="new"))
    assert mlflow.get_experiment_by_name("new").tags["mlflow.note.content"] == mlflow_run.DESCRIPTION
    old = mlflow.MlflowClient().create_experiment("old")  # as an older ffdi, or a person, made it
    mlflow_run.setup(TrackingConfig(experiment="old"))
    assert mlflow.get_experiment(old).tags["mlflow.note.content"] == mlflow_run.DESCRIPTION
    # An older ffdi's description (its metric names are gone) is brought up to date; a person's is left.
    client = mlflow.MlflowClient()
    older = "One run per pipeline run (`dvc repro`, `dvc exp run`), named after its DVC experiment.\n- `eval_roc_auc`"
    client.set_experiment_tag(old, "mlflow.note.content", older)
    mlflow_run.setup(TrackingConfig(experiment="old"))
    assert mlflow.get_experiment(old).tags["mlflow.note.content"] == mlflow_run.DESCRIPTION
    client.set_experiment_tag(old, "mlflow.note.content", "my notes")
    mlflow_run.setup(TrackingConfig(experiment="old"))
    assert mlflow.get_experiment(old).tags["mlflow.note.content"] == "my notes"
    assert mlflow_run.run_name(Params(model=ModelConfig(se=True))) == "se-resnet18-seed0"
    assert mlflow_run.run_name(Params()) == "resnet18-seed0"
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-reef")
    assert mlflow_run.run_name(Params()) == "bushy-reef"
