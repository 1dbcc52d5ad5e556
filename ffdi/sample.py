"""A small, deterministic real-vs-fake data set in the multiFFDI layout.

Real images are random square crops of real photographs that ship inside the
scikit-image and scikit-learn wheels, so no download is needed.

Fakes are *self-blended images* (Shiohara & Yamasaki, "Detecting Deepfakes with
Self-Blended Images", CVPR 2022): a real crop is copied, the copy is jittered in
colour, scale and sharpness, and pasted back onto the original through a soft,
blurred elliptical mask. What is left is what face swaps leave: a blending
boundary and a region whose colour statistics and frequency content disagree
with its surroundings. Both classes are cropped, resized, and JPEG-encoded the
same way at the same quality and size, so file format, size or quality give no
shortcut. File names are the md5 of the file, as in multiFFDI.
"""

from __future__ import annotations

import hashlib
import io
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from tqdm import tqdm

from ffdi.config import SampleConfig
from ffdi.io import write_text

# Colour photographs bundled in the wheels (package, file).
PHOTOS = [
    ("skimage.data", "astronaut.png"),
    ("skimage.data", "chelsea.png"),
    ("skimage.data", "coffee.png"),
    ("skimage.data", "rocket.jpg"),
    ("skimage.data", "motorcycle_left.png"),
    ("skimage.data", "motorcycle_right.png"),
    ("skimage.data", "hubble_deep_field.jpg"),
    ("sklearn.datasets.images", "china.jpg"),
    ("sklearn.datasets.images", "flower.jpg"),
]

SPLITS = {"train": "trainset", "val": "valset", "test": "testset"}


def load_photos() -> list[Image.Image]:
    photos = []
    for package, name in PHOTOS:
        with resources.files(package).joinpath(name).open("rb") as f:
            photos.append(Image.open(f).convert("RGB"))
    return photos


def real_crop(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    w, h = photo.size
    side = int(min(w, h) * rng.uniform(0.3, 0.9))
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return crop


def jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The 'source' of a self-blend: the same image, off in colour, scale and sharpness."""
    size = img.size[0]
    out = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.8, 1.2))
    gains = 1.0 + rng.choice([-1, 1], 3) * rng.uniform(0.08, 0.2, 3)
    arr = np.asarray(out, np.float32) * gains
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    # A rescale misaligns the pasted region, leaving doubled edges like a warped face.
    scale = 1.0 + rng.choice([-1, 1]) * rng.uniform(0.04, 0.12)
    scaled = out.resize((max(1, round(size * scale)),) * 2, Image.BILINEAR)
    out = _center_fit(scaled, size)
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6)))
    else:
        out = out.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.uniform(150, 300))))
    return out


def _center_fit(img: Image.Image, size: int) -> Image.Image:
    w = img.size[0]
    if w >= size:
        o = (w - size) // 2
        return img.crop((o, o, o + size, o + size))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(img, ((size - w) // 2,) * 2)
    # Edges outside the shrunk copy are hidden by the mask, which stays inside.
    return canvas


def blend_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A soft ellipse, like a face region: 1 inside, 0 outside, a blurred boundary."""
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    ax, ay = rng.uniform(0.2, 0.34, 2) * size
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((cx - ax, cy - ay, cx + ax, cy + ay), fill=255)
    mask = mask.rotate(rng.uniform(-30, 30), center=(cx, cy))
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.03, 0.08) * size))
    return np.asarray(mask, np.float32)[..., None] / 255.0


def self_blend(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    target = np.asarray(img, np.float32)
    source = np.asarray(jitter(img, rng), np.float32)
    mask = blend_mask(img.size[0], rng)
    out = mask * source + (1.0 - mask) * target
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_image(photos: list[Image.Image], cfg: SampleConfig, split_index: int, i: int) -> tuple[bytes, int]:
    """Image i of a split: (JPEG bytes, target). Seeded per image, so order-independent."""
    rng = np.random.default_rng([cfg.seed, split_index, i])
    fake = int(rng.random() < cfg.fake_fraction)
    img = real_crop(photos[int(rng.integers(len(photos)))], cfg.size, rng)
    if fake:
        img = self_blend(img, rng)
    return encode_jpeg(img, cfg.jpeg_quality), fake


def generate(cfg: SampleConfig, out: str | Path | None = None) -> dict[str, int]:
    """Write the sample data set; return the number of images per split."""
    root = Path(out or cfg.out)
    photos = load_photos()
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    for split_index, (split, n) in enumerate(counts.items()):
        if n == 0:
            continue
        folder = root / SPLITS[split]
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in tqdm(range(n), desc=f"sample {split}", unit="img", leave=False):
            data, target = make_image(photos, cfg, split_index, i)
            name = hashlib.md5(data).hexdigest() + ".jpg"
            (folder / name).write_bytes(data)
            rows.append(f"{name},{target}" if split != "test" else name)
        header = "img_name,target" if split != "test" else "img_name"
        write_text(root / f"{SPLITS[split]}_label.txt", "\n".join([header, *rows]) + "\n")
    return counts
