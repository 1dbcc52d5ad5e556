"""The frames stage (ffdi.data.frames) and the video-level figures: a video data set made here from the
tiny sample's images (tests/videos.py, lossless, so each frame is the image it was made from), the
policy for frames without a face and for bad videos, and one pipeline from videos to a submission."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

from ffdi.config import DataConfig, EvalConfig, FramesConfig
from ffdi.data.frames import extract
from ffdi.data.labels import frames_data_config, prepare, read_manifest
from ffdi.errors import DataError
from ffdi.evaluation.evaluate import evaluate
from ffdi.inference.detector import Detector
from ffdi.inference.video import write_video
from ffdi.schema import EVAL_VIDEO, EVALUATION_DETAILS
from tests.project import TINY_PARAMS, make_project, mlflow_runs
from tests.test_video import audio_only_mp4, spread_checkpoint
from tests.videos import LOSSLESS, make_video_set

WHOLE = FramesConfig(faces=False, size=None)  # whole frames as decoded: the images the videos were made of


@pytest.fixture(scope="module")
def videos(tiny_data, tmp_path_factory) -> Path:
    return make_video_set(tiny_data, tmp_path_factory.mktemp("videos") / "data")


def tree(folder: Path) -> dict[str, str]:
    """Every file under folder, by relative path: the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_frames_are_the_videos_images_and_the_same_when_run_again(videos, tiny_data, tmp_path):
    summary = extract(DataConfig(root=str(videos)), WHOLE, tmp_path / "a", workers=2)
    source = {s: pd.read_csv(videos / f"{s}set_label.txt", keep_default_na=False) for s in ("train", "val")}
    assert summary["kind"] == "videos"
    for split in ("train", "val"):
        got = summary["splits"][split]
        assert (got["videos"], got["videos_kept"], got["videos_left_out"]) == (
            len(source[split]),
            len(source[split]),
            [],
        )
        assert got["frames"] == 4 * len(source[split])  # 4 frames a video, fewer than the 8 or 32 asked
    val = pd.read_csv(tmp_path / "a" / "valset_label.txt", keep_default_na=False)
    assert list(val.columns) == ["img_name", "target", "method", "video_name"]
    merged = val.merge(source["val"], on="video_name", suffixes=("", "_video"))
    assert len(merged) == len(val) and (merged.target == merged.target_video).all()
    assert (merged.method == merged.method_video).all()
    record = pd.read_csv(tmp_path / "a" / "videos.csv", keep_default_na=False)
    assert len(record) == len(source["train"]) + len(source["val"])
    assert set(record.frames_asked[record.split == "val"]) == {32} and set(
        record.frames_asked[record.split == "train"]
    ) == {8}
    assert set(record.frames_decoded) == {4} and set(record.frames_written) == {4} and set(record.error) == {""}

    # Lossless videos: each frame is, to the bit, the image it was made from (tests/videos.py's order).
    labels = pd.read_csv(tiny_data / "valset_label.txt", keep_default_na=False)
    first_real = sorted(labels.img_name[labels.target == 0])[0]
    frame = np.asarray(Image.open(tmp_path / "a" / "valset" / "real00.mkv" / "000.png"))
    assert np.array_equal(frame, np.asarray(Image.open(tiny_data / "valset" / first_real).convert("RGB")))

    # Twice, and in one process instead of two: the same bytes, file by file.
    extract(DataConfig(root=str(videos)), WHOLE, tmp_path / "b", workers=1)
    first, second = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert len(first) == 1 + 2 + 1 + 4 * (len(source["train"]) + len(source["val"]))
    assert first == second


def test_an_image_data_set_passes_through(tiny_data, tmp_path):
    out = tmp_path / "frames"
    assert extract(DataConfig(root=str(tiny_data)), WHOLE, out) == {"kind": "images"}
    assert tree(out).keys() == {"frames.json"} and json.loads((out / "frames.json").read_text()) == {"kind": "images"}


