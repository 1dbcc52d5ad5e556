"""Every kind of image file a real data set throws at the loader, as real files."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ffdi.config import AugmentConfig
from ffdi.data.dataset import ImageDataset, skip_collate
from ffdi.data.transforms import build_transform, load_image
from ffdi.errors import BadImage


def rgb_array(size=(40, 30)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0] = 200  # red
    arr[: size[1] // 2, :, 2] = 100  # top half also blue
    return arr


def save(tmp_path, name, img, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return str(p)


def test_png_grey_cmyk_rgba_are_rgb(tmp_path):
    base = Image.fromarray(rgb_array())
    for name, img in {
        "a.png": base,
        "grey.jpg": base.convert("L"),
        "cmyk.jpg": base.convert("CMYK"),
        "rgba.png": base.convert("RGBA"),
        "palette.png": base.convert("P"),
    }.items():
        out = load_image(save(tmp_path, name, img))
        assert out.mode == "RGB" and out.size == (40, 30), name
        arr = np.asarray(out, int)
        if name == "grey.jpg":
            assert abs(arr[20, 5, 0] - arr[20, 5, 2]) <= 2  # grey stays grey
        else:
            assert abs(arr[20, 5, 0] - 200) <= 6, name  # red channel survives, CMYK included


def test_rgba_transparency_goes_black(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 1] = 255
    arr[:4, :, 3] = 255  # top opaque green, bottom transparent
    out = np.asarray(load_image(save(tmp_path, "t.png", Image.fromarray(arr))))
    assert out[0, 0].tolist() == [0, 255, 0] and out[7, 7].tolist() == [0, 0, 0]


def test_16_bit_grey_keeps_its_range(tmp_path):
    arr = np.full((10, 10), 32768, np.uint16)  # mid grey in 16 bits
    arr[0, 0] = 65535
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = np.asarray(load_image(save(tmp_path, "g16.png", img)))
    assert out[5, 5].tolist() == [128, 128, 128]  # not clipped to white
    assert out[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(rgb_array((40, 30)))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    out = load_image(save(tmp_path, "r.jpg", img, exif=exif.tobytes()))
    assert out.size == (30, 40)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image\n" * 10, "cannot decode"),
    ],
)
def test_broken_files_name_the_file(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(BadImage) as e:
        load_image(str(p))
    assert str(p) in str(e.value) and reason in str(e.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadImage, match="cut.jpg: cannot decode"):
        load_image(str(p))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 10000 x 10000 one-bit pixels: a few kB on disk, 100 Mpx (300 MB as RGB) decoded.
    p = save(tmp_path, "bomb.png", Image.new("1", (10000, 10000)))
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(BadImage, match="bomb.png: refused as a possible decompression bomb"):
        load_image(p)


def test_dataset_skip_policy_drops_bad_items_and_says_why(tmp_path):
    good = [save(tmp_path, f"{i}.jpg", Image.fromarray(rgb_array())) for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    manifest = pd.DataFrame(
        {"img_name": ["0", "bad", "1", "2"], "target": [0, 1, 1, 0], "path": [good[0], str(bad), *good[1:]]}
    )
    tf = build_transform(AugmentConfig(resize=16, image_size=16), train=False)

    with pytest.raises(BadImage, match="bad.jpg: empty file"):
        [ImageDataset(manifest, tf)[i] for i in range(4)]

    ds = ImageDataset(manifest, tf, on_bad_image="skip")
    batch = skip_collate([ds[i] for i in range(4)])
    assert batch.x.shape == (3, 3, 16, 16)
    assert batch.index.tolist() == [0, 2, 3] and batch.y.tolist() == [0, 1, 0]
    assert batch.skipped == [(1, f"{bad}: empty file")]
    all_bad = skip_collate([ds[1]])
    assert all_bad.x is None and len(all_bad.skipped) == 1 and isinstance(all_bad.y, torch.Tensor)
