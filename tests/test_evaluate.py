"""The evaluate stage: per-manipulation, held-out, extra-set and robustness metrics.

Unit tests score with a random model (fast). One module-scoped tiny project, with a `method`
column written into its labels, runs `dvc repro evaluate` and then
`dvc exp run -S 'data.holdout=["a"]'`; the slow tests below check what each left behind
against scikit-learn and against the Detector itself.
"""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from ffdi.config import AugmentConfig, DataConfig, EvalConfig, Params
from ffdi.data.labels import prepare, read_manifest
from ffdi.errors import ConfigError
from ffdi.evaluation import degrade
from ffdi.evaluation.evaluate import evaluate, headline, robustness_tables, summary_lines
from ffdi.inference.detector import Detector
from ffdi.model import checkpoint
from ffdi.model.networks import build_model
from ffdi.schema import (
    AUC,
    EVAL_DEGRADED_MEAN_AUC,
    EVAL_GROUP_AUC,
    EVALUATION_DETAILS,
    EXTRA,
    HELDOUT,
    ROBUST,
    SEEN,
    TRAIN,
)
from ffdi.tracking.evaluation import evaluation_metrics
from ffdi.tracking.pyfunc_model import MODEL_NAME
from tests.project import GROUPS, copy_project, mlflow_runs

# --- unit: degradations, with a random model ------------------------------------------------------


