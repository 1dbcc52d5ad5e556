"""The served model: an MLflow pyfunc around the Detector, and `ffdi serve`.

    request:  POST /invocations  {"inputs": ["<base64 of an image file>", ...]}   JPEG, PNG or WebP
    response: {"predictions": [{"p_fake": 0.93, "label": "fake"}, ...]}           one per image, in order

A video (MP4/MOV, Matroska/WebM or AVI, told from its first bytes) may stand among the inputs:
its prediction adds frames_scored, frames_without_face, aggregate and frames ([{time, p_fake}]),
sampled and aggregated as `ffdi score` does with eval.video_frames and eval.video_aggregate
(ffdi.video), so the numbers are the CLI's. Each file is at most MAX_FILE_BYTES, and a request
holds at most MAX_VIDEOS videos.

The pyfunc carries the training checkpoint and builds the same Detector as the predict
stage (decoding, preprocessing, precision, test-time views), so the served P(fake) of an
image is the submission's. A bad request (not base64, not an image, truncated, a
decompression bomb, no images, more than MAX_IMAGES, a bad or oversized video) gets HTTP 400 with a message naming
the problem and the image; the server goes on serving.

    ffdi serve [--model models:/<id> | runs:/<run id>/detector] [--port 5001] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import mlflow
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from ffdi.errors import BadImage, TrackingError

# The LoggedModel's name: `ffdi serve` finds the latest one of this name.
MODEL_NAME = "detector"
# Images per request. The scoring server holds the whole request in memory and answers
# one request at a time per worker; more images belong in more requests (or the predict stage).
MAX_IMAGES = 64
# A video is decoded frame by frame, but its bytes (and their base64) sit in memory whole.
MAX_FILE_BYTES = 64 * 2**20
MAX_VIDEOS = 4
DEFAULT_THRESHOLD = 0.5
# What ffdi's scoring path imports, recorded with the model (`mlflow models build-docker`
# installs them); passing them skips MLflow's slow requirement inference.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "numpy", "pandas", "pillow", "PyYAML", "pydantic", "tqdm",
                "av")
FFDI_PACKAGE = Path(__file__).resolve().parent


class RequestError(MlflowException):
    """A bad request: HTTP 400 (INVALID_PARAMETER_VALUE) with a message naming the problem.

    MLflow's scoring server rewrites the message of an MlflowException raised in predict
    to "Failed to predict data '<the whole request>'. Error: <message>", which would echo
    megabytes of base64 back to the client; this keeps the message the problem alone.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._problem

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_problem"):  # set once, by MlflowException.__init__
            self._problem = value


class DetectorModel(mlflow.pyfunc.PythonModel):
    """P(fake) and a label for each base64-encoded image file, from ffdi's Detector."""

    def load_context(self, context) -> None:
        from ffdi.detector import Detector

        config = context.model_config or {}
        self.detector = Detector.load(context.artifacts["checkpoint"], device="cpu", tta=config.get("tta", ()))
        self.threshold = float(config.get("threshold", DEFAULT_THRESHOLD))
        self.max_images = int(config.get("max_images", MAX_IMAGES))
        self.video_frames = int(config.get("video_frames", 16))
        self.video_aggregate = str(config.get("video_aggregate", "mean"))

    def predict(self, context, model_input: list[str], params=None) -> list[dict]:
        from ffdi.video import sniff_video

        if len(model_input) == 0:
            raise RequestError('no images: send {"inputs": ["<base64 of an image file>", ...]}')
        if len(model_input) > self.max_images:
            raise RequestError(f"{len(model_input)} images in one request; at most {self.max_images}: "
                               "split them over several requests")
        files = [decode_base64(text, i) for i, text in enumerate(model_input)]
        videos = [i for i, data in enumerate(files) if sniff_video(data)]
        if len(videos) > MAX_VIDEOS:
            raise RequestError(f"{len(videos)} videos in one request; at most {MAX_VIDEOS}: "
                               "split them over several requests")
        out: list[dict] = [{} for _ in files]
        images = [i for i in range(len(files)) if i not in set(videos)]
        if images:
            for i, p in zip(images, score_images(self.detector, [files[i] for i in images], images)):
                out[i] = {"p_fake": float(p), "label": self.label(p)}
        for i in videos:
            out[i] = self.score_video(files[i], i)
        return out

    def label(self, p: float) -> str:
        return "fake" if p >= self.threshold else "real"

    def score_video(self, data: bytes, index: int) -> dict:
        """A video's prediction, as `ffdi score` computes it; a bad one is a RequestError."""
        import io

        from ffdi.video import Sampling, score_video

        v = score_video(self.detector, io.BytesIO(data), Sampling(frames=self.video_frames), self.video_aggregate,
                        name=f"inputs[{index}]")
        if v.error:
            raise RequestError(f"inputs[{index}]: {v.error}")
        return {"p_fake": v.score, "label": self.label(v.score), "frames_scored": v.frames_scored,
                "frames_without_face": v.frames_without_face, "aggregate": v.aggregate,
                "frames": [{"time": f.time, "p_fake": f.p_fake} for f in v.frames]}


