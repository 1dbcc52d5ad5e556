"""The whole pipeline once, on a tiny sample: the one end-to-end run of `make test-fast`. `make test`
leaves it out (marker `smoke`): test_e2e runs the same pipeline and checks all of this and more."""

import json

import pandas as pd
import pytest
from sklearn import metrics as skm

from tests.project import TINY_PARAMS, make_project


@pytest.mark.smoke
def test_dvc_repro_runs_every_stage_on_a_tiny_sample(tmp_path):
    p = make_project(tmp_path / "repo", {**TINY_PARAMS, "tracking": {"log_model": False}})  # test_e2e logs models
    out = p.out("dvc", "repro")
    for stage in ("sample", "listing", "frames", "prepare", "train", "evaluate", "predict"):
        assert f"Running stage '{stage}'" in out
    m = json.loads((p.repo / "metrics.json").read_text())
    preds = pd.read_csv(p.repo / "reports" / "evaluate" / "val_predictions.csv")
    assert m["images"] == len(preds) == TINY_PARAMS["sample"]["n_val"]
    assert m["val"]["roc_auc"] == skm.roc_auc_score(preds.target, preds.y_pred)
    assert len(pd.read_csv(p.repo / "reports" / "history.csv")) == TINY_PARAMS["train"]["epochs"]
    submission = pd.read_csv(p.repo / "submission.csv")
    assert list(submission.columns) == ["img_name", "y_pred"] and len(submission) == TINY_PARAMS["sample"]["n_test"]
    assert submission.y_pred.between(0, 1).all()
