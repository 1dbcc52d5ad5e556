"""The Detector: one scorer, the same number for the same image however it arrives."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ffdi.config import AugmentConfig, DataConfig, Params
from ffdi.data.labels import prepare, read_manifest
from ffdi.data.transforms import load_image, norm_stats, normalize_batch
from ffdi.errors import BadImage
from ffdi.inference.detector import Detector
from ffdi.model import checkpoint
from ffdi.model.networks import build_model


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    """A (random) model's checkpoint as the train stage writes it, and the val manifest."""
    out = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    params = Params(data=DataConfig(root=str(tiny_data)), augment=AugmentConfig(resize=36, image_size=32))
    model = build_model(params.model)
    checkpoint.save(out / "model.pt", checkpoint.snapshot(model, params, 0, {}, "fp32"))
    prepare(params.data, out / "prepared")
    return out / "model.pt", read_manifest(out / "prepared" / "val.csv")


def test_paths_bytes_pil_and_manifest_score_alike(saved):
    path, val = saved
    det = Detector.load(path, "cpu", tta=["hflip"])
    files = val.path.tolist()[:10]
    from_manifest = det.score_manifest(val.iloc[:10], batch_size=4)
    assert from_manifest.index.tolist() == list(range(10))
    from_paths = det.score(files, batch_size=3)
    np.testing.assert_allclose(from_paths, from_manifest.prob, atol=1e-12)
    from_bytes = det.score([open(f, "rb").read() for f in files])
    np.testing.assert_allclose(from_bytes, from_paths, atol=1e-12)
    # A PIL image is decoded at full size (no JPEG draft), so it may differ, but only slightly.
    from_pil = det.score([Image.open(f) for f in files])
    np.testing.assert_allclose(from_pil, from_paths, atol=0.05)
    assert len(set(np.round(from_paths, 6))) > 1


def test_tta_is_the_exact_mean_of_the_views_softmax(saved):
    path, val = saved
    det = Detector.load(path, "cpu", tta=["hflip", "vflip", "rot90"])
    files = val.path.tolist()[:6]
    x = normalize_batch(torch.stack([det.preprocess(f) for f in files]), norm_stats(det.augment))
    model = checkpoint.rebuild_model(checkpoint.load(path)).eval()
    with torch.no_grad():
        views = [x, x.flip(3), x.flip(2), torch.rot90(x, 1, dims=[2, 3])]
        expected = torch.stack([model(v).softmax(1)[:, 1] for v in views]).double().mean(0).numpy()
    np.testing.assert_allclose(det.score(files), expected, atol=1e-6)
    single = Detector.load(path, "cpu").score(files)
    np.testing.assert_allclose(single, torch.softmax(model(x), 1)[:, 1].detach().numpy(), atol=1e-6)
    assert not np.allclose(single, expected, atol=1e-4)  # the views do change the number


def test_unreadable_input_raises_a_named_error(saved, tmp_path):
    det = Detector.load(saved[0], "cpu")
    with pytest.raises(BadImage, match="image bytes: cannot decode") as err:
        det.score([b"not an image"])
    assert str(err.value) == "image bytes: cannot decode (cannot identify image file)"  # no "<_io.BytesIO at 0x..>"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadImage, match="empty.jpg: empty file"):
        det.score([str(empty)])


def test_precision_and_views_come_from_the_caller_or_the_checkpoint(saved, tmp_path):
    path, _ = saved
    ckpt = checkpoint.load(path)
    ckpt["precision"] = "fp16"  # trained on a GPU in fp16; scored on this CPU
    checkpoint.save(tmp_path / "fp16.pt", ckpt)
    det = Detector.load(tmp_path / "fp16.pt", "cpu")
    assert det.precision == "fp32" and det.views == ("",)
    assert Detector.load(path, "cpu", precision="bf16").precision == "bf16"
    with pytest.raises(Exception, match="unknown view 'spin'"):
        Detector.load(path, "cpu", tta=["spin"])


def test_load_image_reads_file_objects(saved):
    _, val = saved
    a = load_image(val.path[0], 32)
    b = load_image(io.BytesIO(open(val.path[0], "rb").read()), 32, name="x")
    assert np.array_equal(np.asarray(a), np.asarray(b))
