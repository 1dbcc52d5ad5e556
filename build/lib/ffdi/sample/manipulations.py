"""The manipulations that make a fake of a real image: `KINDS`, each leaving a different trace,
so that a detector can be tested on a manipulation it never saw in training
(leave-one-manipulation-out). The sample data set (ffdi.sample.generate) makes its fakes with them;
training also makes self-blended fakes on the fly (augment.self_blend, ffdi.data.dataset).

- `self_blend`: a *self-blended image* (Shiohara & Yamasaki, "Detecting Deepfakes
  with Self-Blended Images", CVPR 2022). A real crop is copied, the copy is
  jittered in colour, scale and sharpness, and pasted back onto the original
  through a soft elliptical mask. What is left is what face swaps leave: a
  blending boundary and a region whose colour statistics and frequency content
  disagree with its surroundings, with no foreign content at all.
- `resample`: the trace of a generator's upsampling layers (cf. Tan et al.,
  "Rethinking the Up-Sampling Operations in CNN-based Generative Network for
  Generalizable Deepfake Detection" (NPR), CVPR 2024). A region, or the whole
  image, is rebuilt from a lower resolution by nearest-neighbour upsampling or a
  transposed convolution whose kernel phases are unequal, leaving correlated
  neighbouring pixels or a faint checkerboard rather than any boundary.
- `splice`: a face swap between identities. A region of a *different* photograph
  is warped into place (a small rotation and rescale, bilinear), colour-matched
  part way to its new surroundings and pasted through a soft mask, so the evidence
  is foreign, resampled content and a blending boundary, not a copy of the image
  itself.
- `regenerate`: a local re-synthesis, as an inpainting model leaves it. A patch
  anywhere in the image is smoothed away and given synthetic noise of its own
  level and grain, so its texture statistics, not its colours, disagree with the
  rest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from ffdi.sample.photos import bundled_photos, real_crop

# The manipulations that make fakes, in the order fakes cycle through them.
KINDS = ("self_blend", "resample", "splice", "regenerate")
REAL = "real"


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _paste(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> Image.Image:
    m = mask[..., None]
    return _to_image(m * source + (1.0 - m) * target)


# --- self_blend -------------------------------------------------------------------------------


def jitter(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """The 'source' of a self-blend: the same image, off in colour, scale and sharpness.

    strength scales every deviation (colour, scale, blur, sharpening); 0 leaves the image as is.
    """
    size = img.size[0]
    out = ImageEnhance.Brightness(img).enhance(1.0 + strength * rng.uniform(-0.25, 0.25))
    out = ImageEnhance.Contrast(out).enhance(1.0 + strength * rng.uniform(-0.25, 0.25))
    gains = 1.0 + strength * rng.choice([-1, 1], 3) * rng.uniform(0.15, 0.3, 3)
    arr = np.asarray(out, np.float32) * gains
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    # A rescale misaligns the pasted region, leaving doubled edges like a warped face.
    scale = 1.0 + strength * rng.choice([-1, 1]) * rng.uniform(0.08, 0.18)
    scaled = out.resize((max(1, round(size * scale)),) * 2, Image.BILINEAR)
    out = _center_fit(scaled, size)
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(strength * rng.uniform(1.2, 2.4)))
    else:
        out = out.filter(ImageFilter.UnsharpMask(radius=2, percent=int(strength * rng.uniform(200, 400))))
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


# The range of a blend mask's half-axes, as a fraction of the side (augment.self_blend_mask's default).
BLEND_AXES = (0.3, 0.45)


def blend_mask(size: int, rng: np.random.Generator, axes: tuple[float, float] = BLEND_AXES) -> np.ndarray:
    """A soft ellipse, like a face region: 1 inside, 0 outside, a blurred boundary (HxW float32).

    axes: the range of its half-axes, as a fraction of the side.
    """
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    ax, ay = rng.uniform(*axes, 2) * size
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((cx - ax, cy - ay, cx + ax, cy + ay), fill=255)
    mask = mask.rotate(rng.uniform(-30, 30), center=(cx, cy))
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.01, 0.03) * size))
    return np.asarray(mask, np.float32) / 255.0


def self_blend(
    img: Image.Image, rng: np.random.Generator, strength: float = 1.0, axes: tuple[float, float] = BLEND_AXES
) -> tuple[Image.Image, np.ndarray]:
    """A self-blended fake of the square image `img`, and the mask of the blended region.

    Also the on-the-fly augmentation (augment.self_blend), with its strength and mask axes.
    """
    target = np.asarray(img, np.float32)
    source = np.asarray(jitter(img, rng, strength), np.float32)
    mask = blend_mask(img.size[0], rng, axes)
    return _paste(target, source, mask), mask


# --- resample ---------------------------------------------------------------------------------


def _transposed_conv_x2(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """ConvTranspose2d(kernel_size=4, stride=2, padding=1) of an HxWxC array, per channel.

    Output row 2m takes kernel rows 1 and 3 from input rows m and m-1; row 2m+1 takes
    kernel rows 0 and 2 from rows m+1 and m. Each of the four output phases sums its own
    four taps, so unequal phase sums are what draw the checkerboard.
    """
    h, w = x.shape[:2]
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    taps = {0: ((1, 0), (3, -1)), 1: ((0, 1), (2, 0))}  # phase -> ((kernel index, input offset), ...)
    out = np.empty((2 * h, 2 * w, x.shape[2]), np.float32)
    for a in (0, 1):
        for b in (0, 1):
            acc = np.zeros((h, w, x.shape[2]), np.float32)
            for ka, da in taps[a]:
                for kb, db in taps[b]:
                    acc += kernel[ka, kb] * padded[1 + da : 1 + da + h, 1 + db : 1 + db + w]
            out[a::2, b::2] = acc
    return out


def resample(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """`img` with a region, or all of it, rebuilt from a lower resolution; and that region's mask."""
    size = img.size[0]
    target = np.asarray(img, np.float32)
    if rng.random() < 0.5:
        # A learned upsampler: bilinear weights, perturbed so that the phases disagree.
        low = img.resize((max(1, size // 2),) * 2, Image.BILINEAR)
        bilinear = np.array([1, 3, 3, 1], np.float32) / 4
        kernel = np.outer(bilinear, bilinear) * (1 + rng.uniform(0.15, 0.3) * rng.standard_normal((4, 4)))
        kernel *= 4 / kernel.sum()  # the mean phase sums to one: brightness kept, only the pattern added
        up = _transposed_conv_x2(np.asarray(low, np.float32), kernel.astype(np.float32))
        up = np.asarray(_to_image(up).resize((size, size), Image.NEAREST), np.float32)  # odd sizes
    else:
        # Nearest-neighbour from a non-integer factor: duplicated rows and columns at irregular steps.
        side = max(1, round(size * rng.uniform(0.4, 0.65)))
        low = img.resize((side, side), Image.BILINEAR)
        up = np.asarray(low.resize((size, size), Image.NEAREST), np.float32)
    # Mixing some original detail back keeps it from being mere blur.
    strength = 1.0
    mask = np.ones((size, size), np.float32) if rng.random() < 0.3 else blend_mask(size, rng)
    out = _paste(target, target + strength * (up - target), mask)
    return out, mask


# --- splice -----------------------------------------------------------------------------------


def _match_colour(source: np.ndarray, target: np.ndarray, mask: np.ndarray, amount: float) -> np.ndarray:
    """Move the source's per-channel mean and spread, under the mask, `amount` of the way to the target's."""
    w = mask[..., None] / max(float(mask.sum()), 1e-6)
    mu_s, mu_t = (source * w).sum((0, 1)), (target * w).sum((0, 1))
    sd_s = np.sqrt(((source - mu_s) ** 2 * w).sum((0, 1))) + 1.0
    sd_t = np.sqrt(((target - mu_t) ** 2 * w).sum((0, 1))) + 1.0
    matched = (source - mu_s) * (sd_t / sd_s) + mu_t
    return source + amount * (matched - source)


def splice(img: Image.Image, donors: list[Image.Image], rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """`img` with a region of one of the `donors` photographs pasted in; and the region's mask."""
    size = img.size[0]
    target = np.asarray(img, np.float32)
    donor = real_crop(donors[int(rng.integers(len(donors)))], size, rng)
    # Warped into place as a face swap aligns the source face: rotated and rescaled by bilinear
    # interpolation, which softens it unlike the target's own detail.
    # Up to 10 degrees and at least 1.16x, so that the rotation's empty corners are cropped away.
    donor = donor.rotate(rng.uniform(3, 10) * rng.choice([-1, 1]), Image.BILINEAR, expand=False).resize(
        (round(size * rng.uniform(1.16, 1.3)),) * 2, Image.BILINEAR
    )
    donor = _center_fit(donor, size)
    mask = blend_mask(size, rng)
    # Without colour matching the pasted region would be told by its colour alone.
    source = _match_colour(np.asarray(donor, np.float32), target, mask, rng.uniform(0.0, 0.3))
    return _paste(target, source, mask), mask


# --- regenerate -------------------------------------------------------------------------------


def patch_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A soft rounded rectangle over the middle of the image, like an inpainting box (HxW float32)."""
    w, h = rng.uniform(0.5, 0.75, 2) * size
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    x0, y0 = cx - w / 2, cy - h / 2
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rounded_rectangle((x0, y0, x0 + w, y0 + h), radius=min(w, h) / 4, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.02, 0.05) * size))
    return np.asarray(mask, np.float32) / 255.0


def regenerate(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """`img` with a patch re-synthesised: detail smoothed away, synthetic grain added; and its mask."""
    size = img.size[0]
    target = np.asarray(img, np.float32)
    smooth = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 3.5))), np.float32)
    # Grain coarser than a pixel, and sometimes the same in every channel, unlike sensor noise.
    grain = int(rng.choice([1, 2]))
    channels = 1 if rng.random() < 0.5 else 3
    small = max(1, size // grain)
    noise = rng.standard_normal((small, small, channels)).astype(np.float32)
    if grain > 1 or small != size:
        noise = np.stack(
            [np.asarray(Image.fromarray(noise[..., c]).resize((size, size), Image.BILINEAR)) for c in range(channels)],
            -1,
        )
        noise /= noise.std() + 1e-6
    source = smooth + rng.uniform(10.0, 20.0) * noise
    mask = patch_mask(size, rng)
    return _paste(target, source, mask), mask


# --- any of them ------------------------------------------------------------------------------

MANIPULATIONS: dict[str, Callable[..., tuple[Image.Image, np.ndarray]]] = {
    "self_blend": lambda img, rng, photos: self_blend(img, rng),
    "resample": lambda img, rng, photos: resample(img, rng),
    "splice": lambda img, rng, photos: splice(img, photos, rng),
    "regenerate": lambda img, rng, photos: regenerate(img, rng),
}
assert tuple(MANIPULATIONS) == KINDS


def manipulate(
    img: Image.Image, kind: str, rng: np.random.Generator, photos: list[Image.Image] | None = None
) -> tuple[Image.Image, np.ndarray]:
    """A fake of `img` made by manipulation `kind`, and a float32 HxW mask in [0, 1] of where it acts.

    photos: the donors for `splice` (default: the bundled photographs). Leave out the photograph
    `img` was cropped from so that the splice really is between two photographs.
    """
    if kind not in MANIPULATIONS:
        raise ValueError(f"unknown manipulation {kind!r}; expected one of {', '.join(KINDS)}")
    if photos is None:
        photos = list(bundled_photos())
    out, mask = MANIPULATIONS[kind](img.convert("RGB"), rng, photos)
    return out, mask.astype(np.float32)