@pytest.fixture(scope="module")
def random_detector(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-unit")
    torch.manual_seed(0)
    params = Params(data=DataConfig(root=str(tiny_data)), augment=AugmentConfig(resize=36, image_size=32))
    checkpoint.save(out / "model.pt", checkpoint.snapshot(build_model(params.model), params, 0, {}, "fp32"))
    prepare(params.data, out / "prepared")
    return Detector.load(out / "model.pt", "cpu", tta=["hflip"]), read_manifest(out / "prepared" / "val.csv")


def test_degradations_parse_checked_and_ordered_mild_to_severe():
    specs = ["blur:2", "jpeg:50", "blur:0.5", "jpeg:90", "downscale:0.25", "downscale:0.5", "resize:24"]
    ordered = degrade.parse_all(specs)
    assert [d.label for d in ordered] == [
        "blur:0.5",
        "blur:2",
        "jpeg:90",
        "jpeg:50",
        "downscale:0.5",
        "downscale:0.25",
        "resize:24",
    ]
    assert [d.key for d in ordered][:2] == ["0p5", "2"]
    for bad, message in [
        ("jpeg:0", "integer in [1, 100]"),
        ("blur:0", "(0.0, 100.0)"),
        ("sharpen:1", "kind one of"),
        ("downscale:1.5", "(0.0, 1.0)"),
        ("jpeg", "kind:severity"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            EvalConfig(degradations=[bad])
    with pytest.raises(ConfigError, match="listed twice"):
        EvalConfig(degradations=["jpeg:70", "jpeg:70.0"])
    with pytest.raises(ConfigError, match="eval.extra_sets: name 'a b'"):
        EvalConfig(extra_sets={"a b": "x"})
    with pytest.raises(ConfigError, match="eval.extra_sets must be a mapping"):
        EvalConfig(extra_sets=["x"])
    assert EvalConfig(extra_sets={"other": "data/x"}).extra_sets == {"other": "data/x"}


def test_degraded_scores_are_the_detectors_scores_of_the_degraded_images(random_detector):
    det, val = random_detector
    rows = val.iloc[:6]
    degradations = degrade.parse_all(
        ["jpeg:40", "blur:1", "downscale:0.5", "resize:20", "noise:20", "resize:32", "webp:40", "social:60"]
    )
    probs = degrade.score_degraded(det, rows, degradations, batch_size=18)
    # The same degraded images handed to the Detector (JPEG as bytes, the rest as images), then the
    # files themselves; in one call, as few batch shapes cost the fewest warm-ups on CPU.
    images = [d.apply(Image.open(p).convert("RGB"), n) for d in degradations for p, n in zip(rows.path, rows.img_name)]
    expected = det.score(images + rows.path.tolist(), batch_size=18).reshape(len(degradations) + 1, len(rows))
    for d, e in zip(degradations, expected):
        np.testing.assert_allclose(probs[d], e, atol=1e-6, err_msg=d.label)
    # resize:32 leaves these 32 px images as they are: the clean scores, as the files give them.
    np.testing.assert_allclose(probs[degrade.Degradation("resize", 32.0)], expected[-1], atol=1e-6)
    # Deterministic, whatever the order: noise is seeded from the image's name.
    again = degrade.score_degraded(det, rows.iloc[::-1], degradations, batch_size=18)
    for d in degradations:
        np.testing.assert_allclose(again[d][::-1], probs[d], atol=1e-6)
    assert not np.allclose(probs[degrade.Degradation("noise", 20.0)], expected[-1])


def test_webp_and_social_are_pillows_own_operations():
    rng = np.random.default_rng(0)
    # Smooth with some noise, as a photo: flat noise would make every quality look alike.
    ramp = np.add.outer(np.arange(48), np.arange(64))[..., None] * np.array([2, 1, 3]) % 256
    img = Image.fromarray(np.clip(ramp + rng.normal(0, 8, ramp.shape), 0, 255).astype(np.uint8))

    def encoded(image, fmt, quality):
        buf = io.BytesIO()
        image.save(buf, format=fmt, quality=quality)
        return buf.getvalue()

    webp = degrade.Degradation.parse("webp:40").apply(img)
    assert webp == encoded(img, "WEBP", 40) and Image.open(io.BytesIO(webp)).format == "WEBP"
    assert webp != degrade.Degradation.parse("webp:90").apply(img)
    social = degrade.Degradation.parse("social:60").apply(img)
    assert social == encoded(img.resize((32, 24), Image.BICUBIC), "JPEG", 60)
    decoded = Image.open(io.BytesIO(social))
    assert decoded.format == "JPEG" and decoded.size == (32, 24)  # left at half size
    # Quality: higher is milder, so the curves run 90 -> 30 like jpeg's.
    assert [d.label for d in degrade.parse_all(["webp:30", "social:30", "webp:90", "social:90"])] == [
        "webp:90",
        "webp:30",
        "social:90",
        "social:30",
    ]
    assert [d.key for d in degrade.parse_all(["social:70", "webp:75"])] == ["70", "75"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("webp:0", "'webp:0': the WebP quality must be an integer in [1, 100]"),
        ("webp:101", "'webp:101': the WebP quality must be an integer in [1, 100]"),
        ("webp:70.5", "'webp:70.5': the WebP quality must be an integer in [1, 100]"),
        ("social:0", "'social:0': the JPEG quality after halving the size must be an integer in [1, 100]"),
        ("social:high", "'social:high': the JPEG quality after halving the size must be a number"),
        ("social", "'social' must be 'kind:severity'"),
    ],
)
def test_new_degradations_are_checked(spec, message):
    with pytest.raises(ConfigError, match=re.escape(f"eval.degradations: {message}")):
        EvalConfig(degradations=[spec])


def test_robustness_per_manipulation_equals_sklearn_on_its_fakes_and_all_real(random_detector):
    det, val = random_detector
    fake_rank = (val.target == 1).cumsum() - 1
    val = val.assign(group=[GROUPS[r % 3] if t == 1 else "real" for t, r in zip(val.target, fake_rank)])
    cfg = EvalConfig(batch_size=64, degradations=["jpeg:50", "social:70"], robustness_images=None)
    ev = evaluate(det, val, cfg)
    y = val.target.to_numpy()
    degradations = degrade.parse_all(cfg.degradations)
    probs = degrade.score_degraded(det, val, degradations, batch_size=64)
    names = evaluation_metrics(ev.report)
    tables = robustness_tables(ev)
    clean = ev.report["robustness"]["clean"]
    for g in GROUPS:
        rows = ((val.target == 0) | (val.group == g)).to_numpy()
        assert clean[f"auc_{g}"] == pytest.approx(ev.report["groups"][g]["roc_auc"])  # all of val, here
        for d in degradations:
            m = ev.report["robustness"][d.kind][d.key]
            assert m[f"auc_{g}"] == pytest.approx(skm.roc_auc_score(y[rows], probs[d][rows]), abs=1e-9)
            assert names[f"{ROBUST}{d.kind}/{d.key}/{AUC}{g}"] == m[f"auc_{g}"]
            assert tables[d.kind][f"auc_{g}"].tolist() == [m[f"auc_{g}"]]
            assert tables[d.kind][f"clean_auc_{g}"].tolist() == [clean[f"auc_{g}"]]
    assert not any("real" in k for k in names)  # real images are no manipulation
    # The knob table's degraded column: the mean over degradations of sklearn's AUC, and per image
    # the very scores it came from (robustness_predictions.csv, bootstrapped by ffdi generalisation).
    aucs = [skm.roc_auc_score(y, probs[d]) for d in degradations]
    assert ev.report["degraded_mean_auc"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert ev.report["degraded_worst_auc"] == pytest.approx(min(aucs), abs=1e-9)
    assert names[EVAL_DEGRADED_MEAN_AUC] == ev.report["degraded_mean_auc"]
    assert ev.degraded.columns.tolist() == ["img_name", "target", "group", "clean", "jpeg:50", "social:70"]
    assert ev.degraded.img_name.tolist() == val.img_name.tolist()
    for d in degradations:
        np.testing.assert_allclose(ev.degraded[d.label], probs[d], atol=1e-6)
    np.testing.assert_allclose(ev.degraded.clean, ev.predictions.y_pred, atol=1e-9)
    # The metrics that were there before are all still there: per manipulation only adds keys.
    assert {"roc_auc", "average_precision", "accuracy", "mean_abs_prob_change"} < set(m)
    assert tables["jpeg"].roc_auc.tolist() == [ev.report["robustness"]["jpeg"]["50"]["roc_auc"]]
    assert "(worst " in summary_lines(ev)[-2]


def test_robustness_subset_keeps_both_classes_and_is_fixed(random_detector):
    _, val = random_detector
    a, b = degrade.subset(val, 10), degrade.subset(val, 10)
    assert a.index.tolist() == b.index.tolist() and set(a.target) == {0, 1} and 9 <= len(a) <= 11
    assert degrade.subset(val, None) is val


def test_plots_are_written(tmp_path):
    from ffdi.evaluation import plots

    per_group = {"a": {"roc_auc": 0.9}, "b": {"roc_auc": 0.7}, "c": {"roc_auc": 0.95}}
    plots.plot_groups(per_group, tmp_path / "groups.png", heldout=("b",))
    table = pd.DataFrame(
        {"kind": ["jpeg", "jpeg", "blur"], "severity": [90, 50, 1.0], "level": [1, 2, 1], "roc_auc": [0.9, 0.8, 0.85]}
    )
    plots.plot_robustness(table, 0.92, tmp_path / "robustness.png")
    plots.plot_robustness(table.iloc[:0], 0.92, tmp_path / "empty.png")
    for name in ("groups.png", "robustness.png", "empty.png"):
        assert (tmp_path / name).stat().st_size > 5_000


def test_extra_set_folder_is_checked_and_fingerprinted(tiny_data, tmp_path):
    from ffdi.errors import DataError
    from ffdi.evaluation.evaluate import labelled_folder

    data = DataConfig()
    manifest, fingerprint = labelled_folder("other", str(tiny_data), data)
    assert len(manifest) == 48 and manifest.path.map(lambda p: Path(p).is_file()).all()
    assert labelled_folder("other", str(tiny_data), data)[1] == fingerprint and len(fingerprint) == 16
    with pytest.raises(DataError, match="eval.extra_sets.gone: folder '/no/such' not found"):
        labelled_folder("gone", "/no/such", data)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    first = copy / "valset" / manifest.img_name[0]
    first.write_bytes(first.read_bytes() + b"\0")  # same names and labels, other content
    assert labelled_folder("other", str(copy), data)[1] != fingerprint
    (copy / "valset_label.txt").write_text("img_name,target\n" + f"{manifest.img_name[0]},1\n")
    with pytest.raises(DataError, match="both real"):
        labelled_folder("other", str(copy), data)


# --- the stage, end to end: the shared project, then a held-out experiment ---------------------------

# The held-out experiment also trains another family with every tuning knob: a ViT, norm-tuned, with
# NPR channels, EMA, on-the-fly self-blending and training degradations (test_tuning's unit tests
# check each knob; here the whole pipeline runs them and logs a servable model).
KNOBS = {
    "model.arch": "vit_tiny_patch16_224",
    "model.tune": "norm",
    "model.input": "rgb+npr",
    "train.ema": "0.9",
    "augment.self_blend": "0.3",
    "augment.jpeg": "[50,95]",
    "augment.blur": "[0.2,1.0]",
    "augment.downscale": "[0.6,0.9]",
}


@pytest.fixture(scope="module")
def project(shared_project, tmp_path_factory):
    p = copy_project(shared_project, tmp_path_factory.mktemp("evaluate") / "repo")
    repo = p.repo
    base = {
        "metrics": json.loads((repo / "reports" / "evaluate" / EVALUATION_DETAILS).read_text()),
        "headline": json.loads((repo / "metrics.json").read_text()),
        "predictions": pd.read_csv(
            repo / "reports" / "evaluate" / "val_predictions.csv", dtype={"img_name": str}, keep_default_na=False
        ),
        "groups_csv": pd.read_csv(repo / "reports" / "evaluate" / "groups.csv", keep_default_na=False),
        "robustness": {f.name: pd.read_csv(f) for f in (repo / "reports" / "evaluate" / "robustness").iterdir()},
        "robustness_png": (repo / "reports" / "evaluate" / "robustness.png").stat().st_size,
        "model": Path(shutil.copy2(repo / "models" / "model.pt", repo.parent / "base_model.pt")),
    }
    _, _, (base_run,) = mlflow_runs(repo)
    base["run"] = base_run

    # Held out: make the train fakes of `a` unreadable. With data.on_bad_image=error a run that
    # loaded any of them would stop, so a finished run proves training never read one.
    train_labels = pd.read_csv(repo / "data" / "labelled" / "trainset_label.txt", dtype={"img_name": str})
    for name in train_labels.img_name[train_labels.method == "a"]:
        (repo / "data" / "labelled" / "trainset" / name).write_bytes(b"not a jpeg")
    p.commit("train fakes of a unreadable")
    # A set added from the command line: Hydra's `+` adds a key that params.yaml does not have yet
    # (without it DVC refuses, "object_type=dict").
    knobs = [arg for key, value in KNOBS.items() for arg in ("-S", f"{key}={value}")]
    p.sh("dvc", "exp", "run", "-S", 'data.holdout=["a"]', "-S", "+eval.extra_sets.added=data/other", *knobs)
    held = {
        "metrics": json.loads((repo / "reports" / "evaluate" / EVALUATION_DETAILS).read_text()),
        "headline": json.loads((repo / "metrics.json").read_text()),
        "predictions": pd.read_csv(
            repo / "reports" / "evaluate" / "val_predictions.csv", dtype={"img_name": str}, keep_default_na=False
        ),
        "history": pd.read_csv(repo / "reports" / "history.csv"),
        "submission": pd.read_csv(repo / "submission.csv", dtype={"img_name": str}),
    }
    _, held["experiment"], runs = mlflow_runs(repo)
    held["run"] = runs[-1]
    return {"p": p, "repo": repo, "base": base, "held": held}


@pytest.mark.slow
def test_group_metrics_equal_sklearn_on_that_groups_fakes_and_all_real(project):
    m, preds = project["base"]["metrics"], project["base"]["predictions"]
    assert sorted(m["groups"]) == list(GROUPS)
    y, p = preds.target.to_numpy(), preds.y_pred.to_numpy()
    for g in GROUPS:
        rows = ((preds.target == 0) | (preds.group == g)).to_numpy()
        assert m["groups"][g]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[rows], p[rows]), abs=1e-12)
        assert m["groups"][g]["average_precision"] == pytest.approx(skm.average_precision_score(y[rows], p[rows]))
        fpr, tpr, _ = skm.roc_curve(y[rows], p[rows])
        assert m["groups"][g]["tpr_at_fpr_1e-2"] == pytest.approx(tpr[fpr <= 1e-2].max())
        assert project["base"]["run"].data.metrics[f"{EVAL_GROUP_AUC}{g}"] == pytest.approx(m["groups"][g]["roc_auc"])
    aucs = [m["groups"][g]["roc_auc"] for g in GROUPS]
    assert m["group_worst_auc"] == min(aucs) and m["group_mean_auc"] == pytest.approx(np.mean(aucs))
    # groups.csv, the DVC plot's data: the same numbers, with each group's count of fakes.
    table = project["base"]["groups_csv"].set_index("group")
    assert sorted(table.index) == list(GROUPS)
    for g in GROUPS:
        assert table.loc[g, "roc_auc"] == pytest.approx(m["groups"][g]["roc_auc"])
        assert table.loc[g, "fakes"] == ((preds.group == g) & (preds.target == 1)).sum()
    assert (project["repo"] / "reports" / "evaluate" / "groups.png").stat().st_size > 5_000
    assert "evaluate/groups.png" in {a.path for a in _artifacts(project["base"]["run"], "evaluate")}


def _artifacts(run, path):
    import mlflow

    return mlflow.MlflowClient().list_artifacts(run.info.run_id, path)


@pytest.mark.slow
def test_extra_set_is_scored_by_the_same_detector_and_equals_sklearn(project):
    import mlflow

    m = project["base"]["metrics"]["extra_sets"]["other"]
    run = project["base"]["run"]
    preds = pd.read_csv(
        mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/evaluate/extra_sets/other_predictions.csv"),
        dtype={"img_name": str},
        keep_default_na=False,
    )
    labels = pd.read_csv(project["repo"] / "data" / "other" / "valset_label.txt", dtype={"img_name": str})
    assert preds.img_name.tolist() == labels.img_name.tolist() and m["images"] == len(labels) == 40
    y, p = preds.target.to_numpy(), preds.y_pred.to_numpy()
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    for g in GROUPS:
        rows = ((preds.target == 0) | (preds.group == g)).to_numpy()
        assert m["groups"][g]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[rows], p[rows]), abs=1e-12)
    assert run.data.metrics[f"{EXTRA}other/roc_auc"] == pytest.approx(m["roc_auc"])
    assert run.data.metrics[f"{EXTRA}other/{AUC}a"] == pytest.approx(m["groups"]["a"]["roc_auc"])
    assert run.data.tags["extra.other.data_hash"] == m["data_hash"] and len(m["data_hash"]) == 16
    # The scores are the Detector's, with the views predict uses (predict.tta: [hflip]).
    det = Detector.load(project["base"]["model"], "cpu", tta=["hflip"])
    files = [str(project["repo"] / "data" / "other" / "valset" / n) for n in labels.img_name]
    np.testing.assert_allclose(det.score(files), p, atol=1e-9)


