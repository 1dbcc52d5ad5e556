"""The served model: the real `mlflow models serve` answers the Detector's numbers, and 400s
that name the problem, and keeps serving after them."""

import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from ffdi.cli import score, serve
from ffdi.config import AugmentConfig, DataConfig, Params
from ffdi.errors import ConfigError, TrackingError
from ffdi.inference import served_model
from ffdi.inference.detector import Detector
from ffdi.model import checkpoint
from ffdi.model.networks import build_model
from ffdi.tracking.pyfunc_model import log_pyfunc
from tests.test_video import audio_only_mp4

TTA = ["hflip"]
THRESHOLD = 0.5


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A ~70-byte PNG declaring 100 Mpx (1-bit grey): over PIL's ~89 Mpx limit, so never decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body, timeout: float = 60) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def images(tiny_data, tmp_path_factory):
    """Image files as users send them: JPEGs of the val split, one larger JPEG (decoded in
    draft mode), and PNG and WebP copies."""
    out = tmp_path_factory.mktemp("images")
    jpegs = sorted((tiny_data / "valset").glob("*.jpg"))[:4]
    files = list(jpegs)
    big = out / "big.jpg"
    Image.open(jpegs[0]).resize((160, 160)).save(big, quality=90)
    files.append(big)
    for fmt, suffix in (("PNG", ".png"), ("WEBP", ".webp")):
        path = out / f"{jpegs[1].stem}{suffix}"
        Image.open(jpegs[1]).save(path, format=fmt)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def clip(images, tmp_path_factory) -> "Path":
    """An H.264 MP4 of the val JPEGs, 8 frames at 4 fps."""
    from ffdi.inference.video import write_video

    frames = [np.asarray(Image.open(f).convert("RGB")) for f in images[:4]] * 2
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, 4)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A (random) model's checkpoint logged with log_pyfunc in a fresh SQLite store."""
    out = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    params = Params(data=DataConfig(root=str(out)), augment=AugmentConfig(resize=36, image_size=32))
    checkpoint.save(out / "model.pt", checkpoint.snapshot(build_model(params.model), params, 3, {}, "fp32"))
    store = f"sqlite:///{out / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    experiment = mlflow.create_experiment("ffdi", artifact_location=(out / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        uri = log_pyfunc(out / "model.pt", TTA, THRESHOLD)
    return SimpleNamespace(checkpoint=out / "model.pt", uri=uri, store=store, dir=out)