@pytest.mark.parametrize("how", ["mean", "max"])
def test_video_level_auc_is_sklearns_on_the_aggregated_frame_scores(videos, manifests, tmp_path, how):
    frames = tmp_path / "frames"
    extract(DataConfig(root=str(videos)), WHOLE, frames)
    made = json.loads((frames / "frames.json").read_text())
    prepare(frames_data_config(DataConfig(), frames), tmp_path / "prepared", videos=made)
    val = read_manifest(tmp_path / "prepared" / "val.csv")
    assert list(val.columns) == ["img_name", "target", "group", "path", "video"]

    det = Detector.load(spread_checkpoint(tmp_path / "model.pt"), "cpu")
    cfg = EvalConfig(degradations=(), video_aggregate=how)
    ev = evaluate(det, val, cfg)
    p = ev.predictions.assign(video=val.video)
    per_video = p.groupby("video").agg(target=("target", "first"), group=("group", "first"), y=("y_pred", how))
    video = ev.report["val_video"]
    assert video["roc_auc"] == pytest.approx(roc_auc_score(per_video.target, per_video.y), abs=1e-12)
    assert (video["videos"], video["frames"], video["aggregate"]) == (len(per_video), len(val), how)
    for group, m in video["groups"].items():
        rows = per_video[(per_video.target == 0) | (per_video.group == group)]
        assert m["roc_auc"] == pytest.approx(roc_auc_score(rows.target, rows.y), abs=1e-12)
    assert ev.report["val"]["roc_auc"] == pytest.approx(roc_auc_score(p.target, p.y_pred), abs=1e-12)
    assert video["roc_auc"] != pytest.approx(ev.report["val"]["roc_auc"], abs=1e-6)  # two different figures
    np.testing.assert_allclose(
        ev.videos.set_index("video_name").loc[per_video.index].y_pred, per_video.y, rtol=0, atol=1e-12
    )

    # The same frames as an extra set (a frames stage's output in the val layout): the same figures.
    from ffdi.evaluation.evaluate import labelled_folder

    extra = evaluate(det, val, cfg, extra={"f": labelled_folder("f", str(frames), DataConfig())}).report["extra_sets"]
    assert extra["f"]["roc_auc"] == pytest.approx(ev.report["val"]["roc_auc"], abs=1e-12)
    assert extra["f"]["video"]["roc_auc"] == pytest.approx(video["roc_auc"], abs=1e-12)

    # The frame-level AUC is the image pipeline's on the same pictures: the frames are the sample's images.
    sources = pd.read_csv(videos / "sources.csv")
    images = manifests[1]
    image_rows = images[images.img_name.isin(set(sources.img_name[sources.split == "valset"]))]
    assert len(image_rows) == len(val)
    as_images = evaluate(det, image_rows.reset_index(drop=True), cfg)
    assert as_images.report["val"]["roc_auc"] == pytest.approx(ev.report["val"]["roc_auc"], abs=1e-9)
    assert "val_video" not in as_images.report


def test_a_submission_of_videos_has_a_row_for_every_video():
    from ffdi.data.video import per_video_scores

    frames = ["b.mp4", "a.mp4", "b.mp4", "b.mp4", "a.mp4"]
    probs = [0.2, 0.9, 0.4, 0.9, 0.5]
    got = per_video_scores(frames, probs, "max", ["a.mp4", "b.mp4", "c.mp4", "gone.mp4"], 0.5)
    assert got == {"b.mp4": 0.9, "a.mp4": 0.9, "c.mp4": 0.5, "gone.mp4": 0.5}
    got = per_video_scores(frames, probs, "mean")
    assert got == pytest.approx({"b.mp4": 0.5, "a.mp4": 0.7}, abs=1e-12)


