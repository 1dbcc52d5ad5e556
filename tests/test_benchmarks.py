"""The benchmark scripts' own logic (their measurements live in benchmarks/results, not here)."""

import pytest

from benchmarks.studies.generalisation_grid import parse_override, parse_variant


def test_variant_overrides_keep_lists_and_the_word_off():
    name, overrides = parse_variant("tta6:predict.tta=[hflip,vflip,rot90],train.amp=off,train.ema=0.999")
    assert name == "tta6"
    assert overrides == {"predict.tta": ["hflip", "vflip", "rot90"], "train.amp": "off", "train.ema": 0.999}
    assert parse_variant("baseline") == ("baseline", {})
    assert parse_override("model.se=true") == ("model.se", True)  # a real boolean stays one


@pytest.mark.slow
def test_make_bench_runs_end_to_end_on_tiny_data(tmp_path):
    """`make bench` (benchmarks.train_speed) at a tiny size: all three loops measured, so CI sees a
    child that fails (a wrong argument in the ffdi-fp32 child once made it exit 1 on every machine)."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "speed.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.train_speed",
        "--data",
        str(tmp_path / "data"),
        "--train-images",
        "24",
        "--val-images",
        "8",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--size",
        "32",
        "--batch-size",
        "8",
        "--predict-batch",
        "8",
        "--workers",
        "0",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"reference", "ffdi-fp32", "ffdi"}
    for r in report["results"].values():
        assert r["train_images_timed"] == 8 and r["train_img_s"] > 0 and r["load_img_s"] > 0
    assert report["settings"]["image_size"] == 32 and "| training, img/s |" in proc.stdout


def test_a_failing_benchmark_child_shows_its_stderr():
    import sys

    import pytest

    from benchmarks.train_speed import run_child

    with pytest.raises(SystemExit, match="exited 3; the end of its stderr:\n.*the reason it failed"):
        run_child([sys.executable, "-c", "import sys; sys.stderr.write('the reason it failed'); sys.exit(3)"])


@pytest.mark.slow
def test_the_video_aggregation_benchmark_makes_a_labelled_set_and_scores_every_aggregation(tmp_path, monkeypatch):
    """benchmarks.video_aggregation at a tiny size: a set in multiFFDV's layout, one AUC per aggregation."""
    import json

    import pandas as pd

    from benchmarks import video_aggregation
    from ffdi.config import DataConfig
    from ffdi.evaluation.evaluate import is_video_set, labelled_folder
    from tests.test_video import spread_checkpoint

    model = spread_checkpoint(tmp_path / "model.pt", image_size=64)
    out, results = tmp_path / "videos", tmp_path / "agg.json"
    assert (
        video_aggregation.main(
            [
                "--model",
                str(model),
                "--out-dir",
                str(out),
                "--videos",
                "12",
                "--frames",
                "4",
                "--results",
                str(results),
                "--boot",
                "20",
            ]
        )
        == 0
    )
    labels = pd.read_csv(out / "valset_label.txt")
    assert list(labels.columns) == ["video_name", "target"] and labels.target.tolist() == [0, 1] * 6
    shares = pd.read_csv(out / "videos.csv").fake_share
    assert sorted(set(shares[labels.target == 1])) == [0.25, 0.5, 1.0]
    manifest, _ = labelled_folder("videos", str(out), DataConfig())  # usable as an eval.extra_sets folder
    assert is_video_set(manifest) and len(manifest) == 12
    report = json.loads(results.read_text())
    assert set(report["auc"]) == set(video_aggregation.AGGREGATES) and report["frames"] == 4
    assert all(0 <= row["all"] <= 1 for row in report["auc"].values())


@pytest.mark.slow
def test_the_host_headroom_measures_every_phase_of_the_main_process_and_a_worker(manifests):
    """benchmarks.headroom at a tiny size: fit's training pass with the model on meta and one real
    loader worker; every phase of the main process timed, the rest (backward) what getrusage adds."""
    import ffdi.engine.train
    from benchmarks import headroom
    from ffdi.config import AugmentConfig, ModelConfig, Params, TrainConfig

    params = Params(
        augment=AugmentConfig(resize=32, image_size=32),
        model=ModelConfig(arch="resnet18"),
        train=TrainConfig(ema=0.999),
    )
    normalize = ffdi.engine.train.normalize_batch
    r = headroom.measure(params, manifests[0], batch=8, workers=1)
    assert ffdi.engine.train.normalize_batch is normalize  # put back
    assert r["images"] == len(manifests[0]) // 8 * 8 and r["batch"] == 8
    phases = r["phases_us_per_img"]
    assert set(phases) == set(headroom.FEEDING) | set(headroom.MODEL) and all(v > 0 for v in phases.values())
    assert r["main_us_per_img"] == pytest.approx(sum(phases.values()))
    assert r["feeding_us_per_img"] == pytest.approx(sum(phases[k] for k in headroom.FEEDING))
    assert r["feeding_us_per_img"] < r["main_us_per_img"]
    assert r["ceiling_img_s"] == pytest.approx(1e6 / r["main_us_per_img"]) and r["worker_us_per_img"] > 0
    lines = headroom.summary_lines([r])
    assert lines[0].startswith("main process: ") and "at batch 8" in lines[0] and "-> ceiling" in lines[0]
    assert "| normalise |" in headroom.table([r])
