"""The servable detector (ffdi.inference.served_model) logged as an MLflow pyfunc LoggedModel, by the
evaluate stage: `log_pyfunc`. `ffdi serve` finds the latest one by its name, MODEL_NAME.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow

from ffdi.inference.served_model import DEFAULT_THRESHOLD, MAX_FILE_BYTES, MAX_IMAGES, MAX_VIDEOS, DetectorModel
from ffdi.schema import CHECKPOINT_NAME

# The LoggedModel's name: `ffdi serve` finds the latest one of this name.
MODEL_NAME = "detector"


# What ffdi's scoring path imports, recorded with the model (`mlflow models build-docker`
# installs them); passing them skips MLflow's slow requirement inference.
REQUIREMENTS = (
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "pillow",
    "PyYAML",
    "pydantic",
    "tqdm",
    "av",
)


FFDI_PACKAGE = Path(__file__).resolve().parents[1]  # ffdi/


def log_pyfunc(
    checkpoint_file: Path,
    tta: list[str],
    threshold: float = DEFAULT_THRESHOLD,
    video_frames: int = 16,
    video_aggregate: str = "mean",
) -> str:
    """Log the servable detector in the active MLflow run; return its models:/ URI.

    It carries the checkpoint (as checkpoint.pt, so `Detector.load("models:/<id>")` finds it
    too), the test-time views and threshold to score with, and ffdi's own code, so the model
    alone serves (`mlflow models serve`) or builds an image (`mlflow models build-docker`).
    No input example: it would load and run the model at log time.
    """
    from importlib.metadata import version

    from ffdi.config import check_views, parse_aggregate
    from ffdi.model import checkpoint

    check_views(tuple(tta), "predict.tta")  # now, not at the server's start
    parse_aggregate(video_aggregate, "eval.video_aggregate")
    checkpoint_file = Path(checkpoint_file)
    ckpt = checkpoint.load(checkpoint_file)
    with tempfile.TemporaryDirectory(prefix="ffdi-") as tmp:
        named = checkpoint_file
        if checkpoint_file.name != CHECKPOINT_NAME:
            named = Path(shutil.copyfile(checkpoint_file, Path(tmp) / CHECKPOINT_NAME))
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=DetectorModel(),
            artifacts={"checkpoint": str(named)},
            model_config={
                "tta": list(tta),
                "threshold": float(threshold),
                "max_images": MAX_IMAGES,
                "video_frames": int(video_frames),
                "video_aggregate": video_aggregate,
            },
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
