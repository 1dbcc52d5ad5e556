"""The real pipeline, as a user runs it, in a copy of the shared trained project (tests/project.py).

The shared project ran `dvc repro`; here a rerun changes nothing, `dvc exp run -S model.se=true`
trains the SE variant, and a re-evaluation (`dvc exp run --temp -S +eval.extra_sets.x=...`, which DVC
runs in .dvc/tmp and which reuses the SE training) trains nothing; the tests below inspect what each
left behind.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from ffdi.schema import (
    EPOCH_TRAIN,
    EPOCH_VAL,
    EVAL,
    EVAL_ROC_AUC,
    EVAL_TPR_AT_FPR,
    EVALUATION_DETAILS,
    EXTRA,
    MODELS_TAG,
    REEVALUATION,
    RUN_KIND_TAG,
    TRAIN_RUN_TAG,
)
from ffdi.tracking.mlflow_run import PARENT_TAG, epoch_metric_name
from ffdi.tracking.pyfunc_model import MODEL_NAME
from tests.conftest import ROOT
from tests.project import SHARED_PARAMS, copy_project, mlflow_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(shared_project, tmp_path_factory):
    p = copy_project(shared_project, tmp_path_factory.mktemp("e2e") / "repo")
    repo = p.repo
    baseline = {
        "commit": p.out("git", "rev-parse", "HEAD"),
        # The whole report (metrics.json holds its headline).
        "metrics": json.loads((repo / "reports" / "evaluate" / EVALUATION_DETAILS).read_text()),
        "submission": pd.read_csv(repo / "submission.csv", dtype={"img_name": str}),
        "val_predictions": pd.read_csv(repo / "reports" / "evaluate" / "val_predictions.csv"),
        "summary": json.loads((repo / "prepared" / "summary.json").read_text()),
        # Later experiments overwrite the workspace checkpoint; keep the baseline's.
        "model": Path(shutil.copy2(repo / "models" / "model.pt", repo.parent / "baseline_model.pt")),
    }
    baseline["exp_commit"] = p.commit("baseline run")
    baseline["rerun"] = p.out("dvc", "repro")  # nothing changed: nothing may run
    # The runtime group says how to compute, not what: no stage tracks it.
    params_text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(
        params_text.replace("  workers: 0", "  workers: 1").replace("  device: auto", "  device: cpu")
    )
    assert (repo / "params.yaml").read_text() != params_text
    baseline["status_runtime"] = p.out("dvc", "status")
    (repo / "params.yaml").write_text(params_text)
    p.sh("dvc", "exp", "run", "-S", "model.se=true")
    # Another evaluation of the workspace's (SE) training, which DVC takes from its cache: one more
    # labelled set, in a temporary experiment that DVC runs in .dvc/tmp.
    _, _, before = mlflow_runs(repo)
    log = p.out("dvc", "exp", "run", "--temp", "-S", "+eval.extra_sets.x=data/other")
    temp_name = re.search(r"Ran experiment\(s\): (\S+)", log)
    assert temp_name, log
    reevaluated = {"before": before[1], "log": log, "name": temp_name[1]}
    exp_show = json.loads(p.out("dvc", "exp", "show", "--json"))
    return {"repo": repo, "baseline": baseline, "exp_show": exp_show, "reevaluated": reevaluated}


@pytest.fixture(scope="module")
def runs(project):
    """The two pipeline runs (training and all); not the re-evaluation nested under the SE one."""
    client, exp, found = mlflow_runs(project["repo"])
    return client, exp, [r for r in found if PARENT_TAG not in r.data.tags]


def test_a_reevaluation_of_a_cached_training_is_a_run_of_its_own(project):
    """`dvc exp run -S '+eval.extra_sets.x=DIR'` reuses the cached training: evaluate logs into a new run,
    nested under the training run and named after the DVC experiment, which points to the training run's
    models; the training run keeps its metrics, and its models are not logged again."""
    import mlflow

    r = project["reevaluated"]
    assert "Stage 'train' didn't change, skipping" in r["log"] and "Running stage 'evaluate'" in r["log"]
    client, exp, found = mlflow_runs(project["repo"])
    (train,) = [run for run in found if run.info.run_id == r["before"].info.run_id]
    (new,) = [run for run in found if PARENT_TAG in run.data.tags]
    assert len(found) == 3 and new.info.status == "FINISHED"
    assert new.data.tags[PARENT_TAG] == new.data.tags[TRAIN_RUN_TAG] == train.info.run_id
    assert new.data.tags[RUN_KIND_TAG] == REEVALUATION
    assert new.info.run_name == new.data.tags["dvc.exp_name"] != "" and new.info.run_name in r["log"]
    # The training run is as it was: the same metrics, none of set x, one history per curve.
    assert train.data.metrics == r["before"].data.metrics
    assert not any(k.startswith(f"{EXTRA}x/") for k in train.data.metrics)
    assert len(client.get_metric_history(train.info.run_id, EVAL_ROC_AUC)) == 1
    # The new run holds the whole evaluation, the extra set's too, with the same val numbers (same model).
    assert new.data.metrics[EVAL_ROC_AUC] == train.data.metrics[EVAL_ROC_AUC]
    assert 0 <= new.data.metrics[f"{EXTRA}x/roc_auc"] <= 1 and f"{EXTRA}x/images" in new.data.metrics
    assert new.data.params["eval.extra_sets.x"] == "data/other"
    # Its models are the training run's, by reference: no model logged from the new run.
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert not [m for m in models if m.source_run_id == new.info.run_id]
    trained = sorted(f"{m.name}=models:/{m.model_id}" for m in models if m.source_run_id == train.info.run_id)
    assert trained and new.data.tags[MODELS_TAG] == ", ".join(trained)
    # compare and generalisation count the training run once, not its re-evaluation again.
    from ffdi.analysis.runs import finished_pipeline_runs

    mlflow.set_tracking_uri(f"sqlite:///{project['repo'] / 'mlflow.db'}")
    assert new.info.run_id not in {x.run_id for x in finished_pipeline_runs("ffdi")}


def test_finished_runs_in_one_store(project, runs):
    _, exp, found = runs
    assert [r.info.status for r in found] == ["FINISHED"] * 2
    assert exp.artifact_location == (project["repo"] / "mlartifacts").as_uri()
    # The UI's Description tab says how to read a run.
    assert "step = epoch" in exp.tags["mlflow.note.content"] and f"`{EVAL_ROC_AUC}`" in exp.tags["mlflow.note.content"]
    # The --temp run executed in .dvc/tmp; nothing may be stored there.
    assert not list((project["repo"] / ".dvc").rglob("mlflow.db"))


def test_repro_with_nothing_changed_runs_nothing(project, runs):
    out = project["baseline"]["rerun"]
    for stage in ("sample", "frames", "prepare", "train", "evaluate", "predict"):
        assert f"Stage '{stage}' didn't change, skipping" in out
    # listing runs every time (seconds: it lists the images) and nothing else does.
    assert out.count("Running stage") == 1 and "Running stage 'listing'" in out
    _, _, found = runs
    assert len(found) == 2  # repro, exp run: the no-op rerun made none


def test_runtime_params_rerun_no_stage(project):
    status = project["baseline"]["status_runtime"]
    stages = [line.rstrip(":") for line in status.splitlines() if line and not line.startswith((" ", "\t"))]
    assert stages == ["listing"] and "always changed" in status, status  # listing runs every time, by design


def test_each_run_records_what_reproduces_it(project, runs):
    from importlib.metadata import version

    import mlflow
    import yaml

    client, _, (base, se) = runs
    lock = yaml.safe_load((project["repo"] / "dvc.lock").read_text())["stages"]["prepare"]
    prepared_md5 = next(o["md5"] for o in lock["outs"] if o["path"] == "prepared")
    data_md5 = next(d["md5"] for d in lock["deps"] if d["path"] == "data/listing.json")
    for run in (base, se):
        tags = run.data.tags
        assert tags["dvc.prepared_md5"] == prepared_md5 and tags["dvc.data_md5"] == data_md5
        assert tags["git.dirty"] in ("true", "false")
        params = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/reproduce/params.yaml"))
        assert params["model"]["se"] == (run.data.params["model.se"] == "True")
        assert params["train"]["seed"] == int(run.data.params["train.seed"])
        packages = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/reproduce/packages.txt").splitlines()
        for dist in ("torch", "timm", "mlflow", "dvc"):
            assert f"{dist}=={version(dist)}" in packages
    # Code as committed. -S edits params.yaml, but params are logged in full, so that is not "dirty".
    assert base.data.tags["git.dirty"] == "false" and se.data.tags["git.dirty"] == "false"


def test_params_differ_only_where_asked(runs):
    _, _, (base, se) = runs
    diff = lambda a, b: {k for k in a.data.params if a.data.params[k] != b.data.params.get(k)}  # noqa: E731
    assert diff(base, se) == {"model.se"}
    assert base.data.params["model.se"] == "False" and se.data.params["model.se"] == "True"
    assert base.data.params["train.epochs"] == str(SHARED_PARAMS["train"]["epochs"])
    assert "augment.resize" in base.data.params


def test_per_epoch_metrics_have_epoch_steps(runs):
    client, _, found = runs
    for run in found:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, epoch_metric_name(key)))
            assert steps == list(range(SHARED_PARAMS["train"]["epochs"])), (run.info.run_name, key)


def test_tags(project, runs):
    _, _, (base, se) = runs
    b = project["baseline"]
    assert base.data.tags["git.commit"] == b["commit"]
    assert se.data.tags["git.commit"] == b["exp_commit"]
    assert base.data.tags["dvc.exp_name"] == ""
    assert se.data.tags["dvc.exp_name"]
    assert se.data.tags["dvc.exp_name"] == se.info.run_name
    for run in (base, se):
        assert run.data.tags["data.hash"] == b["summary"]["data_hash"]


def test_metrics_match_sklearn_and_the_model(project, runs):
    b = project["baseline"]
    m, preds = b["metrics"]["val"], b["val_predictions"]
    labels = pd.read_csv(project["repo"] / "data" / "labelled" / "valset_label.txt")
    assert preds.img_name.tolist() == labels.img_name.tolist()
    assert preds.target.tolist() == labels.target.tolist()
    y, p = preds.target.to_numpy(), preds.y_pred.to_numpy()
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-4)
    fpr, tpr, _ = skm.roc_curve(y, p)
    assert m["tpr_at_fpr"] == pytest.approx(tpr[fpr <= 1e-3].max())
    assert b["metrics"]["images"] == len(labels)

    # The metrics really come from the trained model: re-score the saved checkpoint here, with
    # the scorer predict uses (same views, same precision): the same AUC to 1e-9.
    from ffdi.data.labels import read_manifest
    from ffdi.inference.detector import Detector

    detector = Detector.load(b["model"], "cpu", tta=["hflip"])
    manifest = read_manifest(project["repo"] / "prepared" / "val.csv")
    manifest["path"] = [str(project["repo"] / p) for p in manifest.path]
    res = detector.score_manifest(manifest, 32)
    assert res.index.tolist() == list(range(len(manifest))) and not res.skipped
    np.testing.assert_allclose(res.prob, p, atol=1e-9)
    assert skm.roc_auc_score(res.targets, res.prob) == pytest.approx(m["roc_auc"], abs=1e-9)
    # ... and that scorer, on the test split, wrote the submission.
    test = read_manifest(project["repo"] / "prepared" / "test.csv")
    test["path"] = [str(project["repo"] / p) for p in test.path]
    np.testing.assert_allclose(detector.score_manifest(test, 32).prob, b["submission"].y_pred, atol=1e-9)
    # Without test-time views the number differs, and is reported under its own name.
    assert b["metrics"]["val_no_tta"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, res.prob_single_view), abs=1e-9)

    # MLflow holds the same final numbers as metrics.json.
    _, _, (base, _) = runs
    assert base.data.metrics[EVAL_ROC_AUC] == pytest.approx(m["roc_auc"])
    assert base.data.metrics[EVAL_TPR_AT_FPR] == pytest.approx(m["tpr_at_fpr"])


def test_submission_rows(project):
    sub = project["baseline"]["submission"]
    names = pd.read_csv(project["repo"] / "data" / "labelled" / "testset_label.txt").img_name
    assert list(sub.columns) == ["img_name", "y_pred"]
    assert len(sub) == 12 and sub.img_name.tolist() == names.tolist()
    assert sub.y_pred.between(0, 1).all() and sub.y_pred.nunique() > 1


def test_artifacts_and_logged_models(project, runs):
    import mlflow

    from ffdi.inference.detector import Detector
    from ffdi.model.networks import count_se_modules

    client, exp, (base, se) = runs
    arts = {a.path for a in client.list_artifacts(se.info.run_id, "evaluate")}
    assert {"evaluate/roc.png", "evaluate/confusion.png", "evaluate/roc.csv", "evaluate/explain.png"} <= arts
    assert [a.path for a in client.list_artifacts(se.info.run_id, "predict")] == ["predict/submission.csv"]
    # The training curves as a picture, in the run and beside the other plots: readable offline.
    assert "evaluate/history.png" in arts
    assert (project["repo"] / "reports" / "evaluate" / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run, n_se in ((base, 0), (se, 8)):
        found = mlflow.search_logged_models(
            experiment_ids=[exp.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'",
            output_format="list",
        )
        # One logged model, the served pyfunc detector (evaluate): ffdi score and ffdi serve both load it.
        (logged,) = found
        assert logged.name == MODEL_NAME
        # The run stores the checkpoint once: among its artifacts and its model's, no file of a
        # megabyte or more twice, and exactly one as large as the checkpoint.
        big = _files_of_a_megabyte([run.info.artifact_uri, logged.artifact_location])
        assert len(big) == len(set(big.values())) == 1, big
        assert abs(next(iter(big)).stat().st_size - project["baseline"]["model"].stat().st_size) < 2**20
        # The Detector rebuilds the very scorer from the logged model's URI.
        detector = Detector.load(f"models:/{logged.model_id}", "cpu", tta=["hflip"])
        assert count_se_modules(detector.model) == n_se
        if run is base:
            images = sorted((project["repo"] / "data" / "labelled" / "valset").glob("*.jpg"))[:8]
            from_file = Detector.load(project["baseline"]["model"], "cpu", tta=["hflip"]).score(images)
            np.testing.assert_array_equal(detector.score(images), from_file)


def _files_of_a_megabyte(uris: list[str]) -> dict[Path, str]:
    """{path: sha256} of every file of 1 MiB or more under these file:// artifact locations."""
    import hashlib
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    found = {}
    for uri in uris:
        for f in Path(url2pathname(urlparse(uri).path)).rglob("*"):
            if f.is_file() and f.stat().st_size >= 2**20:
                found[f] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def test_dvc_exp_show_lists_both_with_auc(project, runs):
    _, _, (_, se) = runs
    rows = []
    for entry in project["exp_show"]:
        for rev in [entry] + [e for exp in entry.get("experiments") or [] for e in exp.get("revs", [])]:
            data = rev.get("data") or {}
            auc = (
                (((data.get("metrics") or {}).get("metrics.json") or {}).get("data") or {})
                .get("val", {})
                .get("roc_auc")
            )
            se_param = (
                (((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}).get("model", {}).get("se")
            )
            rows.append((rev.get("name") or rev.get("rev"), se_param, auc))
    with_auc = [r for r in rows if r[2] is not None]
    assert {r[1] for r in with_auc} >= {False, True}
    names = {r[0] for r in with_auc}
    assert se.data.tags["dvc.exp_name"] in names and project["reevaluated"]["name"] in names
    assert pytest.approx(project["baseline"]["metrics"]["val"]["roc_auc"]) in [r[2] for r in with_auc if r[1] is False]


def test_make_exps_shows_the_experiments_in_one_screen(project):
    """`make exps` (the command docs/comparing.md gives): val AUC and model.se of every experiment within
    160 columns, where plain `dvc exp show` has a column per metric, param and dep."""
    env = {**os.environ, "COLUMNS": "160"}
    out = subprocess.run(
        ["make", "-s", "exps", f"VENV={ROOT / '.venv'}"],
        cwd=project["repo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(line for line in lines if "Experiment" in line)
    assert "val.roc_auc" in header and "model.se" in header, header
    assert max(len(line) for line in lines) <= 160, out.stdout
    assert "…" not in header, out.stdout  # no column squeezed to an ellipsis
    assert sum(" True " in line or " False " in line for line in lines) >= 2  # both variants' rows


def test_make_plots_shows_every_plot_offline(project):
    """`make plots`: every plot of dvc.yaml as a PNG page with no script, so nothing loads from a CDN; each
    Vega chart of dvc.yaml has its PNG twin there (Loss and Val AUC: history.png)."""
    import yaml

    out = subprocess.run(
        ["make", "-s", "plots", f"VENV={ROOT / '.venv'}"],
        cwd=project["repo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    page = project["repo"] / "dvc_plots" / "offline" / "index.html"
    html = page.read_text()
    assert "<script" not in html and "http" not in html.replace("http-equiv", "")
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == len(set(images)) == 6, images
    for src in images:
        assert (page.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    twin = {
        "reports/history.csv": "history",
        "reports/evaluate/roc.csv": "roc",
        "reports/evaluate/val_predictions.csv": "confusion",
        "reports/evaluate/groups.csv": "groups",
        "reports/evaluate/robustness": "robustness",
    }
    for plot in yaml.safe_load((project["repo"] / "dvc.yaml").read_text())["plots"]:
        if isinstance(plot, dict):  # a Vega chart: its data file(s) or folder
            (pid, spec) = next(iter(plot.items()))
            data = list(spec["y"]) if isinstance(spec["y"], dict) else [pid]
            assert all(any(twin[d] in i for i in images) for d in data), (pid, images)


CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # The machine has no internet: without these Chromium keeps dialling Google's hosts.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "test-artifacts"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(project):
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    log = open(project["repo"].parent / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{project['repo'] / 'mlflow.db'}",
            # One process serves a browser; the default four each import MLflow on the suite's two cores.
            "--workers",
            "1",
        ],
        cwd=project["repo"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # generous: test files run side by side
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (project["repo"].parent / "mlflow-server.log").read_text()
                assert time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(0.5)
        yield url
    finally:  # also when it never came up: no server left behind
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_ui_in_a_real_browser(project, runs, mlflow_server):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed here (`make test` installs it with apt-get where it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import mlflow

    _, exp, (base, se) = runs
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id],
        filter_string=f"source_run_id = '{se.info.run_id}'",
        output_format="list",
    )
    SCREENSHOTS.mkdir(exist_ok=True)
    app = f"{mlflow_server}/#/experiments/{exp.experiment_id}"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            # 1. The experiment lists the baseline and the SE run.
            page.goto(f"{app}/runs")
            for run in (base, se):
                page.get_by_role("link", name=run.info.run_name, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=SCREENSHOTS / "mlflow-runs.png")

            # 2. A run's page opens on its training curves: the sections epoch/train and epoch/val (loss, acc,
            # auc over epochs, x axis: Step) come first, above the final metrics (eval, robust/...).
            page.goto(f"{app}/runs/{se.info.run_id}/model-metrics")
            first = page.get_by_text(EPOCH_TRAIN.rstrip("/"), exact=True).first
            first.wait_for(timeout=60_000)
            page.get_by_text("Step", exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=SCREENSHOTS / "mlflow-run-curves.png")
            tops = {
                name: page.get_by_text(name, exact=True).first.bounding_box()["y"]
                for name in (EPOCH_TRAIN.rstrip("/"), EPOCH_VAL.rstrip("/"), EVAL.rstrip("/"))
            }
            assert tops[EPOCH_TRAIN.rstrip("/")] < tops[EPOCH_VAL.rstrip("/")] < tops[EVAL.rstrip("/")], tops

            # 3. The model is there: its page names it and its source run, and the run has its artifacts.
            page.goto(f"{app}/models/{logged.model_id}")
            page.get_by_text(se.info.run_name).first.wait_for(timeout=60_000)
            assert logged.name in page.inner_text("body")
            page.screenshot(path=SCREENSHOTS / "mlflow-model.png")
            page.goto(f"{app}/runs/{se.info.run_id}/artifacts")
            for folder in ("evaluate", "predict"):
                page.get_by_text(folder, exact=True).first.wait_for(timeout=60_000)
        except Exception:
            page.screenshot(path=SCREENSHOTS / "mlflow-failure.png")
            raise
        finally:
            browser.close()