def decode_base64(text: str, index: int, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """One request item -> the image file's bytes. Line breaks are allowed (`base64` without -w0)."""
    if isinstance(text, str) and len(text) > (max_bytes + 2) // 3 * 4 * 1.02:  # before decoding it; 2% for line breaks
        raise RequestError(f"inputs[{index}]: about {len(text) * 3 / 4 / 2**20:.0f} MiB; a file may be at most "
                           f"{max_bytes / 2**20:.0f} MiB")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"inputs[{index}]: not base64 ({e}); send each image file base64-encoded, "
                           "e.g. `base64 -w0 face.jpg`") from None
    if not data:
        raise RequestError(f"inputs[{index}]: empty: no image bytes")
    return data


def score_images(detector, images: list[bytes], positions: Optional[list[int]] = None):
    """P(fake) of each image file; an unreadable one is a RequestError naming its position
    (in the request: `positions[k]` for images[k], where videos stood among them)."""
    position = -1

    def numbered():
        nonlocal position
        for position, image in enumerate(images):
            yield image

    try:
        return detector.score(numbered(), batch_size=len(images))
    except BadImage as e:
        # The Detector names bytes "image bytes"; the client knows them by their position.
        where = positions[position] if positions is not None else position
        raise RequestError(f"inputs[{where}]: {str(e).removeprefix('image bytes: ')}") from None


def log_pyfunc(checkpoint_file: Path, tta: list[str], threshold: float = DEFAULT_THRESHOLD,
               video_frames: int = 16, video_aggregate: str = "mean") -> str:
    """Log the servable detector in the active MLflow run; return its models:/ URI.

    It carries the checkpoint (as checkpoint.pt, so `Detector.load("models:/<id>")` finds it
    too), the test-time views and threshold to score with, and ffdi's own code, so the model
    alone serves (`mlflow models serve`) or builds an image (`mlflow models build-docker`).
    No input example: it would load and run the model at log time.
    """
    from importlib.metadata import version

    from ffdi import checkpoint
    from ffdi.config import check_views, parse_aggregate

    check_views(tuple(tta), "predict.tta")  # now, not at the server's start
    parse_aggregate(video_aggregate, "eval.video_aggregate")
    checkpoint_file = Path(checkpoint_file)
    ckpt = checkpoint.load(checkpoint_file)
    with tempfile.TemporaryDirectory(prefix="ffdi-") as tmp:
        named = checkpoint_file
        if checkpoint_file.name != checkpoint.CHECKPOINT_NAME:
            named = Path(shutil.copyfile(checkpoint_file, Path(tmp) / checkpoint.CHECKPOINT_NAME))
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=DetectorModel(),
            artifacts={"checkpoint": str(named)},
            model_config={"tta": list(tta), "threshold": float(threshold), "max_images": MAX_IMAGES,
                          "video_frames": int(video_frames), "video_aggregate": video_aggregate},
            code_paths=[str(FFDI_PACKAGE)],
            pip_requirements=[f"{p}=={version(p)}" for p in REQUIREMENTS],
            step=int(ckpt.get("epoch", 0)),
            metadata={
                "input": f"list of base64-encoded image files (JPEG, PNG, WebP), at most {MAX_IMAGES}, or videos "
                         f"(MP4, MOV, MKV, WebM, AVI), at most {MAX_VIDEOS}; each at most {MAX_FILE_BYTES // 2**20} MiB",
                "output": "one {p_fake, label} per image; label is fake where p_fake >= threshold; a video's adds "
                          "frames_scored, frames_without_face, aggregate and frames [{time, p_fake}]",
                "preprocess": ckpt["config"]["augment"],
                "precision": ckpt.get("precision", "fp32"),
            },
        )
    return info.model_uri


