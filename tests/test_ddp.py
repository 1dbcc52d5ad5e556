"""The train stage under torchrun: 2 processes, gloo on CPU, DistributedDataParallel."""

import pandas as pd
import pytest

from ffdi.data.labels import read_manifest
from ffdi.evaluation.metrics import roc_auc
from ffdi.inference.detector import Detector
from ffdi.model import checkpoint
from ffdi.tracking.mlflow_run import epoch_metric_name
from tests.project import make_project, mlflow_runs

pytestmark = pytest.mark.slow

EPOCHS = 2
# 51 val images: not a multiple of 2 processes, so the sampler pads one shard with a repeat.
DDP_PARAMS = {
    "sample": {"n_train": 96, "n_val": 51, "n_test": 4, "size": 32, "seed": 5},
    "augment": {"resize": 32, "image_size": 32},
    # fp32, so a re-inference of the checkpoint here must give the very same val AUC.
    "train": {"epochs": EPOCHS, "batch_size": 8, "amp": "off"},
    "runtime": {"workers": 0},
    "tracking": {"log_model": False},
}


def test_torchrun_two_processes_one_run_whole_val_set(tmp_path):
    p = make_project(tmp_path / "ddp", DDP_PARAMS)
    p.sh("dvc", "repro", "prepare")
    out = p.sh("torchrun", "--standalone", "--nproc_per_node=2", "-m", "stages.train").stdout

    val = read_manifest(p.repo / "prepared" / "val.csv")
    n_val = len(val)
    assert n_val == 51
    # Only rank 0 reports (and writes checkpoints); the run records that 2 processes trained.
    assert out.count("best val_auc") == 1, out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch ")] == ["epoch 0", "epoch 1"]

    client, _, runs = mlflow_runs(p.repo)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.tags["train.world_size"] == "2"
    run_id = runs[0].info.run_id
    for key in ("val_auc", "train_loss", "val_images"):
        assert sorted(m.step for m in client.get_metric_history(run_id, epoch_metric_name(key))) == list(
            range(EPOCHS)
        ), key
    # Each epoch's val metrics cover every val image exactly once: no shard missing, no padding counted.
    assert [m.value for m in client.get_metric_history(run_id, epoch_metric_name("val_images"))] == [n_val] * EPOCHS
    history = pd.read_csv(p.repo / "reports" / "history.csv")
    assert history.epoch.tolist() == list(range(EPOCHS)) and history.val_images.tolist() == [n_val] * EPOCHS

    # The checkpoint is a plain single-process model, and its own val AUC is the one reported.
    ckpt = checkpoint.load(p.repo / "models" / "model.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    val["path"] = [str(p.repo / path) for path in val.path]
    detector = Detector.load(p.repo / "models" / "model.pt", "cpu", tta=["hflip"])
    res = detector.score_manifest(val, 16)
    assert sorted(res.index.tolist()) == list(range(n_val)) and res.view_logp.shape == (n_val, 2, 2)
    best = history.loc[history.epoch == ckpt["epoch"]].iloc[0]
    assert roc_auc(res.targets, res.prob) == pytest.approx(best.val_auc, abs=1e-9)
    assert ckpt["metrics"]["val_auc"] == best.val_auc
    assert res.log_loss() == pytest.approx(best.val_loss, rel=1e-6)
