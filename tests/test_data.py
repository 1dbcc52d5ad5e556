import shutil

import pandas as pd
import pytest

from ffdi.config import AugmentConfig, DataConfig
from ffdi.data.labels import prepare, read_labels, read_manifest
from ffdi.data.transforms import build_transform, load_image
from ffdi.errors import DataError


def labels(tmp_path, content: bytes, name="labels.txt"):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_header_and_alias_and_no_final_newline(tmp_path):
    a = read_labels(labels(tmp_path, b"img_name,target\na.jpg,1\nb.jpg,0"))
    b = read_labels(labels(tmp_path, b"img_path,target\na.jpg,1\nb.jpg,0\n", "b.txt"))
    assert a.equals(b)
    assert a.img_name.tolist() == ["a.jpg", "b.jpg"] and a.target.tolist() == [1, 0]


def test_bom_crlf_and_blank_lines(tmp_path):
    df = read_labels(labels(tmp_path, b"\xef\xbb\xbfimg_name,target\r\na.jpg,1\r\n\r\n  \r\nb.jpg,0\r\n"))
    assert df.img_name.tolist() == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"name,label\na.jpg,1\n", "line 1: expected a header 'img_name,target'"),
        (b"img_name\na.jpg\n", "line 1: header has no 'target' column"),
        (b"img_name,target\na.jpg,1\nb.jpg,2\n", "line 3: target must be 0 or 1, got '2'"),
        (b"img_name,target\na.jpg,1\nb.jpg,\n", "line 3: target must be 0 or 1, got ''"),
        (b"img_name,target\na.jpg,1\n\nb.jpg,0\na.jpg,0\n", "line 5: duplicate name 'a.jpg' (first on line 2)"),
        (b"img_name,target\n../x.jpg,1\n", "line 2: image name '../x.jpg' escapes the data folder"),
        (b"img_name,target\n/etc/passwd,1\n", "line 2: image name '/etc/passwd' escapes"),
        (b"img_name,target\na.jpg,1,3\n", "line 2: expected 2 fields, got 3"),
        (b"", "empty file"),
    ],
)
def test_bad_label_files_name_file_line_value(tmp_path, content, message):
    p = labels(tmp_path, content)
    with pytest.raises(DataError) as e:
        read_labels(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_missing_label_file(tmp_path):
    with pytest.raises(DataError, match="label file not found"):
        read_labels(tmp_path / "nope.txt")


def test_test_split_names_only(tmp_path):
    assert read_labels(labels(tmp_path, b"img_name\na.jpg\nb.jpg"), require_target=False).target.tolist() == [-1, -1]
    bare = read_labels(labels(tmp_path, b"a.jpg\nb.jpg\n", "bare.txt"), require_target=False)
    assert bare.img_name.tolist() == ["a.jpg", "b.jpg"]


def test_prepare_writes_manifests(tiny_data, tmp_path):
    summary = prepare(DataConfig(root=str(tiny_data)), tmp_path / "prepared")
    truth = pd.read_csv(tiny_data / "valset_label.txt")
    val = read_manifest(tmp_path / "prepared" / "val.csv")
    assert val.img_name.tolist() == truth.img_name.tolist()
    assert val.target.tolist() == truth.target.tolist()
    assert all(p.startswith(str(tiny_data / "valset")) for p in val.path)
    assert summary["splits"]["train"]["images"] == 96 and summary["splits"]["test"]["images"] == 12
    assert summary["predict_split"] == "test"
    assert summary["splits"]["val"]["fake"] + summary["splits"]["val"]["real"] == 48


def copy_data(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_prepare_missing_image_is_named(tiny_data, tmp_path):
    root = copy_data(tiny_data, tmp_path / "d")
    first = pd.read_csv(root / "trainset_label.txt").img_name[0]
    (root / "trainset" / first).unlink()
    with pytest.raises(DataError) as e:
        prepare(DataConfig(root=str(root)), tmp_path / "prepared")
    assert "trainset_label.txt: 1 of 96 images not found" in str(e.value) and first in str(e.value)
    assert not (tmp_path / "prepared").exists()  # nothing written half-way


def test_prepare_single_class_val_says_auc_undefined(tiny_data, tmp_path):
    root = copy_data(tiny_data, tmp_path / "d")
    df = pd.read_csv(root / "valset_label.txt")
    df[df.target == 1].to_csv(root / "valset_label.txt", index=False)
    with pytest.raises(DataError, match="ROC-AUC is undefined"):
        prepare(DataConfig(root=str(root)), tmp_path / "prepared")


def test_prepare_without_test_split_predicts_val(tiny_data, tmp_path):
    root = copy_data(tiny_data, tmp_path / "d")
    shutil.rmtree(root / "testset")
    summary = prepare(DataConfig(root=str(root)), tmp_path / "prepared")
    assert summary["predict_split"] == "val" and "test" not in summary["splits"]


def test_test_folder_without_label_file_lists_images(tiny_data, tmp_path):
    root = copy_data(tiny_data, tmp_path / "d")
    (root / "testset_label.txt").unlink()
    prepare(DataConfig(root=str(root)), tmp_path / "prepared")
    assert len(read_manifest(tmp_path / "prepared" / "test.csv")) == 12


def test_transforms_shape_and_normalisation(tiny_data):
    path = next((tiny_data / "valset").iterdir())
    img = load_image(str(path), draft_size=32)
    aug = AugmentConfig(resize=40, image_size=32, rotation=10, grayscale=0.5, vflip=0.5)
    for train in (True, False):
        x = build_transform(aug, train)(img)
        assert tuple(x.shape) == (3, 32, 32)
    x = build_transform(AugmentConfig(resize=32, image_size=32, normalize="none"), False)(img)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_batches_are_pinned_when_the_loader_pins(manifests, monkeypatch):
    """DataLoader(pin_memory=True) pins what it knows (tensors, tuples, dicts) or what has a pin_memory
    method; a Batch without one stayed in pageable memory, and a copy to the GPU from pageable memory
    waits for the GPU's queue to drain, every step."""
    import torch
    from torch.utils.data._utils.pin_memory import pin_memory

    from ffdi.data.dataset import Batch, make_loader

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self) or self.clone())
    batch = next(iter(make_loader(manifests[1].iloc[:4], AugmentConfig(resize=32, image_size=32), 4, 0, False)))
    out = pin_memory(batch)
    assert isinstance(out, Batch) and out.index.tolist() == batch.index.tolist()
    assert any(t is batch.x for t in pinned) and any(t is batch.y for t in pinned)
    assert torch.equal(out.x, batch.x) and out.x is not batch.x


def test_epoch_order_is_the_order_a_shuffling_dataloader_gave():
    """EpochSampler shuffles as DataLoader(shuffle=True, generator=seeded) did before the seed moved
    into the sampler, so that runs keep their numbers."""
    import torch
    from torch.utils.data import DataLoader

    from ffdi.data.dataset import EpochSampler

    rows = list(range(50))
    for seed in (0, 3001, 7):
        before = [
            int(i)
            for b in DataLoader(rows, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
            for i in b
        ]
        sampler = EpochSampler(rows, shuffle=True)
        sampler.set_epoch(0, seed)
        assert [i for i, _ in sampler] == before
        assert {s for _, s in sampler} == {seed}
    plain = EpochSampler(rows, shuffle=False)
    plain.set_epoch(0, None)
    assert list(plain) == [(i, None) for i in rows]
