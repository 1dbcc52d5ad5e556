"""The real photographs bundled in the scikit-image and scikit-learn wheels, and random square
crops of them: the real images of the sample data set (ffdi.sample.generate) and the donors of a splice
(ffdi.sample.manipulations). Nothing is downloaded.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from PIL import Image

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


def load_photos() -> list[Image.Image]:
    photos = []
    for package, name in PHOTOS:
        with resources.files(package).joinpath(name).open("rb") as f:
            photos.append(Image.open(f).convert("RGB"))
    return photos


@functools.cache
def bundled_photos() -> tuple[Image.Image, ...]:
    return tuple(load_photos())


def real_crop(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    w, h = photo.size
    side = int(min(w, h) * rng.uniform(0.3, 0.9))
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return crop
