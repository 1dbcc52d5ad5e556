"""`ffdi score`: a row per file, unreadable files explained, streaming, and the submission's numbers."""

import io
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ffdi.cli import detector_kit, score
from ffdi.config import AugmentConfig, Params
from ffdi.inference.detector import Detector
from ffdi.model import checkpoint
from ffdi.model.networks import build_model
from ffdi.schema import EVALUATION_DETAILS
from ffdi.tracking.pyfunc_model import MODEL_NAME
from tests.project import copy_project


def random_checkpoint(path: Path, image_size: int = 32) -> Path:
    """An untrained model's checkpoint, as the train stage writes it: scores are arbitrary but fixed."""
    torch.manual_seed(0)
    params = Params(augment=AugmentConfig(resize=image_size, image_size=image_size))
    checkpoint.save(path, checkpoint.snapshot(build_model(params.model), params, 0, {}, "fp32"))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture
def images(tiny_data, tmp_path, monkeypatch) -> Path:
    """A folder of good and bad files; the current directory has no params.yaml (so no test-time views)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    jpgs = sorted((tiny_data / "valset").glob("*.jpg"))
    for src in jpgs[:3]:
        shutil.copy(src, folder / src.name)
    shutil.copy(jpgs[3], folder / "sub" / "nested.jpg")
    Image.open(jpgs[4]).save(folder / "photo.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpgs[5].read_bytes()[: jpgs[5].stat().st_size // 2])
    (folder / "notes.jpg").write_text("not an image, only named like one\n")
    (folder / "labels.txt").write_text("img_name,target\n")  # not an image suffix: not listed
    return folder


def test_paths_folders_and_globs_expand_in_order_once(images):
    found = detector_kit.expand_paths([str(images)])
    names = [Path(p).name for p in found]
    assert names == sorted(names[:-1]) + ["nested.jpg"]  # the folder's files sorted, then its subfolder
    assert "labels.txt" not in names and len(found) == 8
    globbed = detector_kit.expand_paths([f"{images}/*.png", f"{images}/**/*.jpg", str(images / "photo.png")])
    assert Path(globbed[0]).name == "photo.png" and sorted(globbed) == sorted(found)
    # A file named outright is taken whatever its suffix; a missing one is kept, to get its row.
    assert detector_kit.expand_paths([str(images / "labels.txt"), "gone.jpg"]) == [
        str(images / "labels.txt"),
        "gone.jpg",
    ]
    with pytest.raises(detector_kit.UsageError, match="no image file matches"):
        detector_kit.expand_paths([f"{images}/*.gif"])
    (images / "none").mkdir()
    with pytest.raises(detector_kit.UsageError, match="none: folder holds no image files"):
        detector_kit.expand_paths([str(images / "none")])


def test_a_row_per_file_bad_ones_explained_and_exit_3(images, model, capsys):
    out = images.parent / "results.csv"
    assert score.main([str(images), "--model", str(model), "--out", str(out), "--batch-size", "3"]) == 3
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert list(rows.columns) == ["p_fake", "label", "error"] and len(rows) == 8
    errors = {Path(p).name: e for p, e in rows.error.items() if e}
    assert errors.keys() == {"empty.jpg", "truncated.jpg", "notes.jpg"}
    assert errors["empty.jpg"] == "empty file"
    assert errors["truncated.jpg"].startswith("cannot decode (")
    assert errors["notes.jpg"].startswith("cannot decode (cannot identify image file")
    bad = rows[rows.error != ""]
    assert (bad.p_fake == "").all() and (bad.label == "").all()

    good = rows[rows.error == ""]
    expected = Detector.load(model, "cpu").score(good.index.tolist())
    np.testing.assert_allclose(good.p_fake.astype(float), expected, atol=1e-8)
    assert (good.label == np.where(expected >= 0.5, "fake", "real")).all()
    err = capsys.readouterr().err
    assert "scored 5 of 8 images" in err and "3 could not be scored" in err
    assert "tta none (default: no params.yaml here)" in err and "precision fp32" in err


def test_json_output_and_views_and_threshold_from_params_yaml(images, model):
    (images.parent / "params.yaml").write_text("predict:\n  tta: [hflip, vflip]\neval:\n  threshold: 0.3\n")
    out = images.parent / "results.json"
    bad = {"empty.jpg", "truncated.jpg", "notes.jpg"}
    good = sorted(str(p) for p in images.glob("*.jpg") if p.name not in bad)
    assert len(good) == 3
    assert score.main([*good, str(images / "empty.jpg"), "--model", str(model), "--out", str(out)]) == 3
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == [*good, str(images / "empty.jpg")]
    assert rows[-1] == {"path": str(images / "empty.jpg"), "p_fake": None, "label": None, "error": "empty file"}
    expected = Detector.load(model, "cpu", tta=["hflip", "vflip"]).score(good)
    np.testing.assert_allclose([r["p_fake"] for r in rows[:-1]], expected, atol=1e-12)
    assert [r["label"] for r in rows[:-1]] == ["fake" if p >= 0.3 else "real" for p in expected]


def test_an_ensemble_scores_the_exact_mean_of_its_models(images, model, tiny_data, tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.manual_seed(1)  # a second, different model with another input size
    params = Params(augment=AugmentConfig(resize=24, image_size=24))
    checkpoint.save(other, checkpoint.snapshot(build_model(params.model), params, 0, {}, "fp32"))
    paths = sorted(str(p) for p in images.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png"))
    out = tmp_path / "ens.csv"
    code = score.main([*paths, "--model", str(model), "--model", str(other), "--tta", "hflip", "--out", str(out)])
    assert code == 3  # the bad files still get their rows
    rows = pd.read_csv(out, keep_default_na=False)
    good = rows[rows.error == ""]
    a, b = (Detector.load(m, "cpu", tta=["hflip"]).score(good.path) for m in (model, other))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(good.p_fake.astype(float), (a + b) / 2, atol=1e-12)
    assert "an ensemble of 2" in capsys.readouterr().err
    # A manifest through Ensemble.score_manifest: the same mean, and per-view figures averaged alike.
    from ffdi.config import DataConfig
    from ffdi.data.labels import prepare, read_manifest
    from ffdi.inference.detector import Ensemble

    prepare(DataConfig(root=str(tiny_data)), tmp_path / "prepared")
    val = read_manifest(tmp_path / "prepared" / "val.csv")
    members = [Detector.load(m, "cpu", tta=["hflip"]) for m in (model, other)]
    ens = Ensemble(members).score_manifest(val, 16)
    each = [m.score_manifest(val, 16) for m in members]
    np.testing.assert_allclose(ens.prob, (each[0].prob + each[1].prob) / 2, atol=1e-12)
    np.testing.assert_allclose(
        ens.prob_single_view, (each[0].prob_single_view + each[1].prob_single_view) / 2, atol=1e-12
    )


def test_without_out_csv_goes_to_stdout_and_all_good_exits_0(images, model, capsys):
    good = str(images / "photo.png")
    assert score.main([good, "--model", str(model), "--tta", "hflip", "--threshold", "0"]) == 0
    captured = capsys.readouterr()
    rows = pd.read_csv(io.StringIO(captured.out), keep_default_na=False)
    assert rows.path.tolist() == [good] and rows.error.tolist() == [""] and rows.label.tolist() == ["fake"]
    assert "tta hflip (--tta)" in captured.err and "scored 1 of 1" in captured.err


def test_usage_and_model_errors_exit_1(images, model, capsys):
    assert score.main([str(images), "--model", str(images / "missing.pt")]) == 1
    assert "missing.pt: model not found" in capsys.readouterr().err
    assert score.main([str(images)]) == 1  # the default models/model.pt is not here
    assert "train one with `dvc repro`" in capsys.readouterr().err
    assert score.main([str(images / "notes.jpg"), "--model", str(images / "notes.jpg")]) == 1
    assert "cannot load the model" in capsys.readouterr().err
    assert score.main([str(images), "--model", str(model), "--out", "results.xlsx"]) == 1
    assert score.main([str(images), "--model", str(model), "--threshold", "2"]) == 1
    assert score.main([str(images), "--model", str(model), "--tta", "spin"]) == 1
    assert "unknown view 'spin'" in capsys.readouterr().err
    assert score.main(["--bogus"]) == 1
    assert score.main([f"{images}/*.gif", "--model", str(model)]) == 1
    assert not Path("results.xlsx").exists()


def test_rows_stream_a_batch_at_a_time(images, model):
    """Memory stays flat: rows come out before the next batch is read, whatever the number of files."""
    det = Detector.load(model, "cpu")
    pulled = 0

    def endless():  # more files than fit in memory, as far as score_rows can tell
        nonlocal pulled
        for p in itertools.cycle(sorted(str(p) for p in images.glob("*.jpg"))):
            pulled += 1
            yield p

    rows = score.score_rows(det, endless(), batch_size=16)
    first = list(itertools.islice(rows, 100))
    assert len(first) == 100 and pulled <= 100 + 16
    assert {r.error for r in first} >= {"", "empty file"}


def test_the_ffdi_command_has_score_and_explain(images, model, capsys):
    from ffdi.cli.main import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert "score:" in listed and "explain:" in listed
    assert main(["score", str(images / "empty.jpg"), "--model", str(model)]) == 3


# --- the real pipeline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(shared_project, tmp_path_factory):
    return copy_project(shared_project, tmp_path_factory.mktemp("score") / "repo")


@pytest.mark.slow
def test_score_agrees_with_the_submission_and_evaluate(project):
    """`ffdi score` with its defaults, in the project, gives the submission's numbers (same views, precision)."""
    repo = project.repo
    proc = project.sh("ffdi", "score", "data/labelled/testset", "--out", "scores.csv", "--batch-size", "5")
    assert "tta hflip (params.yaml predict.tta)" in proc.stderr
    scored = pd.read_csv(repo / "scores.csv", keep_default_na=False)
    scored["img_name"] = [os.path.basename(p) for p in scored.path]
    submission = pd.read_csv(repo / "submission.csv", dtype={"img_name": str})
    both = submission.merge(scored, on="img_name", validate="1:1")
    assert len(both) == len(submission) == 12 and (both.error == "").all()
    np.testing.assert_allclose(both.p_fake.astype(float), both.y_pred, atol=1e-6)

    project.sh("ffdi", "score", "data/labelled/valset", "--out", "val.csv")
    val = pd.read_csv(repo / "val.csv")
    val["img_name"] = [os.path.basename(p) for p in val.path]
    evaluated = pd.read_csv(repo / "reports" / "evaluate" / "val_predictions.csv", dtype={"img_name": str})
    both = evaluated.merge(val, on="img_name", validate="1:1")
    assert len(both) == 48
    np.testing.assert_allclose(both.p_fake, both.y_pred, atol=1e-6)


