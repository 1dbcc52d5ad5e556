"""Videos: frames sampled by seeking, the numbers `ffdi score` gives the same frames as images, one
aggregate per video, and a clear row for each kind of bad file. Clips are made here from the tiny
sample's images with PyAV: real frames, fake frames and a mix."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ffdi.cli import explain, score
from ffdi.config import AugmentConfig, DataConfig, EvalConfig, Params
from ffdi.errors import ConfigError, DataError
from ffdi.evaluation.evaluate import evaluate, is_video_set, labelled_folder, score_video_set, summary_lines
from ffdi.inference import video
from ffdi.inference.detector import Detector
from ffdi.inference.video import BadVideo, Sampling, sample_frames, score_video, write_video
from ffdi.model import checkpoint
from ffdi.model.networks import build_model

LOSSLESS = {"codec": "ffv1", "pix_fmt": "bgr0"}  # Matroska: decoded frames are the pixels encoded
FPS = 4


def spread_checkpoint(path: Path, image_size: int = 32) -> Path:
    """An untrained model whose head is scaled up, so that different frames get clearly different
    scores (an untrained model's all lie near 0.47), and a wrong frame or aggregate shows."""
    torch.manual_seed(0)
    params = Params(augment=AugmentConfig(resize=image_size, image_size=image_size))
    model = build_model(params.model)
    with torch.no_grad():
        model.fc.weight.mul_(20)
    checkpoint.save(path, checkpoint.snapshot(model, params, 0, {}, "fp32"))
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def numbered(n: int, size=(32, 48)) -> list[np.ndarray]:
    """Frames whose index can be read back from their grey level, whatever the codec does."""
    out = []
    for i in range(n):
        a = np.full((*size, 3), 8 + i * 6, np.uint8)
        a[: size[0] // 3, : size[1] // 4] = 255  # a mark in the top-left corner: shows the orientation
        out.append(a)
    return out


def index_of(image: Image.Image) -> int:
    a = np.asarray(image).astype(float)
    return round((np.median(a[a.shape[0] // 2 :]) - 8) / 6)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return spread_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def clips(tiny_data, tmp_path_factory):
    """real.mkv (lossless), fake.mkv (lossless), mix.mp4 (H.264), and each frame as a PNG."""
    out = tmp_path_factory.mktemp("clips")
    labels = pd.read_csv(tiny_data / "valset_label.txt")
    real = [pixels(tiny_data / "valset" / n) for n in labels.img_name[labels.target == 0][:8]]
    fake = [pixels(tiny_data / "valset" / n) for n in labels.img_name[labels.target == 1][:8]]
    mix = [f for pair in zip(real[:6], fake[:6]) for f in pair]
    for name, frames in (("real", real), ("fake", fake), ("mix", mix)):
        (out / name).mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(out / name / f"{i:02d}.png")
    write_video(out / "real.mkv", real, FPS, **LOSSLESS)
    write_video(out / "fake.mkv", fake, FPS, **LOSSLESS)
    write_video(out / "mix.mp4", mix, FPS, options={"crf": "18"})
    write_video(out / "mix.mkv", mix, FPS, **LOSSLESS)
    return out


def read_rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


# --- sampling ------------------------------------------------------------------------------------


def test_frames_and_fps_pick_the_frames_at_their_times(tmp_path):
    """12 frames at 4 fps: which frames, and their timestamps, for each way of sampling; with a
    keyframe every 3 frames, so that the sampler seeks and must still land on the right ones."""
    clip = write_video(tmp_path / "n.mp4", numbered(12), FPS, options={"g": "3", "crf": "10"})

    def taken(sampling):
        frames = list(sample_frames(clip, sampling))
        return [index_of(f.image) for f in frames], [round(f.time, 6) for f in frames]

    assert taken(Sampling(frames=4)) == ([0, 3, 6, 9], [0.0, 0.75, 1.5, 2.25])
    assert taken(Sampling(frames=5)) == (
        [0, 3, 5, 8, 10],
        [0.0, 0.75, 1.25, 2.0, 2.5],
    )  # first frame at or after i*3/5 s
    assert taken(Sampling(fps=1)) == ([0, 4, 8], [0.0, 1.0, 2.0])
    assert taken(Sampling(fps=2)) == ([0, 2, 4, 6, 8, 10], [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert taken(Sampling(frames=100))[0] == list(range(12))  # more than there are: each frame once
    assert taken(Sampling(frames=1)) == ([0], [0.0])
    with pytest.raises(DataError, match="not both"):
        Sampling(frames=3, fps=2)
    with pytest.raises(DataError, match="--frames must be at least 1"):
        Sampling(frames=0)


def test_seeks_only_where_a_keyframe_lies_between():
    keyframes = [0.0, 2.0, 4.0]
    assert video._should_seek(None, 0.0, keyframes)
    assert not video._should_seek(0.1, 1.5, keyframes)  # decoding on from 0.1 s is shorter
    assert video._should_seek(0.1, 2.5, keyframes)  # the seek lands on 2.0 s, past 0.1 s
    assert not video._should_seek(2.1, 3.9, keyframes)
    assert video._should_seek(0.0, 2.5, [0.0]) and not video._should_seek(0.0, 1.5, [0.0])  # no index: long gaps


def test_a_rotated_display_matrix_and_a_variable_frame_rate_come_out_right(tmp_path):
    upright = numbered(3)  # 32 x 48, the mark top-left
    # Stored turned a quarter clockwise, with a display matrix turning it back counterclockwise (as
    # a phone records portrait): frames must come out as they are shown.
    stored = [np.ascontiguousarray(np.rot90(f, k=-1)) for f in upright]
    clip = write_video(tmp_path / "rotated.mkv", stored, FPS, rotation=90, **LOSSLESS)
    frames = list(sample_frames(clip, Sampling(frames=3)))
    assert [np.array_equal(np.asarray(f.image), u) for f, u in zip(frames, upright)] == [True] * 3

    times = [0.0, 0.02, 0.07, 0.5, 0.55, 1.3]
    vfr = write_video(tmp_path / "vfr.mp4", numbered(6), FPS, times=times, options={"crf": "10"})
    got = list(sample_frames(vfr, Sampling(frames=100)))
    assert [round(f.time, 3) for f in got] == times and [index_of(f.image) for f in got] == list(range(6))
    # 2 fps over the 1.3 s and its last frame: the first frame at or after 0, 0.5 and 1.0 s.
    assert [round(f.time, 3) for f in sample_frames(vfr, Sampling(fps=2))] == [0.0, 0.5, 1.3]


# --- the numbers ---------------------------------------------------------------------------------


def test_a_videos_frames_score_as_the_same_frames_as_images(clips, model, tmp_path, monkeypatch):
    """`ffdi score` on a video and on its frames as PNGs, in one call: the same numbers, exactly for
    a lossless codec and within H.264's loss for an MP4; the video's p_fake is the aggregate of
    its frames', the per-frame file lists them with their times."""
    monkeypatch.chdir(tmp_path)  # no params.yaml: no test-time views, 16 frames, mean
    out, per_frame = tmp_path / "scores.csv", tmp_path / "frames.csv"
    pngs = sorted(str(p) for p in (clips / "mix").glob("*.png"))
    args = [*pngs, str(clips / "mix.mkv"), str(clips / "mix.mp4"), "--model", str(model), "--tta", "hflip"]
    assert score.main([*args, "--out", str(out), "--per-frame", str(per_frame), "--batch-size", "5"]) == 0
    rows = read_rows(out).set_index("path")
    assert list(rows.columns) == ["p_fake", "label", "error", "frames_scored", "frames_without_face", "aggregate"]
    images = rows.loc[pngs].p_fake.to_numpy(float)
    assert images.max() - images.min() > 0.2  # the frames differ: a wrong frame would show
    assert (rows.loc[pngs].frames_scored == "").all()  # image rows leave the video columns empty

    frames = read_rows(per_frame)
    assert list(frames.columns) == ["path", "time", "p_fake", "label", "error"]
    for clip, atol in (("mix.mkv", 1e-6), ("mix.mp4", 0.06)):
        mine = frames[frames.path == str(clips / clip)]
        assert mine.time.tolist() == pytest.approx([i / FPS for i in range(12)])  # 16 asked, 12 there
        np.testing.assert_allclose(mine.p_fake, images, atol=atol)
        row = rows.loc[str(clips / clip)]
        assert (int(row.frames_scored), int(row.frames_without_face), row["aggregate"], row.error) == (
            12,
            0,
            "mean",
            "",
        )
        assert float(row.p_fake) == pytest.approx(mine.p_fake.mean(), abs=1e-8)
    # The per-frame and video scores are the Detector's, the serving and evaluate's path too.
    direct = score_video(Detector.load(model, "cpu", tta=["hflip"]), clips / "mix.mkv", Sampling(frames=16))
    np.testing.assert_allclose(direct.probs(), images, atol=1e-6)


@pytest.mark.parametrize("how", ["max", "topk:3"])
def test_the_aggregate_is_the_chosen_one_of_the_frame_scores(clips, model, tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    out, per_frame = tmp_path / "s.csv", tmp_path / "f.csv"
    assert (
        score.main(
            [
                str(clips / "real.mkv"),
                str(clips / "fake.mkv"),
                "--model",
                str(model),
                "--tta",
                "--aggregate",
                how,
                "--frames",
                "6",
                "--out",
                str(out),
                "--per-frame",
                str(per_frame),
            ]
        )
        == 0
    )
    rows, frames = read_rows(out), read_rows(per_frame)
    for _, row in rows.iterrows():
        p = np.sort(frames[frames.path == row.path].p_fake.to_numpy())
        assert len(p) == row.frames_scored == 6 and row["aggregate"] == how
        expected = p.max() if how == "max" else p[-3:].mean()
        assert row.p_fake == pytest.approx(expected, abs=1e-8) and row.p_fake != pytest.approx(p.mean(), abs=1e-4)


def test_frames_stream_through_the_detector_a_batch_at_a_time(clips, model):
    det = Detector.load(model, "cpu")
    batches = []
    prob_batch = det.prob_batch
    det.prob_batch = lambda px: batches.append(len(px)) or prob_batch(px)
    v = score_video(det, clips / "mix.mkv", Sampling(frames=12), "mean", batch_size=5, keep_top=2)
    assert batches == [5, 5, 2] and v.frames_scored == 12
    assert [p for p, _, _ in v.top] == sorted(v.probs(), reverse=True)[:2]
    assert v.score == pytest.approx(np.mean(v.probs()))
    # The frames come one at a time: a generator, not a list.
    frames = sample_frames(clips / "mix.mkv", Sampling(frames=12))
    assert next(frames).time == 0 and not isinstance(frames, list)


def test_faces_crop_each_frame_and_a_frame_without_one_is_recorded(model, tmp_path, monkeypatch):
    from skimage import data as skdata

    from ffdi.inference.faces import FaceCropper

    monkeypatch.chdir(tmp_path)
    face = np.asarray(Image.fromarray(skdata.astronaut()).resize((128, 128)))
    none = np.asarray(Image.fromarray(skdata.coffee()).resize((128, 128)))
    clip = write_video(tmp_path / "faces.mkv", [face, none, face, none], FPS, **LOSSLESS)
    Image.fromarray(face).save(tmp_path / "face.png")
    out, per_frame = tmp_path / "s.csv", tmp_path / "f.csv"
    assert (
        score.main(
            [
                str(clip),
                str(tmp_path / "face.png"),
                "--faces",
                "--model",
                str(model),
                "--tta",
                "--out",
                str(out),
                "--per-frame",
                str(per_frame),
            ]
        )
        == 0
    )
    rows, frames = read_rows(out).set_index("path"), read_rows(per_frame)
    row = rows.loc[str(clip)]
    assert (int(row.frames_scored), int(row.frames_without_face), row.error) == (2, 2, "")
    assert frames.error.tolist() == ["", "no face found", "", "no face found"]
    assert (
        list(frames.columns)[-1] == "face_box" and frames.face_box[0] == rows.loc[str(tmp_path / "face.png")].face_box
    )
    np.testing.assert_allclose(
        frames.p_fake[[0, 2]].astype(float), float(rows.loc[str(tmp_path / "face.png")].p_fake), atol=1e-6
    )
    # No face in any frame: an error row that says so.
    bare = write_video(tmp_path / "bare.mkv", [none, none], FPS, **LOSSLESS)
    v = score_video(Detector.load(model, "cpu"), bare, Sampling(frames=2), faces=FaceCropper())
    assert v.score is None and v.error == "no face in any of the 2 frames sampled" and v.frames_without_face == 2


# --- bad input -----------------------------------------------------------------------------------


def audio_only_mp4(packets: int = 4) -> bytes:
    """An MP4 holding an AAC stream of silence and no video stream (also used by test_serving)."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(packets):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_videos(clips, tmp_path_factory):
    """One file per problem, and good files beside them."""
    import av

    out = tmp_path_factory.mktemp("bad")
    real = [pixels(p) for p in sorted((clips / "real").glob("*.png"))]
    good = write_video(out / "good.mp4", real, FPS)
    data = good.read_bytes()
    (out / "truncated.mp4").write_bytes(data[: len(data) // 2])  # MP4's index is at its end: cut off
    long = write_video(out / "long.mkv", real * 4, FPS, **LOSSLESS)  # 8 s
    (out / "truncated.mkv").write_bytes(long.read_bytes()[: long.stat().st_size // 3])
    long.unlink()
    (out / "audio.mp4").write_bytes(audio_only_mp4(8))
    with av.open(str(out / "empty.avi"), "w") as c:  # a video stream with no frames
        s = c.add_stream("mpeg4", rate=FPS)
        s.width = s.height = 32
        c.start_encoding()
    write_video(
        out / "rotated.mkv", [np.ascontiguousarray(np.rot90(f, k=1)) for f in real], FPS, rotation=-90, **LOSSLESS
    )
    write_video(out / "vfr.mp4", real[:5], FPS, times=[0, 0.1, 0.15, 0.9, 1.0])
    write_video(
        out / "4k.mp4",
        [np.asarray(Image.fromarray(real[0]).resize((3840, 2160)))],
        FPS,
        options={"preset": "ultrafast"},
    )
    (out / "notes.mp4").write_text("not a video, only named like one\n")
    Image.fromarray(real[0]).save(out / "photo.mp4", format="JPEG")  # FFmpeg opens it as a 1-frame video
    Image.fromarray(real[0]).save(out / "image.png")
    return out


BAD = {
    "truncated.mp4": "truncated or corrupt video: cannot read its header or index",
    "truncated.mkv": "truncated: its frames stop at ",
    "audio.mp4": "no video stream (audio only)",
    "empty.avi": "no video frames",
    "notes.mp4": "not a video file (",
    "photo.mp4": "not a video file (its content reads as piped jpeg sequence)",
    "missing.webm": "file not found",
}


def test_each_bad_video_gets_a_row_naming_the_problem_and_the_rest_are_scored(
    bad_videos, clips, model, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s.csv"
    code = score.main(
        [
            str(bad_videos),
            str(bad_videos / "missing.webm"),
            "--model",
            str(model),
            "--tta",
            "--frames",
            "4",
            "--out",
            str(out),
        ]
    )
    assert code == 3
    rows = read_rows(out)
    rows["name"] = [Path(p).name for p in rows.path]
    rows = rows.set_index("name")
    assert sorted(rows.index) == sorted([*BAD, "good.mp4", "rotated.mkv", "vfr.mp4", "4k.mp4", "image.png"])
    for name, problem in BAD.items():
        assert rows.loc[name].error.startswith(problem), (name, rows.loc[name].error)
        assert rows.loc[name].p_fake == "" and rows.loc[name].label == ""
    assert "Traceback" not in capsys.readouterr().err
    ok = rows[rows.error == ""]
    assert sorted(ok.index) == ["4k.mp4", "good.mp4", "image.png", "rotated.mkv", "vfr.mp4"]
    # vfr.mp4's frames at 0, 0.1, 0.15, 0.9 and 1.0 s (1.25 s): the first at or after 0, 0.31, 0.62 and
    # 0.94 s are 0, 0.9 (twice: once) and 1.0 s.
    assert ok.loc[["good.mp4", "rotated.mkv", "vfr.mp4", "4k.mp4"]].frames_scored.astype(int).tolist() == [4, 4, 3, 1]
    # The rotated clip, turned upright, scores as the upright one (lossless both): the first 4 of the
    # 8 real frames at 4 fps -> times 0, 0.5, 1.0, 1.5 s.
    det = Detector.load(model, "cpu")
    upright = [Image.open(p) for p in sorted((clips / "real").glob("*.png"))][::2]
    assert float(ok.loc["rotated.mkv"].p_fake) == pytest.approx(det.score(upright).mean(), abs=1e-6)


def test_a_huge_frame_size_is_refused_before_decoding(tmp_path, monkeypatch):
    clip = write_video(tmp_path / "wide.mkv", numbered(2, size=(32, 64)), FPS, **LOSSLESS)
    from ffdi.data import video as decoding

    monkeypatch.setattr(decoding, "MAX_FRAME_PIXELS", 32 * 63)
    with pytest.raises(BadVideo, match=r"frames of 64x32 px, over the 0 Mpx of 8K: refused"):
        list(sample_frames(clip))


def test_usage_errors_exit_1(clips, model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    clip = str(clips / "real.mkv")
    assert score.main([clip, "--model", str(model), "--frames", "4", "--fps", "2"]) == 1
    assert score.main([clip, "--model", str(model), "--aggregate", "median"]) == 1
    assert "--aggregate: 'median' must be mean, max or topk:K" in capsys.readouterr().err
    assert score.main([clip, "--model", str(model), "--frames", "0"]) == 1
    assert "--frames must be at least 1" in capsys.readouterr().err
    assert score.main([clip, "--model", str(model), "--per-frame", "frames.json"]) == 1
    with pytest.raises(ConfigError, match="eval.video_aggregate: 'topk:0'"):
        EvalConfig(video_aggregate="topk:0")


# --- explain and evaluate ------------------------------------------------------------------------


def test_explain_a_video_draws_its_most_suspicious_frames(clips, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "explained"
    assert (
        explain.main(
            [str(clips / "mix.mkv"), "--model", str(model), "--out-dir", str(out), "--top", "3", "--aggregate", "max"]
        )
        == 0
    )
    rows = read_rows(out / "scores.csv")
    v = score_video(Detector.load(model, "cpu"), clips / "mix.mkv", Sampling(), "max")
    assert rows.p_fake.tolist() == pytest.approx([v.score], abs=1e-8)
    assert Image.open(out / "mix.png").size[0] > 3 * 150  # three frames side by side


def test_video_labels_are_read_as_multiffdv_writes_them(tmp_path):
    from ffdi.data.labels import read_labels

    (tmp_path / "labels.txt").write_text("video_name,target\nclip1.mp4,1\nclip2.mov,0\n")
    labels = read_labels(tmp_path / "labels.txt")
    assert labels.img_name.tolist() == ["clip1.mp4", "clip2.mov"] and labels.target.tolist() == [1, 0]


def test_an_extra_set_of_videos_reports_video_level_auc(clips, model, manifests, tmp_path):
    """A folder in multiFFDV's layout: valset/*.mp4 and `video_name,target` labels."""
    from sklearn.metrics import roc_auc_score

    root = tmp_path / "videos"
    (root / "valset").mkdir(parents=True)
    frames = {
        "real": [pixels(p) for p in sorted((clips / "real").glob("*.png"))],
        "fake": [pixels(p) for p in sorted((clips / "fake").glob("*.png"))],
    }
    lines = ["video_name,target"]
    for k in range(3):  # three clips of each class, each from a different run of the frames
        for kind, target in (("real", 0), ("fake", 1)):
            write_video(root / "valset" / f"{kind}{k}.mkv", frames[kind][k : k + 5], FPS, **LOSSLESS)
            lines.append(f"{kind}{k}.mkv,{target}")
    (root / "valset_label.txt").write_text("\n".join(lines) + "\n")
    manifest, digest = labelled_folder("clips", str(root), DataConfig())
    assert is_video_set(manifest) and len(manifest) == 6 and len(digest) == 16

    det = Detector.load(model, "cpu")
    cfg = EvalConfig(video_frames=4, video_aggregate="max", degradations=())
    index, prob, skipped, extra = score_video_set(det, manifest, cfg)
    expected = [score_video(det, p, Sampling(frames=4), "max").score for p in manifest.path]
    np.testing.assert_allclose(prob, expected, atol=1e-12)
    auc = roc_auc_score(manifest.target, expected)
    assert extra["aggregate_auc"]["max"] == pytest.approx(auc)
    assert set(extra["aggregate_auc"]) == {"max", "mean", "topk:2", "topk:4"}
    assert (extra["videos"], extra["frames_scored"], skipped) == (6, 24, [])
    # Through evaluate, as the evaluate stage calls it: metrics.json's extra_sets.<name>.
    ev = evaluate(det, manifests[1], cfg, extra={"clips": (manifest, digest)})
    got = ev.report["extra_sets"]["clips"]
    assert got["roc_auc"] == pytest.approx(auc) and got["aggregate"] == "max" and got["data_hash"] == digest
    assert (got["videos"], got["frames_scored"], got["frames_per_video"], got["skipped_videos"]) == (6, 24, 4, 0)
    np.testing.assert_allclose(ev.extra["clips"].y_pred, expected, atol=1e-12)
    assert any(
        line.startswith(f"extra set clips: roc_auc {auc:.4f} on 6 videos (max of 4 frames;")
        for line in summary_lines(ev)
    )

    (root / "valset" / "real0.mkv").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"real0.mkv: not a video file .*on_bad_image: skip"):
        score_video_set(det, manifest, cfg)
    index, prob, skipped, extra = score_video_set(det, manifest, cfg, on_bad_image="skip")
    assert list(index) == [1, 2, 3, 4, 5] and skipped[0][0].endswith("real0.mkv")