@pytest.fixture(scope="module")
def server(logged):
    """The real `mlflow models serve`, as `ffdi serve` starts it, on a free local port."""
    port = free_port()
    log = logged.dir / "server.log"
    proc = subprocess.Popen(
        serve.serve_command(logged.uri, "127.0.0.1", port),
        env=serve.serve_env(logged.store),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # model download + torch import; slow on a busy 2-core box
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve not up after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield SimpleNamespace(url=f"{base}/invocations", port=port, log=log)
    finally:
        # The CLI and the uvicorn it spawns share the session we started: stop both.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def expected(logged, images):
    return Detector.load(logged.checkpoint, "cpu", tta=TTA).score([str(f) for f in images])


def assert_serves(server, images, expected):
    status, body = post(server.url, {"inputs": [b64(f.read_bytes()) for f in images]})
    assert status == 200, body
    got = body["predictions"]
    np.testing.assert_allclose([p["p_fake"] for p in got], expected, rtol=0, atol=1e-6)
    assert [p["label"] for p in got] == ["fake" if p >= THRESHOLD else "real" for p in expected]


@pytest.mark.slow
def test_served_p_fake_is_the_detectors(server, images, expected):
    assert {f.suffix for f in images} == {".jpg", ".png", ".webp"}
    assert_serves(server, images, expected)
    assert len(set(np.round(expected, 6))) > 1
    # Line-wrapped base64 (`base64` without -w0) is the same file.
    wrapped = base64.encodebytes(images[0].read_bytes()).decode()
    status, body = post(server.url, {"inputs": [wrapped]})
    assert status == 200 and abs(body["predictions"][0]["p_fake"] - expected[0]) < 1e-6


def bad_requests(images, clip):
    jpeg = images[0].read_bytes()
    good = b64(jpeg)
    video = clip.read_bytes()
    return {
        # MP4 keeps its index at the end: half a file starts like a video but cannot be opened.
        "truncated video": (
            {"inputs": [good, b64(video[: len(video) // 2])]},
            r"inputs\[1\]: truncated or corrupt video: cannot read its header or index",
        ),
        "audio-only video": ({"inputs": [b64(audio_only_mp4())]}, r"inputs\[0\]: no video stream \(audio only\)"),
        "too many videos": (
            {"inputs": [b64(video)] * (served_model.MAX_VIDEOS + 1)},
            rf"{served_model.MAX_VIDEOS + 1} videos in one request; at most {served_model.MAX_VIDEOS}",
        ),
        "not base64": ({"inputs": ["this is not base64!"]}, r"inputs\[0\]: not base64"),
        "not an image": ({"inputs": [good, b64(b"GIF? no, plain text")]}, r"inputs\[1\]: cannot decode"),
        # PIL words it "image file is truncated" or "Truncated File Read", depending on where the cut falls.
        "truncated JPEG": (
            {"inputs": [good, good, b64(jpeg[: len(jpeg) // 2])]},
            r"inputs\[2\]: cannot decode \((?i:image file is truncated|truncated file read)",
        ),
        "decompression bomb": ({"inputs": [b64(png_bomb())]}, r"inputs\[0\]: refused as a possible decompression bomb"),
        "empty string": ({"inputs": [""]}, r"inputs\[0\]: empty"),
        "no images": ({"inputs": []}, r"no images"),
        "too many images": (
            {"inputs": [good] * (served_model.MAX_IMAGES + 1)},
            rf"{served_model.MAX_IMAGES + 1} images in one request; at most {served_model.MAX_IMAGES}",
        ),
        "not strings": ({"inputs": [1, 2]}, r"Expected type str"),  # MLflow's check of the type hint
        "no inputs key": ({"instances": [good]}, r"'inputs' key"),
        "not JSON": (b"{inputs: nope", r"valid JSON"),
    }


CASES = [
    "not base64",
    "not an image",
    "truncated JPEG",
    "decompression bomb",
    "empty string",
    "no images",
    "too many images",
    "not strings",
    "no inputs key",
    "not JSON",
    "truncated video",
    "audio-only video",
    "too many videos",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_bad_request_gets_a_400_naming_the_problem_and_serving_goes_on(server, images, expected, clip, case):
    body, problem = bad_requests(images, clip)[case]
    status, answer = post(server.url, body)
    assert status == 400, answer
    assert re.search(problem, answer["message"]), answer["message"]
    if case in ("too many images", "truncated JPEG"):  # our errors don't echo the request back
        assert len(answer["message"]) < 300, answer["message"][:300]
    assert_serves(server, images[:2], expected[:2])


@pytest.mark.slow
def test_a_video_is_served_with_the_numbers_of_ffdi_score(
    server, logged, images, expected, clip, tmp_path, monkeypatch
):
    """A video among images: its p_fake, frames and their scores are the CLI's on the same file (the
    served model's views, threshold, eval.video_frames and eval.video_aggregate: hflip, 0.5, 16, mean)."""
    status, body = post(server.url, {"inputs": [b64(images[0].read_bytes()), b64(clip.read_bytes())]})
    assert status == 200, body
    image, served = body["predictions"]
    assert image["p_fake"] == pytest.approx(expected[0], abs=1e-6)
    monkeypatch.chdir(tmp_path)
    assert (
        score.main(
            [
                str(clip),
                "--model",
                str(logged.checkpoint),
                "--tta",
                *TTA,
                "--frames",
                "16",
                "--aggregate",
                "mean",
                "--out",
                "s.csv",
                "--per-frame",
                "f.csv",
            ]
        )
        == 0
    )
    import pandas as pd

    row, frames = pd.read_csv("s.csv").iloc[0], pd.read_csv("f.csv")
    assert served["frames_scored"] == row.frames_scored == 8 and served["frames_without_face"] == 0
    assert served["aggregate"] == "mean" and served["label"] == row.label
    assert served["p_fake"] == pytest.approx(row.p_fake, abs=1e-6)
    assert [f["time"] for f in served["frames"]] == pytest.approx(frames.time.tolist(), abs=1e-6)
    np.testing.assert_allclose([f["p_fake"] for f in served["frames"]], frames.p_fake, atol=1e-6)
    assert served["p_fake"] == pytest.approx(np.mean([f["p_fake"] for f in served["frames"]]), abs=1e-9)


def test_an_oversized_file_is_refused_before_decoding():
    with pytest.raises(served_model.RequestError, match=r"inputs\[2\]: about 1 MiB; a file may be at most 0 MiB"):
        served_model.decode_base64("A" * 1_400_000, 2, max_bytes=1000)
    assert served_model.decode_base64(b64(b"x" * 1000), 0, max_bytes=1000) == b"x" * 1000


@pytest.mark.slow
def test_ffdi_serve_finds_the_workspace_or_latest_detector_and_prints_a_working_curl(
    logged, server, images, expected, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the default experiment, the store from the env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged.store)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("ffdi").experiment_id):
        newer = log_pyfunc(logged.checkpoint, [], 0.9)
    execs = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: execs.append((path, args, env)))
    assert serve.main(["--port", str(server.port)]) == 0
    ((path, args, env),) = execs
    assert args[args.index("-m", 2) + 1] == newer != logged.uri
    assert args[-4:] == ["-h", "127.0.0.1", "-p", str(server.port)]
    assert args[1:5] == ["-m", "mlflow", "models", "serve"] and "local" in args
    assert env["MLFLOW_TRACKING_URI"] == logged.store
    curl = capsys.readouterr().out.splitlines()[-1].strip()
    assert "face.jpg" in curl
    (tmp_path / "face.jpg").write_bytes(images[0].read_bytes())
    answer = json.loads(
        subprocess.run(["bash", "-c", curl], capture_output=True, text=True, check=True, timeout=60).stdout
    )
    assert abs(answer["predictions"][0]["p_fake"] - expected[0]) < 1e-6
    # A pyfunc model is also a Detector source: it carries checkpoint.pt.
    from_pyfunc = Detector.load(logged.uri, "cpu", tta=TTA).score([str(images[0])])[0]
    assert from_pyfunc == pytest.approx(expected[0], abs=1e-6)

    # In a pipeline's project the default is the workspace's model (its run reference), not the newest
    # detector of the experiment: here the older one, logged before `newer`.
    workspace_run = mlflow.get_logged_model(logged.uri.removeprefix("models:/")).source_run_id
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: python -m stages.evaluate --run-ref reports/mlflow_run.json\n"
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "mlflow_run.json").write_text(json.dumps({"run_id": workspace_run, "experiment": "ffdi"}))
    execs.clear()
    assert serve.main(["--port", str(server.port)]) == 0
    ((path, args, env),) = execs
    assert args[args.index("-m", 2) + 1] == logged.uri != newer
    execs.clear()
    assert serve.main(["--port", str(server.port), "--experiment", "ffdi"]) == 0  # the newest, asked for
    assert execs[0][1][execs[0][1].index("-m", 2) + 1] == newer
    (tmp_path / "reports" / "mlflow_run.json").write_text(json.dumps({"run_id": "0" * 32, "experiment": "ffdi"}))
    with pytest.raises(TrackingError, match=r"the workspace's run 0{32} \(reports/mlflow_run.json\) has none"):
        serve.main(["--port", str(server.port)])


def test_no_store_or_no_detector_is_a_named_error(logged, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingError, match="no MLflow store at .*mlflow.db; run ffdi serve from the project root"):
        serve.main([])
    assert not (tmp_path / "mlflow.db").exists()  # and none was created
    mlflow.set_tracking_uri(logged.store)
    with pytest.raises(TrackingError, match="no MLflow experiment 'elsewhere'"):
        serve.latest_detector("elsewhere")


def test_an_unknown_view_is_refused_at_log_time(logged):
    with pytest.raises(ConfigError, match="predict.tta: unknown view 'spin'"):
        log_pyfunc(logged.checkpoint, ["spin"], 0.5)
