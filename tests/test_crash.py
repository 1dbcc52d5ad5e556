"""Crashes lose nothing: a real SIGKILL and a real SIGTERM of a real `dvc repro`, then a rerun."""

import io
import os
import signal
import time

import pandas as pd
import pytest
import torch

from ffdi.tracking.mlflow_run import epoch_metric_name
from tests.project import make_shared_project, mlflow_runs

pytestmark = pytest.mark.slow

COMPARE = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr"]


def wait_for(predicate, timeout=400.0, what="condition"):  # generous: test files run two at a time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def saved_epoch(repo):
    """The last epoch saved in the resume state, or -1."""
    states = list((repo / ".ffdi" / "resume").glob("*/last.pt"))
    if not states:
        return -1
    try:
        return torch.load(states[0], weights_only=True)["epoch"]
    except Exception:  # replaced while we read it
        return -1


def test_sigkill_then_sigterm_then_rerun_matches_an_uninterrupted_run_to_the_last_digit(shared_project, tmp_path):
    # The uninterrupted run is the shared project's: its epochs (15 steps, seconds each) are long enough to be
    # killed in the middle of one, and this project is made the same way, with the same data.
    straight = shared_project
    expected = pd.read_csv(straight.repo / "reports" / "history.csv")[COMPARE]

    p = make_shared_project(tmp_path / "crashy")
    p.sh("dvc", "repro", "prepare")

    # 1. SIGKILL dvc and the stage together, as soon as epoch 0 is saved: inside epoch 1
    #    (or just before epoch 0 reaches MLflow, which the rerun must also mend).
    proc = p.popen("dvc", "repro", "train", log=tmp_path / "kill.log")
    wait_for(lambda: saved_epoch(p.repo) >= 0, what="epoch 0 to be saved")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert saved_epoch(p.repo) == 0, "the kill should land inside epoch 1"
    _, _, runs = mlflow_runs(p.repo)
    assert [r.info.status for r in runs] == ["RUNNING"]  # nothing could mark it

    # 2. Rerun; SIGTERM it inside the next epoch: it stops cleanly and says so in MLflow.
    proc = p.popen("dvc", "repro", "train", log=tmp_path / "term.log")
    wait_for(lambda: saved_epoch(p.repo) >= 1, what="epoch 1 to be saved")
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    log = (tmp_path / "term.log").read_text()
    assert "resuming from" in log and "after epoch 0" in log, log
    client, _, runs = mlflow_runs(p.repo)
    wait_for(lambda: client.get_run(runs[0].info.run_id).info.status == "KILLED", 120, "run marked KILLED")
    assert len(runs) == 1  # resumed into the same run, not a new one
    assert saved_epoch(p.repo) == 1

    # 3. Rerun to the end: same numbers as the uninterrupted run, one MLflow run, no duplicate epochs.
    out = p.sh("dvc", "repro", "train").stdout
    assert "after epoch 1" in out
    got = pd.read_csv(p.repo / "reports" / "history.csv")[COMPARE]
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    client, _, runs = mlflow_runs(p.repo)
    assert [r.info.status for r in runs] == ["FINISHED"]
    for key in ("val_auc", "train_loss"):
        history = client.get_metric_history(runs[0].info.run_id, epoch_metric_name(key))
        assert sorted(m.step for m in history) == [0, 1, 2], key
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(expected[key].tolist())
    assert not list((p.repo / ".ffdi" / "resume").iterdir())  # state dropped once done

    # The rest of the pipeline. This is a second run with the same params as `straight`, so
    # everything it writes must match to the last digit: the run is deterministic, and a crash
    # changes none of it.
    p.sh("dvc", "repro")
    for name in ("metrics.json", "reports/history.csv", "reports/evaluate/val_predictions.csv", "submission.csv"):
        a, b = (straight.repo / name).read_text(), (p.repo / name).read_text()
        if name == "reports/history.csv":  # wall-clock seconds differ, by design
            a, b = (
                pd.read_csv(io.StringIO(t)).drop(columns=["epoch_seconds", "train_img_per_s"]).to_csv() for t in (a, b)
            )
        assert a == b, name
