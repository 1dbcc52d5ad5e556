"""The trained network logged as an MLflow PyTorch LoggedModel, by the train stage: `log_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The model's runtime needs, recorded with it; passing them skips MLflow's slow inference.
MODEL_REQUIREMENTS = ("torch", "torchvision", "timm", "numpy")


def log_model(model: Any, ckpt: dict, checkpoint_file: Path) -> str:
    """Log the model as an MLflow LoggedModel; return its models:/ URI.

    Pickle format, not MLflow 3's torch.export default: users get back the timm
    module itself (SE blocks and all) and any batch size, not a traced graph.
    The checkpoint travels inside it too, so `Detector.load("models:/<id>")` rebuilds
    the same scorer (preprocessing, precision) that evaluate and predict used. It is
    logged at the step of the epoch it comes from: MLflow shows that epoch's metrics
    on the model's page.
    """
    from importlib.metadata import version

    import mlflow
    import numpy as np

    augment = ckpt["config"]["augment"]
    size = int(augment["image_size"])
    example = np.zeros((2, 3, size, size), dtype=np.float32)
    info = mlflow.pytorch.log_model(
        model.cpu().eval(),
        name="model",
        input_example=example,
        pip_requirements=[f"{p}=={version(p)}" for p in MODEL_REQUIREMENTS],
        serialization_format="pickle",
        step=int(ckpt["epoch"]),
        extra_files=[str(checkpoint_file)],
        metadata={
            "preprocess": augment,
            "precision": ckpt.get("precision", "fp32"),
            "output": "logits (N, 2); softmax[:, 1] = probability of fake",
        },
    )
    return info.model_uri
