"""The Detector: a trained model with everything needed to score with it. The only way to score.

Validation inside training, evaluate, predict, `ffdi score`, the served model and the
explanations all go through it, so the same image gets the same number everywhere:
the same decoding and preprocessing (read from the checkpoint), device, precision and
test-time views. P(fake) is the softmax averaged over the views.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ffdi.config import AugmentConfig, check_views
from ffdi.data.dataset import make_loader
from ffdi.data.transforms import build_uint8_transform, load_image, norm_stats, normalize_batch, to_rgb, tta_view
from ffdi.hardware import autocast, autocast_dtype, select_device
from ffdi.model import checkpoint
from ffdi.schema import CHECKPOINT_NAME

ImageInput = str | Path | bytes | Image.Image


@dataclass
class Scores:
    """What a Detector says about the readable images of a manifest or loader."""

    # (N, M * V, 2) log-softmax per model and test-time view: M models (an ensemble's members,
    # else 1), each with the same V views, view 0 of each being the image itself.
    view_logp: torch.Tensor
    targets: np.ndarray  # (N,) labels from the manifest (-1 where unknown)
    index: np.ndarray  # (N,) manifest rows these belong to
    skipped: list  # (path, reason) of images that could not be read
    models: int = 1

    @property
    def prob(self) -> np.ndarray:
        """P(fake), averaged over the views (and over the models: each has as many views)."""
        return self.view_logp[:, :, 1].double().exp().mean(1).numpy()

    @property
    def prob_single_view(self) -> np.ndarray:
        """P(fake) of the image alone, without test-time views (averaged over the models)."""
        views = self.view_logp.shape[1] // self.models
        return self.view_logp[:, ::views, 1].double().exp().mean(1).numpy()

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
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        tta: Sequence[str] = (),
        *,
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
        source: str | Path,
        device: str = "auto",
        precision: str | None = None,
        tta: Sequence[str] = (),
    ) -> Detector:
        """From a checkpoint file, a `runs:/<id>/<path>` URI or a `models:/<id>` URI.

        precision: None keeps the one the model was trained and validated in.
        """
        dev = select_device(device)
        with local_checkpoint(str(source)) as path:
            ckpt = checkpoint.load(path, dev)
        channels_last = bool(ckpt["config"]["train"].get("channels_last", True))
        model = checkpoint.rebuild_model(ckpt).to(dev).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(
            model,
            checkpoint.augment_config(ckpt),
            dev,
            precision or ckpt.get("precision", "fp32"),
            tta,
            channels_last=channels_last,
            source=str(source),
        )

    def describe(self) -> dict:
        return {
            "source": self.source,
            "device": str(self.device),
            "precision": self.precision,
            "tta": list(self.views[1:]),
            "image_size": self.augment.image_size,
        }

    # --- the forward pass: every score comes from here ---

    def view_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) batch, as the loader gives it -> (N, V, 2) log-softmax per view."""
        return self.view_log_probs_on_device(x).cpu()

    @torch.no_grad()
    def view_log_probs_on_device(self, x: torch.Tensor) -> torch.Tensor:
        """As view_log_probs, left on the device: reading it back waits for the device."""
        self.model.eval()
        x = normalize_batch(x.to(self.device, non_blocking=True), norm_stats(self.augment), self.channels_last)
        dtype = autocast_dtype(self.precision)
        out = []
        with autocast(self.device, dtype):
            for view in self.views:
                out.append(self.model(tta_view(x, view)).float().log_softmax(1))
        return torch.stack(out, 1)

    # --- what to score ---

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image -> uint8 (H, W, 3): decoded exactly as the loader decodes a file."""
        if isinstance(image, Image.Image):
            return self._transform(to_rgb(image))
        if isinstance(image, bytes):
            return self._transform(load_image(io.BytesIO(image), self.augment.resize, name="image bytes"))
        return self._transform(load_image(image, self.augment.resize))

    def prob_batch(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """P(fake) of images from `preprocess`, as one forward pass; as Scores.prob."""
        return Scores(self.view_log_probs(torch.stack(list(pixels))), np.zeros(0), np.zeros(0), []).prob

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
                # Kept on the device until the end: a read per batch would make the host wait for
                # the device every batch, so that neither could run ahead of the other.
                logp.append(self.view_log_probs_on_device(batch.x))
                targets.append(batch.y)
                index.append(batch.index)
        if not logp:
            return Scores(torch.zeros(0, len(self.views), 2), np.zeros(0, int), np.zeros(0, int), skipped)
        return Scores(torch.cat(logp).cpu(), torch.cat(targets).numpy(), torch.cat(index).numpy(), skipped)

    def score_manifest(
        self,
        manifest: pd.DataFrame,
        batch_size: int = 128,
        workers: int = 0,
        on_bad_image: str = "error",
        desc: str = "score",
    ) -> Scores:
        loader = make_loader(manifest, self.augment, batch_size, workers, train=False, on_bad_image=on_bad_image)
        return self.score_loader(loader, desc)


class Ensemble:
    """Several Detectors as one: P(fake) is the mean of the members' P(fake).

    Each member keeps its own preprocessing, device and precision; all use the same test-time
    views, so the mean over every member's views is the mean of the members' means, exactly.
    """

    def __init__(self, members: Sequence[Detector]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        if len({m.views for m in members}) != 1:
            raise ValueError("the members of an ensemble must use the same test-time views")
        self.members = list(members)
        self.views = self.members[0].views
        self.device, self.precision = self.members[0].device, self.members[0].precision
        self.augment = self.members[0].augment
        self.source = " + ".join(m.source for m in self.members)

    @classmethod
    def extend(cls, detector: Detector, sources: Sequence[str | Path], device: str = "auto") -> Ensemble:
        """`detector` and the models at `sources`, loaded with its test-time views."""
        return cls([detector, *(Detector.load(s, device, tta=detector.views[1:]) for s in sources)])

    def describe(self) -> dict:
        return {"members": [m.describe() for m in self.members], "tta": list(self.views[1:])}

    def preprocess(self, image: ImageInput) -> tuple[torch.Tensor, ...]:
        return tuple(m.preprocess(image) for m in self.members)

    def prob_batch(self, pixels: Sequence[tuple[torch.Tensor, ...]]) -> np.ndarray:
        return np.mean([m.prob_batch([p[i] for p in pixels]) for i, m in enumerate(self.members)], axis=0)

    def score(self, images: Iterable[ImageInput], batch_size: int = 64) -> np.ndarray:
        images = list(images)
        return np.mean([m.score(images, batch_size) for m in self.members], axis=0)

    def score_manifest(
        self,
        manifest: pd.DataFrame,
        batch_size: int = 128,
        workers: int = 0,
        on_bad_image: str = "error",
        desc: str = "score",
    ) -> Scores:
        scores = [
            m.score_manifest(manifest, batch_size, workers, on_bad_image, f"{desc} {k + 1}/{len(self.members)}")
            for k, m in enumerate(self.members)
        ]
        first = scores[0]
        if any(not np.array_equal(s.index, first.index) for s in scores[1:]):
            raise RuntimeError("the members of the ensemble could not read the same images")
        return Scores(
            torch.cat([s.view_logp for s in scores], 1), first.targets, first.index, first.skipped, models=len(scores)
        )


@contextlib.contextmanager
def local_checkpoint(source: str) -> Iterator[Path]:
    """A local checkpoint path for a path or an MLflow URI; a download lives in a temp dir that
    is removed on exit (the checkpoint is in memory by then)."""
    if "://" not in source and not source.startswith(("runs:", "models:")):
        yield Path(source)
        return
    import mlflow

    with tempfile.TemporaryDirectory(prefix="ffdi-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
        found = [local] if local.is_file() else sorted(local.rglob(CHECKPOINT_NAME))
        if not found:
            raise FileNotFoundError(f"{source}: no {CHECKPOINT_NAME} inside; was it logged by ffdi's train stage?")
        yield found[0]
