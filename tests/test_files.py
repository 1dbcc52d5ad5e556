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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask_as_open_would(tmp_path, umask, mode):
    """A submission or metrics.json must be readable by whoever the umask lets read it (mkstemp's
    0o600, kept by the rename, made every file private)."""
    import os
    import stat

    import pandas as pd

    before = os.umask(umask)
    try:
        files.write_json(tmp_path / "metrics.json", {"a": 1})
        files.write_csv(tmp_path / "submission.csv", pd.DataFrame({"img_name": ["x.jpg"], "y_pred": [0.5]}))
        files.torch_save(tmp_path / "model.pt", {"w": torch.ones(1)})
    finally:
        os.umask(before)
    for name in ("metrics.json", "submission.csv", "model.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