# --- `ffdi serve` ---


def latest_detector(experiment: str) -> str:
    """The models:/ URI of the newest detector logged in the experiment of the current store."""
    exp = mlflow.MlflowClient().get_experiment_by_name(experiment)
    store = mlflow.get_tracking_uri()
    if exp is None:
        raise TrackingError(f"no MLflow experiment {experiment!r} in {store}; train first (dvc repro)")
    found = mlflow.search_logged_models(
        experiment_ids=[str(exp.experiment_id)],
        filter_string=f"name = '{MODEL_NAME}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=100,
        output_format="list",
    )
    # Skip a model whose logging was interrupted. Not in the filter: MLflow 3.17's SQL store
    # keeps the status as a number, and `status = 'READY'` matches nothing.
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    if not ready:
        raise TrackingError(f"no {MODEL_NAME!r} model logged in experiment {experiment!r} of {store}; "
                            "train with tracking.log_model: true, or pass --model models:/<id>")
    return ready[0].model_uri


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port)]


def serve_env(tracking: str) -> dict[str, str]:
    """The server's environment: our store (to resolve models:/), and our venv's bin on PATH,
    where MLflow looks for `uvicorn`, even when ffdi was started without activating the venv."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def curl_example(host: str, port: int, image: str = "face.jpg") -> str:
    """A command that scores one image file. The payload goes through stdin: a 100 kB image's
    base64 would exceed the kernel's limit on a single command-line argument."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/invocations"
    return (f"printf '{{\"inputs\": [\"%s\"]}}' \"$(base64 -w0 {shlex.quote(image)})\" | "
            f"curl -s {url} -H 'Content-Type: application/json' --data-binary @-")


def example_image(params_file: Path = Path("params.yaml")) -> str:
    """An image of the project's val split, for the curl example; a placeholder if none."""
    try:
        from ffdi.config import load_params

        data = load_params(params_file).data
        with os.scandir(Path(data.root) / data.val_dir) as entries:
            for entry in entries:
                if entry.name.lower().endswith((".jpg", ".jpeg", ".png", ".webp")):
                    return os.path.relpath(entry.path)
    except (OSError, ValueError):
        pass
    return "face.jpg"


def main(argv: Optional[list[str]] = None) -> int:
    from ffdi import tracking
    from ffdi.config import load_params

    ap = argparse.ArgumentParser(prog="ffdi serve", description="Serve a logged detector over HTTP with "
                                 "`mlflow models serve`: POST base64 image files, get P(fake) back.")
    ap.add_argument("--model", help="models:/<id> or runs:/<run id>/detector (default: the latest detector "
                    "logged in the experiment)")
    ap.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment in params.yaml)")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept requests from other machines")
    args = ap.parse_args(argv)
    cfg = load_params(optional=True).tracking
    store = tracking.tracking_uri(cfg)
    local = Path(store.removeprefix("sqlite:///"))
    if store.startswith("sqlite:///") and not local.is_file():  # opening it would create an empty one
        raise TrackingError(f"no MLflow store at {local}; run ffdi serve from the project root, after training")
    mlflow.set_tracking_uri(store)
    model = args.model or latest_detector(args.experiment or cfg.experiment)
    command = serve_command(model, args.host, args.port)
    print(f"serving {model} from {store} on http://{args.host}:{args.port} (Ctrl-C stops it)\n"
          f"score an image, up to {MAX_IMAGES} per request:\n  {curl_example(args.host, args.port, example_image())}",
          flush=True)  # exec drops whatever is still buffered
    os.execve(command[0], command, serve_env(store))
    return 0  # not reached
