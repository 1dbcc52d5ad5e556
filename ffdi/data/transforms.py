"""Decoding and augmentation: file -> PIL RGB image -> uint8 tensor -> normalised batch.

The loader's workers stop at uint8 HWC tensors; `normalize_batch` finishes a whole batch
on the device. `build_transform` is the per-image reference of what the model sees.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms as T
from torchvision.transforms import functional as TF
from torchvision.transforms import v2

from ffdi.config import AugmentConfig
from ffdi.errors import BadImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path, draft_size: int | None = None, name: str | None = None) -> Image.Image:
    """Open an image (a path, or a file object such as BytesIO) as 8-bit RGB, honouring EXIF
    rotation; raise BadImage naming the file (`name`, for a file object).

    JPEG draft mode decodes at a reduced scale (1/2, 1/4, 1/8) that is still at
    least `draft_size`: a 512 px multiFFDI image bound for 256 px decodes ~2.5x faster.
    Images over PIL's pixel limit (~89 Mpx) are refused, not decoded: a tiny
    file can expand to gigabytes.
    """
    label = name or (str(path) if isinstance(path, (str, os.PathLike)) else "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImage(f"{label}: refused as a possible decompression bomb: {e}") from None
    except FileNotFoundError:
        raise BadImage(f"{label}: file not found") from None
    except IsADirectoryError:
        raise BadImage(f"{label}: is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # Pillow names a file object by its repr ("<_io.BytesIO object at 0x...>"): the label says which.
        why = str(e) if isinstance(path, str | os.PathLike) else str(e).replace(repr(path), "").strip()
        reason = "empty file" if _size(path) == 0 else f"cannot decode ({why})"
        raise BadImage(f"{label}: {reason}") from None
    ImageOps.exif_transpose(img, in_place=True)  # no copy when there is no EXIF rotation
    return to_rgb(img)


def _size(source) -> int:
    if isinstance(source, (str, os.PathLike)):
        return os.path.getsize(source) if os.path.exists(source) else 0
    return len(source.getbuffer()) if hasattr(source, "getbuffer") else -1


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":  # convert() would copy it
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: keep the top 8 bits. PIL's own convert() clips to 255, turning it white.
        arr = np.asarray(img).astype(np.uint32) >> 8
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        # Transparent pixels become black, the same for every image.
        canvas = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, img)
    return img.convert("RGB")


def norm_stats(cfg: AugmentConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) per channel that augment.normalize asks for; None: no normalisation."""
    if cfg.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if cfg.normalize == "none":
        return None
    if cfg.mean is None or cfg.std is None:
        raise ValueError(
            "augment.normalize: model needs the model's mean and std: resolve the augment "
            "config with ffdi.model.networks.resolve_augment first"
        )
    return tuple(cfg.mean), tuple(cfg.std)


def build_transform(cfg: AugmentConfig, train: bool) -> Callable:
    """PIL image -> normalised float CHW tensor, one image at a time (the reference for what the model sees)."""
    steps: list = [*pil_steps(cfg, train), T.ToTensor()]
    stats = norm_stats(cfg)
    if stats is not None:
        steps.append(T.Normalize(*stats))
    return T.Compose(steps)


def build_uint8_transform(cfg: AugmentConfig, train: bool) -> Callable:
    """PIL image -> uint8 HWC tensor; `normalize_batch` finishes the job for a whole batch.

    Loader workers stop at uint8: a quarter of the bytes to pass between processes
    and to copy to the GPU, and the float conversion runs once per batch on the device.
    """
    return Uint8Transform(cfg, train)


def pil_steps(cfg: AugmentConfig, train: bool) -> list:
    # Resize first: every later step works on the small image.
    steps: list = [T.Resize(cfg.resize)]
    if train:
        # The same for both classes: these steps never see the label. In the order an upload meets
        # them: resized, maybe softened, and compressed last (JPEG after a resize keeps its blocks).
        if cfg.downscale:
            steps.append(T.RandomApply([RandomDownscale(cfg.downscale)], cfg.degrade_p))
        if cfg.blur:
            kernel = 2 * math.ceil(3 * cfg.blur[1]) + 1
            steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=tuple(cfg.blur))], cfg.degrade_p))
        if cfg.jpeg:
            steps.append(T.RandomApply([v2.JPEG(quality=tuple(cfg.jpeg))], cfg.degrade_p))
        if cfg.hflip:
            steps.append(T.RandomHorizontalFlip(cfg.hflip))
        if cfg.vflip:
            steps.append(T.RandomVerticalFlip(cfg.vflip))
        if cfg.rotation:
            steps.append(T.RandomRotation(cfg.rotation))
        if cfg.grayscale:
            steps.append(T.RandomGrayscale(cfg.grayscale))
    steps.append(T.CenterCrop(cfg.image_size))
    return steps


class RandomDownscale:
    """Shrink by a factor drawn from [low, high] and enlarge back (bicubic): lost detail, same size."""

    def __init__(self, factors):
        self.low, self.high = factors

    def __call__(self, img: Image.Image) -> Image.Image:
        f = float(torch.empty(1).uniform_(self.low, self.high))
        w, h = img.size
        return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC).resize((w, h), Image.BICUBIC)


class Uint8Transform:
    """`pil_steps`, then the pixels as a uint8 HWC tensor, skipping the steps that would only copy.

    The draft decode usually gives the resize size already, and then the centre crop size.
    """

    def __init__(self, cfg: AugmentConfig, train: bool):
        self.resize, self.size = cfg.resize, cfg.image_size
        self.random = pil_steps(cfg, train)[1:-1]  # the flips, rotation and grayscale, in order

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if min(img.size) != self.resize:
            img = TF.resize(img, self.resize)
        for step in self.random:
            img = step(img)
        if img.size != (self.size, self.size):
            img = TF.center_crop(img, self.size)
        return torch.from_numpy(np.array(img))


def normalize_batch(x: torch.Tensor, stats: tuple | None, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W): ToTensor + Normalize for a whole batch, bit for bit.

    The same operations in the same order as torchvision's keep training numbers identical to
    the per-image pipeline: a fused x * scale + shift is cheaper, but its last-bit differences
    change a run's results. They run on the NHWC batch as it came, the channel innermost, and the
    permute afterwards gives channels_last strides for free: the same arithmetic on the permuted
    view broadcast the mean over a strided channel axis and took 2.3x the CPU time.
    """
    x = x.float().div_(255)
    if stats is not None:  # (mean, std): transforms.norm_stats
        mean, std = stats_on((tuple(stats[0]), tuple(stats[1])), x.device)
        x = x.sub_(mean).div_(std)
    x = x.permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@functools.cache
def stats_on(stats: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as tensors on `device`, made once: making them per batch copied them from the
    host each time, and on a GPU such a copy waits for the device, so every step synchronised."""
    return torch.tensor(stats[0], device=device), torch.tensor(stats[1], device=device)


def tta_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One test-time view of an (N, C, H, W) batch; '' is the batch itself."""
    if view == "":
        return x
    if view == "hflip":
        return torch.flip(x, dims=[3])
    if view == "vflip":
        return torch.flip(x, dims=[2])
    if view == "transpose":
        return x.transpose(2, 3)
    k = {"rot90": 1, "rot180": 2, "rot270": 3}[view]
    return torch.rot90(x, k, dims=[2, 3])
