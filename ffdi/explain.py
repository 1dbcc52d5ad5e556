"""Where a detector sees fake evidence: class activation maps of the "fake" class, as overlays.

    ffdi explain IMG... --out-dir DIR [--model M] [--tta VIEW...] [--layer NAME] [--method layercam]

Per image, DIR/<name>.png shows the image as the model sees it (decoded, resized, cropped)
beside the map of class 1 (fake) laid over it, with its p_fake in the title; DIR/scores.csv
lists path, p_fake, label, error and overlay. A video (ffdi.video) gets DIR/<name>.png: a strip of
its --top most suspicious sampled frames, each with its map, time and p_fake; its row's p_fake is
the video's, as `ffdi score` gives it. `gallery` draws the most confident mistakes and
hits of a scored split on one figure, for evaluate.

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

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ffdi import detector_cli
from ffdi.errors import BadImage, FfdiError
from ffdi.io import save_figure, write_csv
from ffdi.transforms import norm_stats, normalize_batch, tta_view

FAKE = 1  # the class index whose evidence is mapped
MIN_CELLS = 8  # the map's coarsest acceptable grid, per side
METHODS = {"layercam": ("LayerCAM", "LayerCAM"), "gradcam": ("GradCAM", "Grad-CAM")}  # name -> (class, title)


class ExplainError(FfdiError):
    pass


def stage_shapes(model: nn.Module, image_size: int, device) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of each top-level module, in the order a forward pass runs them."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: shapes.append((name, tuple(o.shape))))
             for name, module in model.named_children()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def pick_layer(model: nn.Module, image_size: int, device="cpu", min_cells: int = MIN_CELLS) -> str:
    """The deepest top-level stage whose feature map is at least min_cells x min_cells."""
    fine = [name for name, shape in stage_shapes(model, image_size, device)
            if len(shape) == 4 and min(shape[2:]) >= min_cells]
    if not fine:
        raise ExplainError(f"no stage of the model keeps a {min_cells}x{min_cells} map at {image_size} px; "
                         "pass --layer")
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

    def __init__(self, detector, layer: Optional[str] = None, method: str = "layercam"):
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, pixels: np.ndarray, cam: Optional[np.ndarray], title: str) -> None:
    ax.imshow(pixels, interpolation="nearest")
    if cam is not None:
        ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def save_overlay(pixels: np.ndarray, cam: np.ndarray, title: str, out: Path, method: str = "map") -> None:
    """The image as the model sees it, and the same with the map over it."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100)
    _draw(left, pixels, None, "input to the model")
    _draw(right, pixels, cam, f"{method}, class fake")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out)


def save_strip(frames: list, cams: np.ndarray, title: str, out: Path, method: str = "map") -> None:
    """Frames (p_fake, time, uint8 pixels) side by side, each with its map over it."""
    plt = _pyplot()
    n = max(len(frames), 1)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.7), dpi=100, squeeze=False)
    for ax, (p, t, px), cam in zip(axes[0], frames, cams):
        _draw(ax, np.asarray(px), cam, f"{t:.2f} s\np_fake {p:.3f}")
    fig.suptitle(f"{title}\n{method}, class fake", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.82))  # room for the two-line title
    save_figure(fig, out)


def label_of(p: float, threshold: float) -> str:
    return "fake" if p >= threshold else "real"