@pytest.mark.slow
def test_robustness_identity_is_close_to_clean_and_severe_changes_scores(project):
    m = project["base"]["metrics"]
    r, clean = m["robustness"], m["robustness"]["clean"]
    assert clean["roc_auc"] == pytest.approx(m["val"]["roc_auc"]) and clean["images"] == 48
    assert set(r) == {"clean", "jpeg", "noise", "downscale"}
    assert abs(r["jpeg"]["100"]["roc_auc"] - clean["roc_auc"]) < 0.02
    assert r["jpeg"]["100"]["mean_abs_prob_change"] < 0.02
    assert r["noise"]["60"]["mean_abs_prob_change"] > 5 * r["jpeg"]["100"]["mean_abs_prob_change"]
    assert r["downscale"]["0p25"]["mean_abs_prob_change"] > r["jpeg"]["100"]["mean_abs_prob_change"]
    run = project["base"]["run"]
    assert run.data.metrics[f"{ROBUST}noise/60/auc"] == pytest.approx(r["noise"]["60"]["roc_auc"])
    assert run.data.metrics[f"{ROBUST}downscale/0p25/auc"] == pytest.approx(r["downscale"]["0p25"]["roc_auc"])
    # One CSV per kind for DVC's plots, with the clean AUC as the reference column.
    files = project["base"]["robustness"]
    assert sorted(files) == ["downscale.csv", "jpeg.csv", "noise.csv"]
    assert files["jpeg.csv"].severity.tolist() == [100]
    assert files["jpeg.csv"].roc_auc.tolist() == pytest.approx([r["jpeg"]["100"]["roc_auc"]])
    assert files["noise.csv"].clean_roc_auc.tolist() == pytest.approx([clean["roc_auc"]])
    # Per manipulation too, in details.json, MLflow and the CSVs.
    for g in GROUPS:
        assert clean[f"auc_{g}"] == pytest.approx(m["groups"][g]["roc_auc"])
        assert run.data.metrics[f"{ROBUST}noise/60/{AUC}{g}"] == pytest.approx(r["noise"]["60"][f"auc_{g}"])
        assert files["noise.csv"][f"auc_{g}"].tolist() == pytest.approx([r["noise"]["60"][f"auc_{g}"]])
        assert files["noise.csv"][f"clean_auc_{g}"].tolist() == pytest.approx([clean[f"auc_{g}"]])
    assert project["base"]["robustness_png"] > 5_000


