import errno

import pytest
import torch

from ffdi import files


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    files.torch_save(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def full_disk(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.torch_save(path, {"epoch": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_write_json_replaces_whole_file(tmp_path):
    files.write_json(tmp_path / "m.json", {"a": 1})
    files.write_json(tmp_path / "m.json", {"b": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "b": 2\n}\n'
