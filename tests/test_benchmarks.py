"""The benchmark scripts' own logic (their measurements live in benchmarks/results, not here)."""

import pytest

from benchmarks.generalisation_grid import parse_override, parse_variant


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
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "--data", str(tmp_path / "data"), "--train-images", "24",
           "--val-images", "8", "--steps", "1", "--warmup", "1", "--size", "32", "--batch-size", "8",
           "--predict-batch", "8", "--workers", "0", "--json", str(out)]
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