@pytest.mark.slow
def test_holdout_keeps_a_out_of_training_and_model_selection(project):
    held = project["held"]
    m, preds = held["metrics"], held["predictions"]
    # Training never read a train fake of `a` (they are unreadable, and on_bad_image is error) ...
    assert held["run"].data.params["data.holdout"] == "['a']" and held["run"].info.status == "FINISHED"
    # ... and the val it chose the best epoch on had no fake of `a`: val_images counts what it scored.
    n_val_a = int(((preds.group == "a") & (preds.target == 1)).sum())
    assert n_val_a > 0
    assert held["history"].val_images.tolist() == [len(preds) - n_val_a] * 3  # SHARED_PARAMS' 3 epochs
    # Evaluate still scores every val image; `heldout` is a's fakes against all real, `seen` the rest.
    assert m["images"] == len(preds) == 48
    y, p = preds.target.to_numpy(), preds.y_pred.to_numpy()
    for key, prefix, rows in (
        ("heldout", HELDOUT, (preds.target == 0) | (preds.group == "a")),
        ("seen", SEEN, preds.group != "a"),
    ):
        rows = rows.to_numpy()
        assert m[key]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[rows], p[rows]), abs=1e-12)
        assert m[key]["average_precision"] == pytest.approx(skm.average_precision_score(y[rows], p[rows]))
        fpr, tpr, _ = skm.roc_curve(y[rows], p[rows])
        assert m[key]["tpr_at_fpr_1e-3"] == pytest.approx(tpr[fpr <= 1e-3].max())
        assert held["run"].data.metrics[f"{prefix}roc_auc"] == pytest.approx(m[key]["roc_auc"])
    assert m["heldout"]["roc_auc"] == pytest.approx(m["groups"]["a"]["roc_auc"])
    groups = pd.read_csv(project["repo"] / "reports" / "evaluate" / "groups.csv", keep_default_na=False).set_index(
        "group"
    )
    assert groups.heldout.to_dict() == {"a": True, "b": False, "c": False}


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in _numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


