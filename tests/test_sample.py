import hashlib
import signal
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ffdi.config import SampleConfig
from ffdi.sample.generate import generate, make_image, worker_pool
from ffdi.sample.manipulations import KINDS, manipulate, self_blend
from ffdi.sample.photos import load_photos, real_crop
from tests.conftest import TINY


@pytest.fixture(scope="module")
def photos():
    return load_photos()


def test_deterministic_whatever_the_workers(tiny_data, tmp_path):
    generate(TINY, tmp_path / "again", workers=2)  # tiny_data was made in one process
    for f in ("trainset_label.txt", "valset_label.txt", "testset_label.txt"):
        assert (tmp_path / "again" / f).read_bytes() == (tiny_data / f).read_bytes()
    for folder in ("trainset", "valset", "testset"):
        for path in sorted((tiny_data / folder).iterdir()):
            assert (tmp_path / "again" / folder / path.name).read_bytes() == path.read_bytes()


def test_pool_workers_die_on_sigterm_whatever_the_stage_handles():
    # Stages raise on SIGTERM from a Python handler; forked workers that kept it could ignore
    # Pool.terminate's SIGTERM while asleep on a lock, and the sample stage hung.
    from ffdi.stage import _terminate

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        pool = worker_pool(2)
        try:
            handlers = pool.map(signal.getsignal, [signal.SIGTERM] * 4)
        finally:
            pool.terminate()
            pool.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handlers == [signal.SIG_DFL] * 4


def test_layout_counts_and_md5_names(tiny_data):
    train = pd.read_csv(tiny_data / "trainset_label.txt")
    assert list(train.columns) == ["img_name", "target", "method"] and len(train) == 96
    assert set(train.target) == {0, 1}
    test = pd.read_csv(tiny_data / "testset_label.txt")
    assert list(test.columns) == ["img_name"] and len(test) == 12
    assert len(list((tiny_data / "testset").iterdir())) == 12
    for name in train.img_name[:10]:
        data = (tiny_data / "trainset" / name).read_bytes()
        assert name == hashlib.md5(data).hexdigest() + ".jpg"


@pytest.mark.parametrize("split", ["trainset", "valset"])
def test_method_column_names_every_kind_evenly(tiny_data, split):
    labels = pd.read_csv(tiny_data / f"{split}_label.txt")
    assert (labels.method[labels.target == 0] == "real").all()
    counts = Counter(labels.method[labels.target == 1])
    assert set(counts) == set(KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_both_classes_share_size_format_and_quality(tiny_data):
    train = pd.read_csv(tiny_data / "trainset_label.txt")
    seen = {}
    for name, method in zip(train.img_name, train.method):
        img = Image.open(tiny_data / "trainset" / name)
        # Same quantisation tables <=> same JPEG quality setting.
        seen.setdefault(method, set()).add((img.format, img.size, img.mode, str(img.quantization)))
    assert len(seen["real"]) == 1
    assert all(seen[kind] == seen["real"] for kind in KINDS)


def test_fake_fraction_is_exact(tmp_path):
    generate(SampleConfig(n_train=200, n_val=10, n_test=0, size=16, fake_fraction=0.25), tmp_path)
    labels = pd.read_csv(tmp_path / "trainset_label.txt")
    assert labels.target.sum() == 50
    assert Counter(labels.method[labels.target == 1]) == {
        kind: 50 // len(KINDS) + (i < 50 % len(KINDS)) for i, kind in enumerate(KINDS)
    }
    assert not (tmp_path / "testset").exists()


def test_make_image_is_seeded_per_image_and_returns_the_mask(photos):
    cfg = SampleConfig(n_train=16, n_val=4, n_test=0, size=32)
    later_first = [make_image(photos, cfg, 0, i, with_mask=True) for i in reversed(range(16))][::-1]
    for i, (data, target, method, mask) in enumerate(later_first):
        assert make_image(photos, cfg, 0, i) == (data, target, method)
        assert target == (method != "real")
        if target:
            assert mask.shape == (32, 32) and mask.dtype == np.float32 and mask.max() > 0.5
        else:
            assert mask is None


@pytest.mark.parametrize("kind", KINDS)
def test_manipulation_acts_inside_its_mask(photos, kind):
    localised = 0
    for seed in range(8):
        img = real_crop(photos[seed % len(photos)], 64, np.random.default_rng(seed))
        fake, mask = manipulate(img, kind, np.random.default_rng(100 + seed), photos)
        assert fake.size == img.size and fake.mode == "RGB"
        assert mask.shape == (64, 64) and mask.dtype == np.float32
        assert 0 <= mask.min() and mask.max() <= 1 and mask.max() > 0.9
        diff = np.abs(np.asarray(fake, float) - np.asarray(img, float)).mean(2)
        assert diff[mask > 0.5].mean() > 1
        if mask.min() < 0.05:  # a region, not the whole image
            localised += 1
            assert diff[mask > 0.5].mean() > 3 * diff[mask < 0.05].mean() + 0.5
    assert localised >= 3


def test_resample_sometimes_covers_the_whole_image(photos):
    img = real_crop(photos[0], 64, np.random.default_rng(0))
    masks = [manipulate(img, "resample", np.random.default_rng(s))[1] for s in range(10)]
    assert any(m.min() == 1 for m in masks) and any(m.min() < 0.05 for m in masks)


def test_splice_pastes_the_donor_not_the_image(photos):
    img = real_crop(photos[0], 64, np.random.default_rng(0))
    # A flat donor keeps only its colour-matched mean: the pasted core loses the image's texture.
    flat = Image.new("RGB", (200, 200), (10, 200, 30))
    fake, mask = manipulate(img, "splice", np.random.default_rng(1), [flat])
    core = mask > 0.99
    assert core.sum() > 50
    assert np.asarray(fake, float)[core].std(0).mean() < 0.3 * np.asarray(img, float)[core].std(0).mean()


def test_self_blend_changes_only_the_masked_region(photos):
    img = real_crop(photos[0], 64, np.random.default_rng(0))
    fake, mask = self_blend(img, np.random.default_rng(1))
    diff = np.abs(np.asarray(fake, float) - np.asarray(img, float)).mean(2)
    assert mask.shape == (64, 64)
    # Corners lie outside every mask: untouched. The centre always lies inside: changed.
    assert diff[:4, :4].max() <= 1 and diff[-4:, -4:].max() <= 1
    assert diff[28:36, 28:36].mean() > 2
    assert mask[:4, :4].max() < 0.01 and mask[28:36, 28:36].min() > 0.5


def test_unknown_kind_is_named():
    img = Image.new("RGB", (16, 16))
    with pytest.raises(ValueError, match="unknown manipulation 'morph'.*self_blend"):
        manipulate(img, "morph", np.random.default_rng(0))