def gallery(detector, rows: pd.DataFrame, out_png, n: int = 4, threshold: float = 0.5,
            layer: Optional[str] = None, method: str = "layercam") -> dict[str, list[str]]:
    """One PNG: the n most confident false positives, the n most confident false negatives and
    the n top true positives of a scored split, each with its map and score.

    rows: one per image with `path`, `target` (0/1) and `y_pred` (its p_fake from this detector),
    e.g. evaluate's val manifest rows that were scored. Returns the paths shown, per row of the grid.
    """
    fake = rows.target == 1
    called_fake = rows.y_pred >= threshold
    picks = {
        "false positives (real called fake)": rows[~fake & called_fake].sort_values("y_pred", ascending=False),
        "false negatives (fake called real)": rows[fake & ~called_fake].sort_values("y_pred", ascending=True),
        "true positives (fake called fake)": rows[fake & called_fake].sort_values("y_pred", ascending=False),
    }
    picks = {k: v.head(n) for k, v in picks.items()}
    shown = pd.concat(list(picks.values()))
    explainer = Explainer(detector, layer, method)
    maps = {}
    if len(shown):
        pixels = torch.stack([detector.preprocess(p) for p in shown.path])
        maps = {path: (px, cam) for path, px, cam in zip(shown.path, pixels.numpy(), explainer.cams(pixels))}

    plt = _pyplot()
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 2.2 * 3 + 0.6), dpi=100, squeeze=False)
    for r, (name, chosen) in enumerate(picks.items()):
        for c in range(n):
            ax = axes[r, c]
            if c < len(chosen):
                item = chosen.iloc[c]
                _draw(ax, *maps[item.path], f"{Path(item.path).name[:14]}\np_fake {item.y_pred:.3f}")
                continue
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        axes[r, 0].set_ylabel(name.replace(" (", "\n("), fontsize=8)
    fig.suptitle(f"{explainer.title} of class fake ({explainer.layer}), threshold {threshold}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png)
    return {k: v.path.tolist() for k, v in picks.items()}


# --- the command ----------------------------------------------------------------------------------


def overlay_names(paths: Sequence[str]) -> list[str]:
    """<stem>.png per image, made unique where two images share a stem."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = Path(p).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def main(argv: Optional[list[str]] = None) -> int:
    ap = detector_cli.make_parser(
        "ffdi explain",
        "Overlays of where the detector sees fake evidence (a class activation map of class fake),\n"
        "one PNG per image, and DIR/scores.csv: path, p_fake, label, error, overlay. The map is\n"
        "taken on the deepest stage whose map is at least 8x8 at the model's image size (or --layer).",
        detector_cli.EXIT_STATUS_HELP + "\n" + detector_cli.VIDEO_HELP,
    )
    ap.add_argument("paths", nargs="+", metavar="IMG", help="image files, videos, folders, or quoted globs")
    ap.add_argument("--out-dir", required=True, help="folder for the overlays and scores.csv")
    ap.add_argument("--layer", default=None,
                    help="the module to map, e.g. layer3 (default: the deepest stage with a map of at least 8x8)")
    ap.add_argument("--method", choices=list(METHODS), default="layercam",
                    help="layercam (default: faithful on mid-level stages) or gradcam (classic Grad-CAM)")
    detector_cli.add_video_arguments(ap)
    ap.add_argument("--top", type=int, default=4, metavar="K",
                    help="a video's strip shows its K most suspicious sampled frames (default: %(default)s)")
    detector_cli.add_model_arguments(ap)
    try:
        args = ap.parse_args(argv)
        return run(args)
    except FfdiError as e:
        from ffdi.cli import user_error_message

        print(f"error: {user_error_message(e)}", file=sys.stderr)
        return detector_cli.EXIT_ERROR


def run(args) -> int:
    from itertools import islice

    from tqdm import tqdm

    if args.batch_size < 1:
        raise detector_cli.UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    args.threshold = detector_cli.default_threshold(args.threshold)
    if args.top < 1:
        raise detector_cli.UsageError(f"--top must be at least 1, got {args.top}")
    paths = detector_cli.expand_paths(args.paths)
    sampling, aggregate = detector_cli.video_defaults(args.frames, args.fps, args.aggregate)
    tta, tta_source = detector_cli.default_tta(args.tta)
    detector = detector_cli.load_detector(args.model, args.device, tta)
    explainer = Explainer(detector, args.layer, args.method)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    from ffdi.video import is_video, score_video

    records = []
    for path, name in zip(paths, overlay_names(paths)):
        if not is_video(path):
            continue
        v = score_video(detector, path, sampling, aggregate, args.batch_size, name=path, keep_top=args.top)
        if v.error:
            records.append({"path": path, "p_fake": None, "label": "", "error": v.error, "overlay": ""})
            continue
        cams = explainer.cams(torch.stack([px for _, _, px in v.top]))
        label = label_of(v.score, args.threshold)
        save_strip(v.top, cams, f"{Path(path).name}: p_fake {v.score:.4f} ({label}, {aggregate} of "
                   f"{v.frames_scored} frames); the {len(v.top)} most suspicious", out_dir / name, explainer.title)
        records.append({"path": path, "p_fake": v.score, "label": label, "error": "", "overlay": str(out_dir / name)})
    names = iter([(p, n) for p, n in zip(paths, overlay_names(paths)) if not is_video(p)])
    with tqdm(total=sum(not is_video(p) for p in paths), desc="explain", unit="img", mininterval=1.0, file=sys.stderr, leave=False) as bar:
        while chunk := list(islice(names, args.batch_size)):
            pixels, kept = [], []
            for path, name in chunk:
                try:
                    pixels.append(detector.preprocess(path))
                    kept.append((path, name))
                except (BadImage, OSError) as e:
                    records.append({"path": path, "p_fake": None, "label": "", "error": detector_cli.reason(e, path),
                                    "overlay": ""})
            if kept:
                batch = torch.stack(pixels)
                probs, maps = explainer.explain(batch)
                for (path, name), px, p, cam in zip(kept, batch.numpy(), probs, maps):
                    label = label_of(p, args.threshold)
                    save_overlay(px, cam, f"{Path(path).name}: p_fake {p:.4f} ({label})", out_dir / name,
                                 explainer.title)
                    records.append({"path": path, "p_fake": float(p), "label": label, "error": "",
                                    "overlay": str(out_dir / name)})
            bar.update(len(chunk))
    order = {p: i for i, p in enumerate(paths)}
    frame = pd.DataFrame(sorted(records, key=lambda r: order[r["path"]]),
                         columns=["path", "p_fake", "label", "error", "overlay"])
    write_csv(out_dir / "scores.csv", frame)
    errors = int(frame.p_fake.isna().sum())
    print(f"explained {len(frame) - errors} of {len(paths)} files -> {out_dir}/ (scores.csv, one PNG each); "
          f"{errors} could not be read; {explainer.title} of class fake on {explainer.layer}", file=sys.stderr)
    print(detector_cli.describe_detector(detector, tta_source), file=sys.stderr)
    return detector_cli.EXIT_SOME_FAILED if errors else detector_cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