@pytest.mark.slow
def test_metrics_json_holds_the_headline_and_details_json_the_rest(project):
    """metrics.json is what `dvc exp show` compares by: at most 20 numbers, each the very value of
    details.json (the whole report), which keeps per manipulation, per degradation and confusion."""
    for run in ("base", "held"):
        head, details = project[run]["headline"], project[run]["metrics"]
        assert len(_numbers(head)) <= 20, head
        assert not {"groups", "robustness", "confusion", "seen", "threshold"} & set(head)
        assert {"groups", "robustness", "confusion"} <= set(details)
        assert head == headline(details)
        assert head["val"] == {k: v for k, v in details["val"].items() if k != "log_loss"}
        for name, e in head["extra_sets"].items():
            assert e == {"roc_auc": details["extra_sets"][name]["roc_auc"]}
        assert head["degraded_mean_auc"] == details["degraded_mean_auc"] and head["images"] == details["images"]
    held = project["held"]
    assert held["headline"]["heldout"] == {"roc_auc": held["metrics"]["heldout"]["roc_auc"]}
    assert "heldout" not in project["base"]["headline"]


@pytest.mark.slow
def test_an_extra_set_can_be_added_from_the_command_line(project):
    extra = project["held"]["metrics"]["extra_sets"]
    assert sorted(extra) == ["added", "other"]  # params.yaml's, and the one added with -S +...
    assert extra["added"]["images"] == 40 and extra["added"]["data_hash"] == extra["other"]["data_hash"]
    assert extra["added"]["roc_auc"] == extra["other"]["roc_auc"]  # the same folder, the same model
    assert project["held"]["run"].data.params["eval.extra_sets.added"] == "data/other"


