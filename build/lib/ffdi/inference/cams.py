"""Where a detector sees fake evidence: class activation maps of the "fake" class, and drawing them
over the image. `ffdi explain` (ffdi.cli.explain) writes them per file; evaluate's gallery
(ffdi.evaluation.gallery) draws a scored split's most confident mistakes and hits with them.

Faithful to the score by construction: the map is computed on exactly the tensor the
Detector scores (its preprocess + normalize_batch), for each of its test-time views, mapped
back onto the image and averaged, as the views' probabilities are; p_fake is the Detector's own.

The layer: the usual choice, the last stage, is 2x2 at 64 px (ResNet-18 strides by 32), too
coarse to point at anything. We take the deepest top-level stage whose output is still at
least 8x8 at the model's image size: layer2 at 64 px, layer3 at 128, layer4 at 256.

The method: Grad-CAM weighs each channel by its gradient averaged over the whole map. That
suits the last stage, whose channels are about classes, but on a mid-level stage such as layer2
a channel is a texture found everywhere, and the averaged weight smears the map. LayerCAM
(Jiang et al., IEEE TIP 2021) weighs each position by its own positive gradient instead, and was
made for such layers. On the built-in sample at 64 px (layer2), for detected fakes the map's mean
was higher inside the manipulated region than outside it for 80-89% of images with LayerCAM,
against 57-62% with Grad-CAM (three models; tests/test_explain.py checks it). `--method gradcam`
gives the classic Grad-CAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ffdi.data.transforms import norm_stats, normalize_batch, tta_view
from ffdi.errors import FfdiError
from ffdi.files import save_figure
from ffdi.schema import CAM_METHODS

FAKE = 1  # the class index whose evidence is mapped
MIN_CELLS = 8  # the map's coarsest acceptable grid, per side
METHODS = CAM_METHODS  # name -> (pytorch_grad_cam's class, title)


class ExplainError(FfdiError):
    pass


def stage_shapes(model: nn.Module, image_size: int, device) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of each top-level module, in the order a forward pass runs them."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: shapes.append((name, tuple(o.shape))))
        for name, module in model.named_children()
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def pick_layer(model: nn.Module, image_size: int, device="cpu", min_cells: int = MIN_CELLS) -> str:
    """The deepest top-level stage whose feature map is at least min_cells x min_cells."""
    fine = [
        name
        for name, shape in stage_shapes(model, image_size, device)
        if len(shape) == 4 and min(shape[2:]) >= min_cells
    ]
    if not fine:
        raise ExplainError(
            f"no stage of the model keeps a {min_cells}x{min_cells} map at {image_size} px; pass --layer"
        )
    return fine[-1]


def _undo_view(cam: np.ndarray, view: str) -> np.ndarray:
    """A map computed on `tta_view(x, view)`, (N, H, W), back in the image's own orientation."""
    if view == "":
        return cam
    if view == "hflip":
        return cam[:, :, ::-1]
    if view == "vflip":
        return cam[:, ::-1, :]
    if view == "transpose":
        return cam.transpose(0, 2, 1)
    k = {"rot90": 1, "rot180": 2, "rot270": 3}[view]
    return np.rot90(cam, -k, axes=(1, 2))


class Explainer:
    """Maps of a Detector's "fake" class, in [0, 1] per image, at the model's input size."""

    def __init__(self, detector, layer: str | None = None, method: str = "layercam"):
        if method not in METHODS:
            raise ExplainError(f"--method {method}: expected one of {', '.join(METHODS)}")
        self.detector, self.method = detector, method
        self.title = METHODS[method][1]
        model = detector.model
        self.layer = layer or pick_layer(model, detector.augment.image_size, detector.device)
        modules = dict(model.named_modules())
        if self.layer not in modules:
            stages = ", ".join(name for name, _ in model.named_children())
            raise ExplainError(f"--layer {self.layer}: the model has no such module (its stages: {stages})")
        self.module = modules[self.layer]

    def cams(self, pixels: torch.Tensor) -> np.ndarray:
        """uint8 (N, H, W, 3), as Detector.preprocess gives it -> (N, H, W) float32 maps in [0, 1]."""
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        det = self.detector
        x = normalize_batch(pixels.to(det.device), norm_stats(det.augment), det.channels_last)
        targets = [ClassifierOutputTarget(FAKE)] * len(x)
        cam = getattr(pytorch_grad_cam, METHODS[self.method][0])(model=det.model, target_layers=[self.module])
        try:
            with torch.enable_grad():
                maps = [_undo_view(cam(tta_view(x, view), targets), view) for view in det.views]
        finally:
            cam.activations_and_grads.release()
            det.model.zero_grad(set_to_none=True)
        mean = np.mean(maps, axis=0)
        low = mean.min(axis=(1, 2), keepdims=True)
        high = mean.max(axis=(1, 2), keepdims=True)
        return ((mean - low) / np.maximum(high - low, 1e-7)).astype(np.float32)

    def explain(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(p_fake, maps) of a uint8 batch: p_fake exactly as Detector.score computes it."""
        logp = self.detector.view_log_probs(pixels)
        return logp[:, :, 1].double().exp().mean(1).numpy(), self.cams(pixels)


# --- pictures -------------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_map(ax, pixels: np.ndarray, cam: np.ndarray | None, title: str) -> None:
    ax.imshow(pixels, interpolation="nearest")
    if cam is not None:
        ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def save_overlay(pixels: np.ndarray, cam: np.ndarray, title: str, out: Path, method: str = "map") -> None:
    """The image as the model sees it, and the same with the map over it."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100)
    draw_map(left, pixels, None, "input to the model")
    draw_map(right, pixels, cam, f"{method}, class fake")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out)


def save_strip(frames: list, cams: np.ndarray, title: str, out: Path, method: str = "map") -> None:
    """Frames (p_fake, time, uint8 pixels) side by side, each with its map over it."""
    plt = pyplot()
    n = max(len(frames), 1)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.7), dpi=100, squeeze=False)
    for ax, (p, t, px), cam in zip(axes[0], frames, cams):
        draw_map(ax, np.asarray(px), cam, f"{t:.2f} s\np_fake {p:.3f}")
    fig.suptitle(f"{title}\n{method}, class fake", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.82))  # room for the two-line title
    save_figure(fig, out)
