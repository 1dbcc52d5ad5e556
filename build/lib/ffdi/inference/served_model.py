"""The served model: an MLflow pyfunc around the Detector (`DetectorModel`).

    request:  POST /invocations  {"inputs": ["<base64 of an image file>", ...]}   JPEG, PNG or WebP
    response: {"predictions": [{"p_fake": 0.93, "label": "fake"}, ...]}           one per image, in order

A video (MP4/MOV, Matroska/WebM or AVI, told from its first bytes) may stand among the inputs:
its prediction adds frames_scored, frames_without_face, aggregate and frames ([{time, p_fake}]),
sampled and aggregated as `ffdi score` does with eval.video_frames and eval.video_aggregate
(ffdi.inference.video), so the numbers are the CLI's. Each file is at most MAX_FILE_BYTES, and a request
holds at most MAX_VIDEOS videos.

The pyfunc carries the training checkpoint and builds the same Detector as the predict
stage (decoding, preprocessing, precision, test-time views), so the served P(fake) of an
image is the submission's. A bad request (not base64, not an image, truncated, a
decompression bomb, no images, more than MAX_IMAGES, a bad or oversized video) gets HTTP 400 with a message naming
the problem and the image; the server goes on serving.

The evaluate stage logs it (ffdi.tracking.pyfunc_model.log_pyfunc); `ffdi serve` (ffdi.cli.serve) serves it.
"""

from __future__ import annotations

import base64
import binascii

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from ffdi.errors import BadImage

# Images per request. The scoring server holds the whole request in memory and answers
# one request at a time per worker; more images belong in more requests (or the predict stage).
MAX_IMAGES = 64
# A video is decoded frame by frame, but its bytes (and their base64) sit in memory whole.
MAX_FILE_BYTES = 64 * 2**20
MAX_VIDEOS = 4
DEFAULT_THRESHOLD = 0.5


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
        from ffdi.inference.detector import Detector

        config = context.model_config or {}
        self.detector = Detector.load(context.artifacts["checkpoint"], device="cpu", tta=config.get("tta", ()))
        self.threshold = float(config.get("threshold", DEFAULT_THRESHOLD))
        self.max_images = int(config.get("max_images", MAX_IMAGES))
        self.video_frames = int(config.get("video_frames", 16))
        self.video_aggregate = str(config.get("video_aggregate", "mean"))

    def predict(self, context, model_input: list[str], params=None) -> list[dict]:
        from ffdi.inference.video import sniff_video

        if len(model_input) == 0:
            raise RequestError('no images: send {"inputs": ["<base64 of an image file>", ...]}')
        if len(model_input) > self.max_images:
            raise RequestError(
                f"{len(model_input)} images in one request; at most {self.max_images}: split them over several requests"
            )
        files = [decode_base64(text, i) for i, text in enumerate(model_input)]
        videos = [i for i, data in enumerate(files) if sniff_video(data)]
        if len(videos) > MAX_VIDEOS:
            raise RequestError(
                f"{len(videos)} videos in one request; at most {MAX_VIDEOS}: split them over several requests"
            )
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

        from ffdi.inference.video import Sampling, score_video

        v = score_video(
            self.detector,
            io.BytesIO(data),
            Sampling(frames=self.video_frames),
            self.video_aggregate,
            name=f"inputs[{index}]",
        )
        if v.error:
            raise RequestError(f"inputs[{index}]: {v.error}")
        return {
            "p_fake": v.score,
            "label": self.label(v.score),
            "frames_scored": v.frames_scored,
            "frames_without_face": v.frames_without_face,
            "aggregate": v.aggregate,
            "frames": [{"time": f.time, "p_fake": f.p_fake} for f in v.frames],
        }


def decode_base64(text: str, index: int, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """One request item -> the image file's bytes. Line breaks are allowed (`base64` without -w0)."""
    if isinstance(text, str) and len(text) > (max_bytes + 2) // 3 * 4 * 1.02:  # before decoding it; 2% for line breaks
        raise RequestError(
            f"inputs[{index}]: about {len(text) * 3 / 4 / 2**20:.0f} MiB; a file may be at most "
            f"{max_bytes / 2**20:.0f} MiB"
        )
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(
            f"inputs[{index}]: not base64 ({e}); send each image file base64-encoded, e.g. `base64 -w0 face.jpg`"
        ) from None
    if not data:
        raise RequestError(f"inputs[{index}]: empty: no image bytes")
    return data


def score_images(detector, images: list[bytes], positions: list[int] | None = None):
    """P(fake) of each image file; an unreadable one is a RequestError naming its position
    (in the request: `positions[k]` for images[k], where videos stood among them)."""
    position = -1

    def numbered():
        nonlocal position
        for position, image in enumerate(images):  # noqa: B007 (nonlocal: the except clause below reads it)
            yield image

    try:
        return detector.score(numbered(), batch_size=len(images))
    except BadImage as e:
        # The Detector names bytes "image bytes"; the client knows them by their position.
        where = positions[position] if positions is not None else position
        raise RequestError(f"inputs[{where}]: {str(e).removeprefix('image bytes: ')}") from None