@pytest.mark.slow
def test_score_a_model_logged_in_mlflow(project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project.repo / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("ffdi")
    found = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    # One logged model per run, the served detector (evaluate), which carries the checkpoint.
    assert [m.name for m in found] == [MODEL_NAME]
    project.sh("ffdi", "score", "data/labelled/testset", "--out", "local.csv")
    local = pd.read_csv(project.repo / "local.csv")
    for logged in found:
        project.sh("ffdi", "score", "data/labelled/testset", "--model", f"models:/{logged.model_id}", "--out", "m.csv")
        from_mlflow = pd.read_csv(project.repo / "m.csv")
        assert from_mlflow.path.tolist() == local.path.tolist()
        np.testing.assert_allclose(from_mlflow.p_fake, local.p_fake, atol=1e-12)


@pytest.mark.slow
def test_predict_ensemble_writes_the_mean_submission_and_reports_its_val_metrics(project, tmp_path):
    """predict.ensemble: this run's model averaged with another (here a checkpoint file); the
    submission is the mean, and details.json `ensemble` is the same ensemble's val score."""
    from sklearn import metrics as skm

    repo = project.repo
    other = random_checkpoint(tmp_path / "other.pt")
    before = pd.read_csv(repo / "submission.csv", dtype={"img_name": str})
    import yaml

    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["predict"]["ensemble"] = [str(other)]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    project.sh("dvc", "repro")
    after = pd.read_csv(repo / "submission.csv", dtype={"img_name": str})
    test = sorted((repo / "data/labelled/testset").glob("*.jpg"))
    theirs = dict(zip([p.name for p in test], Detector.load(other, "cpu", tta=["hflip"]).score(test)))
    mine = dict(zip(before.img_name, before.y_pred))
    np.testing.assert_allclose(after.y_pred, [(mine[n] + theirs[n]) / 2 for n in after.img_name], atol=1e-6)

    report = json.loads((repo / "reports" / "evaluate" / EVALUATION_DETAILS).read_text())
    assert report["ensemble"]["models"] == ["models/model.pt", str(other)]
    val = pd.read_csv(repo / "reports" / "evaluate" / "val_predictions.csv", dtype={"img_name": str})
    val_paths = [repo / "data/labelled/valset" / n for n in val.img_name]
    their_val = Detector.load(other, "cpu", tta=["hflip"]).score(val_paths)
    expected = skm.roc_auc_score(val.target, (val.y_pred + their_val) / 2)
    assert report["ensemble"]["roc_auc"] == pytest.approx(expected, abs=1e-6)
    assert report["val"]["roc_auc"] == pytest.approx(skm.roc_auc_score(val.target, val.y_pred), abs=1e-9)
    params_file.write_text(original)  # leave the project as the other tests found it
