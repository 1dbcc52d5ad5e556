"""The Detector: a trained model with everything needed to score with it. The only way to score.

Validation inside training, evaluate, predict, `ffdi score`, the served model and the
explanations all go through it, so the same image gets the same number everywhere:
the same decoding and preprocessing (read from the checkpoint), device, precision and
test-time views. P(fake) is the softmax averaged over the views.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ffdi import checkpoint
from ffdi.config import AugmentConfig, check_views
from ffdi.data import make_loader
from ffdi.hardware import autocast_dtype, select_device
from ffdi.transforms import build_uint8_transform, load_image, normalize_batch, to_rgb, tta_view

ImageInput = Union[str, Path, bytes, Image.Image]


@dataclass
class Scores:
    """What a Detector says about the readable images of a manifest or loader."""

    view_logp: torch.Tensor  # (N, V, 2) log-softmax per test-time view; view 0 is the image itself
    targets: np.ndarray  # (N,) labels from the manifest (-1 where unknown)
    index: np.ndarray  # (N,) manifest rows these belong to
    skipped: list  # (path, reason) of images that could not be read

    @property
    def prob(self) -> np.ndarray:
        """P(fake), averaged over the views."""
        return self.view_logp[:, :, 1].double().exp().mean(1).numpy()

    @property
    def prob_single_view(self) -> np.ndarray:
        """P(fake) of the image alone, without test-time views."""
        return self.view_logp[:, 0, 1].double().exp().numpy()

    def log_loss(self) -> float:
        """Mean negative log of the view-averaged probability of the true class."""
        y = torch.as_tensor(self.targets, dtype=torch.long)
        logp = self.view_logp.double().gather(2, y.view(-1, 1, 1).expand(-1, self.view_logp.shape[1], 1))[..., 0]
        views = self.view_logp.shape[1]
        return float(-(torch.logsumexp(logp, dim=1) - np.log(views)).mean())


class Detector:
    def __init__(
        self,
        model: nn.Module,
        augment: AugmentConfig,
        device: Union[str, torch.device] = "cpu",
        precision: str = "fp32",
        tta: Sequence[str] = (),
        channels_last: bool = True,
        source: str = "",
    ):
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            precision = "fp32"  # a GPU-trained fp16 model scored on a CPU: fp16 autocast is CUDA's
        check_views(tuple(tta), "tta")
        self.model, self.augment, self.precision = model, augment, precision
        self.views = ("", *tta)
        self.channels_last = channels_last
        self.source = source
        self._transform = build_uint8_transform(augment, train=False)

    @classmethod
    def load(
        cls,
        source: Union[str, Path],
        device: str = "auto",
        precision: Optional[str] = None,
        tta: Sequence[str] = (),
    ) -> "Detector":
        """From a checkpoint file, a `runs:/<id>/<path>` URI or a `models:/<id>` URI.

        precision: None keeps the one the model was trained and validated in.
        """
        dev = select_device(device)
        ckpt = checkpoint.load(resolve_checkpoint(str(source)), dev)
        channels_last = bool(ckpt["config"]["train"].get("channels_last", True))
        model = checkpoint.rebuild_model(ckpt).to(dev).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(model, checkpoint.augment_config(ckpt), dev, precision or ckpt.get("precision", "fp32"), tta,
                   channels_last, str(source))

    def describe(self) -> dict:
        return {"source": self.source, "device": str(self.device), "precision": self.precision,
                "tta": list(self.views[1:]), "image_size": self.augment.image_size}

    # --- the forward pass: every score comes from here ---

    @torch.no_grad()
    def view_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) batch, as the loader gives it -> (N, V, 2) log-softmax per view."""
        self.model.eval()
        x = normalize_batch(x.to(self.device, non_blocking=True), self.augment.normalize, self.channels_last)
        dtype = autocast_dtype(self.precision)
        out = []
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            for view in self.views:
                out.append(self.model(tta_view(x, view)).float().log_softmax(1))
        return torch.stack(out, 1).cpu()

    # --- what to score ---

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image -> uint8 (H, W, 3): decoded exactly as the loader decodes a file."""
        if isinstance(image, Image.Image):
            return self._transform(to_rgb(image))
        if isinstance(image, bytes):
            return self._transform(load_image(io.BytesIO(image), self.augment.resize, name="image bytes"))
        return self._transform(load_image(image, self.augment.resize))

    def score(self, images: Iterable[ImageInput], batch_size: int = 64) -> np.ndarray:
        """P(fake) for each image (paths, encoded bytes or PIL images). Unreadable ones raise BadImage."""
        out, batch = [], []
        for image in images:
            batch.append(self.preprocess(image))
            if len(batch) == batch_size:
                out.append(self.view_log_probs(torch.stack(batch)))
                batch = []
        if batch:
            out.append(self.view_log_probs(torch.stack(batch)))
        if not out:
            return np.zeros(0)
        return Scores(torch.cat(out), np.full(sum(len(o) for o in out), -1), np.arange(0), []).prob

    def score_loader(self, loader, desc: str = "score") -> Scores:
        """Every readable image of a loader from `data.make_loader(..., train=False)`."""
        logp, targets, index, skipped = [], [], [], []
        with tqdm(total=len(loader.dataset), desc=desc, unit="img", mininterval=1.0, leave=False) as bar:
            for batch in loader:
                bar.update(len(batch.y) + len(batch.skipped))
                for i, reason in batch.skipped:
                    tqdm.write(f"skipped: {reason}")
                    skipped.append((loader.dataset.paths[i], reason))
                if batch.x is None:
                    continue
                logp.append(self.view_log_probs(batch.x))
                targets.append(batch.y)
                index.append(batch.index)
        if not logp:
            return Scores(torch.zeros(0, len(self.views), 2), np.zeros(0, int), np.zeros(0, int), skipped)
        return Scores(torch.cat(logp), torch.cat(targets).numpy(), torch.cat(index).numpy(), skipped)

    def score_manifest(
        self, manifest: pd.DataFrame, batch_size: int = 128, workers: int = 0, on_bad_image: str = "error",
        desc: str = "score",
    ) -> Scores:
        loader = make_loader(manifest, self.augment, batch_size, workers, train=False, on_bad_image=on_bad_image)
        return self.score_loader(loader, desc)


def resolve_checkpoint(source: str) -> Path:
    """A local checkpoint path for a path or an MLflow URI (downloaded to a temp dir)."""
    if "://" not in source and not source.startswith(("runs:", "models:")):
        return Path(source)
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tempfile.mkdtemp(prefix="ffdi-")))
    if local.is_file():
        return local
    found = sorted(local.rglob(checkpoint.CHECKPOINT_NAME))
    if not found:
        raise FileNotFoundError(f"{source}: no {checkpoint.CHECKPOINT_NAME} inside; was it logged by ffdi's train stage?")
    return found[0]