# --- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory) -> Path:
    """A video data set whose val split holds one video of each kind of problem, beside good ones (faces:
    scikit-image's astronaut; none: its coffee)."""
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("bad") / "data"
    for split in ("trainset", "valset"):
        (root / split).mkdir(parents=True)
    face = np.asarray(Image.fromarray(skdata.astronaut()).resize((128, 128)))
    none = np.asarray(Image.fromarray(skdata.coffee()).resize((128, 128)))
    write_video(root / "trainset" / "a.mkv", [face, face], 4, **LOSSLESS)
    write_video(root / "trainset" / "b.mkv", [face, none], 4, **LOSSLESS)
    (root / "trainset_label.txt").write_text("video_name,target\na.mkv,0\nb.mkv,1\n")
    val = root / "valset"
    write_video(val / "half.mkv", [face, none, face, none], 4, **LOSSLESS)  # two frames with a face
    write_video(val / "rotated.mkv", [np.ascontiguousarray(np.rot90(face, k=1))] * 2, 4, rotation=-90, **LOSSLESS)
    write_video(val / "vfr.mp4", [face] * 3, 4, times=[0, 0.1, 0.9])
    write_video(val / "noface.mkv", [none, none], 4, **LOSSLESS)
    good = write_video(val / "good.mp4", [face] * 8, 4)
    (val / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (val / "audio.mp4").write_bytes(audio_only_mp4(8))
    (val / "notes.mp4").write_text("not a video, only named like one\n")
    import av

    with av.open(str(val / "empty.avi"), "w") as c:  # a video stream with no frames
        s = c.add_stream("mpeg4", rate=4)
        s.width = s.height = 32
        c.start_encoding()
    names = ["half.mkv", "rotated.mkv", "vfr.mp4", "good.mp4", *BAD]
    (root / "valset_label.txt").write_text(
        "video_name,target\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names))
    )
    return root


BAD = {
    "noface.mkv": "no face in any of the 2 frames sampled",
    "truncated.mp4": "truncated or corrupt video: cannot read its header or index",
    "audio.mp4": "no video stream (audio only)",
    "empty.avi": "no video frames",
    "notes.mp4": "not a video file (",
    "missing.webm": "file not found",
}
FACES = FramesConfig(train_frames=2, eval_frames=4, size=32)


def test_each_bad_video_is_listed_with_its_problem_and_left_out(bad_set, tmp_path, capsys):
    out = tmp_path / "frames"
    summary = extract(DataConfig(root=str(bad_set), on_bad_image="skip"), FACES, out)
    record = pd.read_csv(out / "videos.csv", keep_default_na=False).set_index("video_name")
    for name, problem in BAD.items():
        assert record.loc[name].error.startswith(problem), (name, record.loc[name].error)
        assert not (out / "valset" / name).exists()
    assert sorted(summary["splits"]["val"]["videos_left_out"]) == sorted(BAD)
    printed = capsys.readouterr().out
    assert all(f"left out: {bad_set / 'valset' / name}: {problem}" in printed for name, problem in BAD.items())
    ok = record[record.error == ""]
    counts = ok[["frames_asked", "frames_decoded", "frames_with_face", "frames_written"]].astype(int)
    assert counts.loc["half.mkv"].tolist() == [4, 4, 2, 2]  # a frame without a face is skipped
    assert counts.loc["b.mkv"].tolist() == [2, 2, 1, 1]
    assert counts.loc["rotated.mkv"].tolist() == [4, 2, 2, 2] and counts.loc["vfr.mp4"].tolist() == [4, 2, 2, 2]
    assert counts.loc["good.mp4"].tolist() == [4, 4, 4, 4]
    assert sorted(p.name for p in (out / "valset" / "half.mkv").iterdir()) == ["000.png", "002.png"]
    val = pd.read_csv(out / "valset_label.txt")
    assert sorted(set(val.video_name)) == ["good.mp4", "half.mkv", "rotated.mkv", "vfr.mp4"]
    assert len(val) == 2 + 2 + 2 + 4 and all(Image.open(out / "valset" / n).size == (32, 32) for n in val.img_name)


def test_on_bad_image_error_stops_at_the_first_naming_it_and_writes_nothing(bad_set, tmp_path):
    out = tmp_path / "frames"
    out.mkdir()
    (out / "frames.json").write_text('{"kind": "images"}\n')  # a previous output stays as it was
    with pytest.raises(DataError) as e:
        extract(DataConfig(root=str(bad_set)), FACES, out)
    message = str(e.value)
    assert "\n" not in message and message.endswith("(data.on_bad_image: skip leaves it out and goes on)")
    assert message.startswith(str(bad_set / "valset" / "noface.mkv")) and BAD["noface.mkv"] in message
    assert tree(out) == {"frames.json": hashlib.sha256(b'{"kind": "images"}\n').hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # no temporary folder left


def test_a_data_set_mixing_videos_and_images_is_refused(videos, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "trainset").symlink_to(videos / "trainset")
    (root / "valset").mkdir()
    (root / "trainset_label.txt").write_text((videos / "trainset_label.txt").read_text())
    (root / "valset_label.txt").write_text("img_name,target\na.jpg,0\nb.png,1\n")
    with pytest.raises(DataError, match=r"valset_label.txt: names images while trainset_label.txt names videos"):
        extract(DataConfig(root=str(root)), WHOLE, tmp_path / "frames")
    (root / "valset_label.txt").write_text("video_name,target\na.mp4,0\nb.png,1\n")
    with pytest.raises(DataError, match=r"valset_label.txt: names 1 videos and 1 images; a set is one or the other"):
        extract(DataConfig(root=str(root)), WHOLE, tmp_path / "frames")


# --- the pipeline ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_video_data_set_trains_evaluates_and_predicts_and_a_seed_does_not_decode_again(tmp_path):
    """The one training of this file: videos -> frames -> ... -> a submission of videos; then an
    experiment changing only the seed would reuse the frames."""
    from ffdi.config import SampleConfig
    from ffdi.sample.generate import generate

    p = make_project(
        tmp_path / "proj",
        {**TINY_PARAMS, "data": {"root": "data/videos"}, "frames": {"faces": False}, "tracking": {"log_model": False}},
    )
    generate(SampleConfig(n_train=96, n_val=48, n_test=0, size=32, seed=5), tmp_path / "images")
    make_video_set(tmp_path / "images", p.repo / "data" / "videos")
    p.commit("a video data set")
    out = p.out("dvc", "repro")
    assert "Running stage 'frames'" in out and "train: 96 frames of 24 videos" in out

    metrics = json.loads((p.repo / "metrics.json").read_text())
    videos = pd.read_csv(p.repo / "reports" / "evaluate" / "val_video_predictions.csv", keep_default_na=False)
    frames = pd.read_csv(p.repo / "reports" / "evaluate" / "val_predictions.csv", keep_default_na=False)
    assert metrics["val_video"]["videos"] == len(videos) == 10 and metrics["images"] == len(frames) == 40
    assert metrics["val_video"]["roc_auc"] == pytest.approx(roc_auc_score(videos.target, videos.y_pred), abs=1e-12)
    assert metrics["val"]["roc_auc"] == pytest.approx(roc_auc_score(frames.target, frames.y_pred), abs=1e-12)
    # metrics.json is the headline: frame- and video-level AUC; the rest is in details.json.
    details = json.loads((p.repo / "reports" / "evaluate" / EVALUATION_DETAILS).read_text())
    assert details["val_video"]["roc_auc"] == metrics["val_video"]["roc_auc"]
    assert set(details["val_video"]["groups"]) == set(videos.group[videos.target == 1])
    submission = pd.read_csv(p.repo / "submission.csv")  # no testset/: the val split's videos
    assert list(submission.columns) == ["video_name", "y_pred"]
    assert sorted(submission.video_name) == sorted(videos.video_name)
    np.testing.assert_allclose(
        submission.set_index("video_name").loc[videos.video_name].y_pred, videos.y_pred, rtol=0, atol=1e-6
    )
    _, _, runs = mlflow_runs(p.repo)
    assert runs[-1].data.metrics[EVAL_VIDEO + "roc_auc"] == pytest.approx(metrics["val_video"]["roc_auc"])

    # Only the seed changed: DVC would train again but not decode (--dry: what it would run, without a
    # second training in the suite).
    params = yaml.safe_load((p.repo / "params.yaml").read_text())
    params["train"]["seed"] = 1
    (p.repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = p.out("dvc", "repro", "--dry")
    assert "Stage 'frames' didn't change, skipping" in again and "Stage 'prepare' didn't change, skipping" in again
    assert "Running stage 'train'" in again
