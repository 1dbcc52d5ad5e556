import hashlib

import numpy as np
import pandas as pd
from PIL import Image

from ffdi.config import SampleConfig
from ffdi.sample import blend_mask, generate, load_photos, real_crop, self_blend
from tests.conftest import TINY


def test_deterministic(tiny_data, tmp_path):
    generate(TINY, tmp_path / "again")
    for f in ("trainset_label.txt", "valset_label.txt", "testset_label.txt"):
        assert (tmp_path / "again" / f).read_bytes() == (tiny_data / f).read_bytes()


def test_layout_counts_and_md5_names(tiny_data):
    train = pd.read_csv(tiny_data / "trainset_label.txt")
    assert list(train.columns) == ["img_name", "target"] and len(train) == 96
    assert set(train.target) == {0, 1}
    test = pd.read_csv(tiny_data / "testset_label.txt")
    assert list(test.columns) == ["img_name"] and len(test) == 12
    for name in train.img_name[:10]:
        data = (tiny_data / "trainset" / name).read_bytes()
        assert name == hashlib.md5(data).hexdigest() + ".jpg"


def test_both_classes_share_size_format_and_quality(tiny_data):
    train = pd.read_csv(tiny_data / "trainset_label.txt")
    seen = {}
    for name, target in train.itertuples(index=False):
        img = Image.open(tiny_data / "trainset" / name)
        # Same quantisation tables <=> same JPEG quality setting.
        seen.setdefault(target, set()).add((img.format, img.size, img.mode, str(img.quantization)))
    assert len(seen[0]) == 1 and seen[0] == seen[1]


def test_self_blend_changes_only_the_masked_region():
    rng = np.random.default_rng(0)
    img = real_crop(load_photos()[0], 64, rng)
    fake = self_blend(img, np.random.default_rng(1))
    mask = blend_mask(64, np.random.default_rng(1).spawn(1)[0])  # shape only
    diff = np.abs(np.asarray(fake, float) - np.asarray(img, float)).mean(2)
    assert mask.shape == (64, 64, 1)
    # Corners lie outside every mask: untouched. The centre always lies inside: changed.
    assert diff[:4, :4].max() <= 1 and diff[-4:, -4:].max() <= 1
    assert diff[28:36, 28:36].mean() > 2


def test_fake_fraction(tmp_path):
    generate(SampleConfig(n_train=200, n_val=10, n_test=0, size=16, fake_fraction=0.25), tmp_path)
    share = pd.read_csv(tmp_path / "trainset_label.txt").target.mean()
    assert 0.15 < share < 0.35
    assert not (tmp_path / "testset").exists()