@pytest.mark.slow
def test_another_family_with_every_knob_runs_the_pipeline_and_logs_a_servable_model(project):
    """The held-out experiment's ViT (KNOBS): norm-tuned as asked, NPR channels in its checkpoint, and
    its logged models score like its submission."""
    import mlflow

    from ffdi.config import ModelConfig
    from ffdi.model.networks import set_tuning

    held, repo = project["held"], project["repo"]
    run = held["run"]
    assert {k: run.data.params[k] for k in KNOBS} == {
        "model.arch": "vit_tiny_patch16_224",
        "model.tune": "norm",
        "model.input": "rgb+npr",
        "train.ema": "0.9",
        "augment.self_blend": "0.3",
        "augment.jpeg": "[50, 95]",
        "augment.blur": "[0.2, 1.0]",
        "augment.downscale": "[0.6, 0.9]",
    }
    assert run.info.status == "FINISHED"
    model = build_model(ModelConfig(arch="vit_tiny_patch16_224", tune="norm", input="rgb+npr"), image_size=32)
    assert (
        run.data.metrics[TRAIN + "trainable_params"]
        == set_tuning(model, "norm")
        < sum(q.numel() for q in model.parameters())
    )
    assert "artefacts.mix.weight" in checkpoint.load(repo / "models" / "model.pt")["model"]

    submission = held["submission"]
    logged = mlflow.search_logged_models(
        experiment_ids=[held["experiment"].experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    assert [m.name for m in logged] == [MODEL_NAME]  # one logged model per run, the served detector
    test_dir = repo / "data" / "labelled" / "testset"
    for m in logged:
        det = Detector.load(f"models:/{m.model_id}", "cpu", tta=["hflip"])
        np.testing.assert_allclose(det.score([test_dir / n for n in submission.img_name]), submission.y_pred, atol=1e-6)
