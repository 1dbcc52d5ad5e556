"""Training-time augmentations of issue 11: self-blending on the fly and class-independent degradations."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ffdi.config import AugmentConfig
from ffdi.data.dataset import make_loader
from ffdi.data.transforms import build_uint8_transform, load_image
from ffdi.errors import ConfigError
from tests.project import NO_DEGRADATION

SIZE = 32


def loader_items(manifest, aug, seed=1):
    loader = make_loader(manifest, aug, 16, 0, train=True)
    return [loader.dataset[(i, seed)] for i in range(len(manifest))]


def test_self_blend_turns_real_images_into_fakes_labelled_1(manifests):
    train = manifests[0]
    plain = AugmentConfig(resize=SIZE, image_size=SIZE, hflip=0.0, **NO_DEGRADATION)
    blended = AugmentConfig(resize=SIZE, image_size=SIZE, hflip=0.0, self_blend=1.0, **NO_DEGRADATION)
    before, after = loader_items(train, plain), loader_items(train, blended)
    real = (train.target == 0).to_numpy()
    assert real.sum() > 10
    for (x0, y0, *_), (x1, y1, *_), is_real in zip(before, after, real):
        assert int(y1) == 1  # every real became a fake; fakes stay fakes
        assert torch.equal(x0, x1) != is_real  # only the real ones were changed
        assert int(y0) == (0 if is_real else 1)
    # The same seed gives the same blend; p = 0.5 blends about half of the real images, not the fakes.
    assert all(torch.equal(a[0], b[0]) for a, b in zip(after, loader_items(train, blended)))
    half = loader_items(train, AugmentConfig(resize=SIZE, image_size=SIZE, hflip=0.0, self_blend=0.5, **NO_DEGRADATION))
    flipped = [int(y) for (_, y, *_), r in zip(half, real) if r]
    assert 0.25 < np.mean(flipped) < 0.75
    # Validation never blends.
    val = make_loader(train, blended, 16, 0, train=False)
    assert [int(val.dataset[i][1]) for i in range(len(train))] == train.target.tolist()


@pytest.mark.parametrize(
    "key, value, reference",
    [
        ("jpeg", (5, 5), lambda img: Image.open(io.BytesIO(_jpeg(img, 5))).convert("RGB")),
        ("blur", (1.0, 1.0), lambda img: T.GaussianBlur(7, 1.0)(img)),
        (
            "downscale",
            (0.5, 0.5),
            lambda img: img.resize((SIZE // 2,) * 2, Image.BICUBIC).resize((SIZE,) * 2, Image.BICUBIC),
        ),
    ],
)
def test_degradations_apply_exactly_to_both_classes(key, value, reference, manifests):
    train = manifests[0].iloc[:8]
    aug = AugmentConfig(resize=SIZE, image_size=SIZE, hflip=0.0, degrade_p=1.0, **{**NO_DEGRADATION, key: value})
    items = loader_items(train, aug)
    for (x, y, *_), path, target in zip(items, train.path, train.target):
        img = load_image(path, SIZE)
        expected = torch.from_numpy(np.array(reference(img)))
        assert torch.equal(x, expected), (key, target)
        assert int(y) == target
    assert set(train.target) == {0, 1}
    # degrade_p = 0: untouched.
    off = AugmentConfig(resize=SIZE, image_size=SIZE, hflip=0.0, degrade_p=0.0, **{**NO_DEGRADATION, key: value})
    plain = build_uint8_transform(AugmentConfig(resize=SIZE, image_size=SIZE), train=False)
    assert all(torch.equal(x, plain(load_image(p, SIZE))) for (x, *_), p in zip(loader_items(train, off), train.path))


def _jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"jpeg": [90, 30]}, "augment.jpeg must be null or"),
        ({"blur": [1.0]}, "augment.blur must be null or"),
        ({"downscale": [0, 0.5]}, "augment.downscale must be null or"),
        ({"self_blend": 1.5}, "augment.self_blend must be <= 1.0, got 1.5"),
        ({"degrade_p": -0.1}, "augment.degrade_p must be >= 0.0, got -0.1"),
    ],
)
def test_bad_augment_values_are_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**raw)


def test_normalisation_runs_on_the_batch_as_stored():
    """The arithmetic of normalize_batch runs on the NHWC batch as the loader gave it, the channel
    innermost. On the permuted NCHW view (channels_last strides) the same operations broadcast the
    mean over a strided axis: 2.3x the CPU time, the main process's largest per-image cost at 256 px."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from ffdi.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_batch

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.sub_.Tensor, torch.ops.aten.div_.Tensor):
                seen.append(args[0].is_contiguous())
            return func(*args, **(kwargs or {}))

    x = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    with Record():
        out = normalize_batch(x, (IMAGENET_MEAN, IMAGENET_STD))
    assert len(seen) == 3 and all(seen)  # /255, -mean, /std
    assert out.shape == (2, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
