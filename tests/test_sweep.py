"""A queued sweep run two at a time: every run lands, complete, in the one MLflow store."""

import itertools
import json
import re
import sys

import numpy as np
import pandas as pd
import pytest

from ffdi.schema import EVAL_ROC_AUC, PREDICT_IMAGES
from ffdi.tracking.mlflow_run import epoch_metric_name
from tests.project import make_project, mlflow_runs

pytestmark = pytest.mark.slow

SWEEP_PARAMS = {
    "sample": {"n_train": 64, "n_val": 32, "n_test": 4, "size": 32, "seed": 2},
    "augment": {"resize": 32, "image_size": 32},
    "train": {"epochs": 2, "batch_size": 16},
    "runtime": {"workers": 0},
    "eval": {"degradations": []},
    "tracking": {"log_model": False},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from ffdi.analysis import dvc_queue

    p = make_project(tmp_path_factory.mktemp("sweep") / "repo", SWEEP_PARAMS)
    p.sh("dvc", "exp", "run", "--queue", "-S", "model.se=false,true", "-S", "train.seed=1,2")
    names = list(dvc_queue.parse_queue_status(p.out("dvc", "queue", "status"))[0])
    try:
        p.start_queue(2)
        # `ffdi generalisation`'s wait, in the project: it starts the workers again when DVC's
        # workers exit with runs still queued (seen on this machine).
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(p.repo)
            status = dvc_queue.wait_for(names, timeout_s=900, poll_s=2, restart=lambda: p.start_queue(2))
    finally:
        p.sh("dvc", "queue", "stop", check=False)
    return p, status


def test_queue_sweep_lands_all_four_runs(sweep):
    p, status = sweep
    assert len(status) == 4 and set(status.values()) == {"Success"}, status
    commit = p.out("git", "rev-parse", "HEAD")
    client, exp, runs = mlflow_runs(p.repo)
    assert len(runs) == 4, [r.info.run_name for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}
    combos = {(r.data.params["model.se"], r.data.params["train.seed"]) for r in runs}
    assert combos == set(itertools.product(("False", "True"), ("1", "2")))
    assert len({r.info.run_name for r in runs}) == 4  # one per DVC experiment, no duplicates
    for run in runs:
        for key in ("train_loss", "val_loss", "val_auc"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, epoch_metric_name(key))]
            assert sorted(steps) == [0, 1], (run.info.run_name, key)
        assert EVAL_ROC_AUC in run.data.metrics and run.data.metrics[PREDICT_IMAGES] == 4
        assert run.data.tags["git.commit"] == commit
    # Nothing was stored inside DVC's temporary executor folders.
    assert not list((p.repo / ".dvc" / "tmp").rglob("mlflow.db"))
    assert not list((p.repo / ".dvc" / "tmp").rglob("mlartifacts"))

    shown = json.loads(p.out("dvc", "exp", "show", "--json"))
    names = {e["name"] for entry in shown for exp in entry.get("experiments") or [] for e in exp.get("revs", [])}
    assert {r.info.run_name for r in runs} <= names


def test_compare_report(sweep):
    p, _ = sweep
    proc = p.sh(sys.executable, "-m", "ffdi.cli.compare", "--boot", "200")
    client, _, runs = mlflow_runs(p.repo)
    pipeline = [r for r in runs if r.data.tags.get("ffdi.kind") == "pipeline"]
    (report_run,) = [r for r in runs if r.data.tags.get("ffdi.kind") == "compare"]
    assert len(pipeline) == 4

    # Mean and spread per group, computed here from the runs themselves.
    summary = pd.read_csv(p.repo / "reports" / "compare" / "summary.csv")
    assert summary.group.tolist() == ["model.se=False", "model.se=True"]
    for _, row in summary.iterrows():
        se = row.group.endswith("True")
        aucs = [r.data.metrics[EVAL_ROC_AUC] for r in pipeline if (r.data.params["model.se"] == "True") == se]
        assert row.runs == 2
        assert row["val AUC mean"] == pytest.approx(np.mean(aucs))
        assert row["val AUC sd"] == pytest.approx(np.std(aucs, ddof=1))
        assert f"{np.mean(aucs):.4f} ± {np.std(aucs, ddof=1):.4f}" in proc.stdout

    report = (p.repo / "reports" / "compare" / "report.md").read_text()
    assert "| model.se=True | model.se=False |" in report and "95% CI" in report
    ci = re.search(r"\| model\.se=True \| model\.se=False \| ([+-][0-9.]+) \| \[([+-][0-9.]+), ([+-][0-9.]+)\]", report)
    diff, low, high = map(float, ci.groups())
    assert low <= diff <= high
    for png in ("curves.png", "roc.png"):
        assert (p.repo / "reports" / "compare" / png).stat().st_size > 10_000
    arts = {a.path for a in client.list_artifacts(report_run.info.run_id, "compare")}
    assert {"compare/report.md", "compare/curves.png", "compare/roc.png", "compare/summary.csv"} <= arts
