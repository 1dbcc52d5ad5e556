from dataclasses import replace

import pytest
import torch
from sklearn import metrics as skm

from ffdi.config import AugmentConfig, DataConfig, Params, RuntimeConfig, TrainConfig
from ffdi.engine.train import fit
from ffdi.inference.detector import Detector
from ffdi.model import checkpoint
from tests.project import NO_DEGRADATION


def tiny_params(tiny_data, workers=0, **train):
    return Params(
        data=DataConfig(root=str(tiny_data)),
        augment=AugmentConfig(resize=32, image_size=32),
        train=TrainConfig(**{"epochs": 2, "batch_size": 16, **train}),
        runtime=RuntimeConfig(workers=workers),
    )


def test_fit_history_and_checkpoints(tiny_data, manifests, tmp_path, capsys):
    from ffdi.hardware import cpu_name

    rows = []
    result = fit(tiny_params(tiny_data), *manifests, tmp_path, on_epoch=rows.append)
    assert [r["epoch"] for r in result["history"]] == [0, 1] == [r["epoch"] for r in rows]
    val = manifests[1]
    for r in rows:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr"} <= set(r)
        assert r["val_images"] == len(val)
        # Where and how each epoch computed: columns of reports/history.csv.
        assert (r["device"], r["precision"], r["loader_workers"]) == ("cpu", result["precision"], 0)
        assert r["torch_threads"] == torch.get_num_threads() and r["train_img_per_s"] > 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"training on cpu ({cpu_name()}), {result['precision']}, batch 16, 0 loader workers, "
        f"{torch.get_num_threads()} torch threads"
    )
    epoch_lines = [line for line in out if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("img/s on cpu, 0 workers" in line for line in epoch_lines)
    best = result["best"]
    assert best["value"] == max(r["val_auc"] for r in rows)
    ckpt = checkpoint.load(tmp_path / "best.pt")
    assert ckpt["epoch"] == best["epoch"] and ckpt["precision"] == result["precision"]
    assert ckpt["config"]["train"]["epochs"] == 2 and ckpt["config"]["model"]["se"] is False
    assert ckpt["metrics"]["val_auc"] == best["value"]
    # The best epoch's val numbers are what the saved checkpoint scores, through the Detector,
    # with the same views: checked against sklearn on its probabilities.
    detector = Detector.load(tmp_path / "best.pt", "cpu", tta=Params().predict.tta)
    res = detector.score_manifest(val, 32)
    assert skm.roc_auc_score(res.targets, res.prob) == pytest.approx(best["value"], abs=1e-12)
    assert skm.log_loss(res.targets, res.prob) == pytest.approx(ckpt["metrics"]["val_loss"], rel=1e-6)
    assert skm.accuracy_score(res.targets, res.prob >= 0.5) == pytest.approx(ckpt["metrics"]["val_acc"])


class Killed(Exception):
    pass


@pytest.mark.slow
def test_same_seed_same_numbers_and_resume_matches(tiny_data, manifests, tmp_path):
    params = tiny_params(tiny_data, epochs=3)
    straight = fit(params, *manifests, tmp_path / "a")["history"]
    again = fit(params, *manifests, tmp_path / "b")["history"]
    assert [r["val_loss"] for r in straight] == [r["val_loss"] for r in again]

    # Die right after epoch 1 is saved; the rerun resumes there and ends identical.
    def die(row):
        if row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(params, *manifests, tmp_path / "c", on_epoch=die)
    resumed, ran = [], []
    result = fit(params, *manifests, tmp_path / "c", on_epoch=ran.append, on_resume=resumed.extend)
    assert [r["epoch"] for r in resumed] == [0, 1] and [r["epoch"] for r in ran] == [2]
    for key in ("train_loss", "val_loss", "val_auc"):
        assert [r[key] for r in result["history"]] == [r[key] for r in straight], key


@pytest.mark.slow
def test_best_by_loss_picks_minimum(tiny_data, manifests, tmp_path):
    result = fit(tiny_params(tiny_data, epochs=3, best_metric="val_loss", lr=0.01), *manifests, tmp_path)
    losses = [r["val_loss"] for r in result["history"]]
    assert result["best"]["epoch"] == losses.index(min(losses))
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["metrics"]["val_loss"] == min(losses)


def corrupt(manifest, tmp_path):
    """Copy of `manifest` whose rows 3 and 7 point at a zero-byte and a truncated JPEG."""
    m = manifest.copy()
    empty, cut = tmp_path / "empty.jpg", tmp_path / "cut.jpg"
    empty.write_bytes(b"")
    cut.write_bytes(open(m.path[0], "rb").read()[:200])
    m.loc[3, "path"], m.loc[7, "path"] = str(empty), str(cut)
    return m, {str(empty), str(cut)}


def test_skip_policy_survives_bad_images_in_worker_processes(tiny_data, manifests, tmp_path):
    train_m, val_m = manifests
    train_bad, bad_paths = corrupt(train_m, tmp_path)
    (tmp_path / "v").mkdir()
    val_bad, val_paths = corrupt(val_m, tmp_path / "v")
    params = tiny_params(tiny_data, workers=2)
    params = replace(params, data=replace(params.data, on_bad_image="skip"))
    result = fit(params, train_bad, val_bad, tmp_path / "state")
    assert len(result["history"]) == 2
    assert {p for p, _ in result["skipped"]} == bad_paths | val_paths
    reasons = dict(result["skipped"])
    assert any("empty file" in r for r in reasons.values()) and any("cannot decode" in r for r in reasons.values())
    assert [r["skipped_images"] for r in result["history"]] == [4, 4]


def test_error_policy_names_the_bad_file(tiny_data, manifests, tmp_path):
    train_bad, bad_paths = corrupt(manifests[0], tmp_path)
    with pytest.raises(Exception) as e:
        fit(tiny_params(tiny_data, workers=2), train_bad, manifests[1], tmp_path / "state")
    assert any(p in str(e.value) for p in bad_paths)


@pytest.mark.parametrize("train", [False, True])
def test_loader_batches_equal_the_per_image_transform(manifests, train):
    """Workers hand over uint8 NHWC; normalised on the device it is what ToTensor + Normalize give."""
    from ffdi.data.dataset import make_loader
    from ffdi.data.transforms import build_transform, load_image, norm_stats, normalize_batch

    # Resize from 32 to 24 and crop to 20; when training, both flips always.
    aug = AugmentConfig(resize=24, image_size=20, hflip=1.0, vflip=1.0, **NO_DEGRADATION)
    val = manifests[1].iloc[:5]
    batch = next(iter(make_loader(val, aug, 5, 0, train=train)))
    assert batch.x.dtype == torch.uint8 and tuple(batch.x.shape) == (5, 20, 20, 3)
    x = normalize_batch(batch.x, norm_stats(aug))
    expected = torch.stack([build_transform(aug, train)(load_image(val.path[i], 24)) for i in batch.index.tolist()])
    assert torch.equal(x, expected)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_amp_and_distributed_switches(monkeypatch):
    from ffdi import hardware
    from ffdi.engine.distributed import use_distributed
    from ffdi.hardware import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("off", cpu) == "fp32"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16" and resolve_precision("off", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(RuntimeError, match="fp16 needs CUDA but the device is cpu"):
        resolve_precision("fp16", cpu)

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not use_distributed(TrainConfig(distributed="auto"))
    with pytest.raises(RuntimeError, match="WORLD_SIZE is not set"):
        use_distributed(TrainConfig(distributed="on"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert use_distributed(TrainConfig(distributed="auto"))
    assert not use_distributed(TrainConfig(distributed="off"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not use_distributed(TrainConfig(distributed="auto"))


class GrowingShare:
    """A CPU share that grows from 1 core to 2 after the first epoch, as when a parallel run ends."""

    def __init__(self):
        self.calls = 0

    def threads(self) -> int:
        self.calls += 1
        return 1 if self.calls <= 2 else 2  # loader creation and epoch 0: 1; epoch 1 on: 2


@pytest.mark.slow
def test_loader_workers_follow_the_cpu_share_between_epochs(tiny_data, manifests, tmp_path):
    # Made with no worker (1 core), the loaders must take one when a core frees up, with the
    # same numbers as without workers under the same thread counts: the worker count never
    # changes results (the thread count may, in the last bits).
    before = torch.get_num_threads()
    try:
        grown = fit(tiny_params(tiny_data, workers="auto"), *manifests, tmp_path / "a", cpu_share=GrowingShare())
        fixed = fit(tiny_params(tiny_data, workers=0), *manifests, tmp_path / "b", cpu_share=GrowingShare())
    finally:
        torch.set_num_threads(before)
    for key in ("train_loss", "val_loss", "val_auc"):
        assert [r[key] for r in grown["history"]] == [r[key] for r in fixed["history"]], key


@pytest.mark.slow
def test_loader_workers_live_through_the_epochs_with_the_numbers_of_none(tiny_data, manifests, tmp_path, monkeypatch):
    """One set of loader processes for the whole run, not a new one each epoch (each start costs
    seconds at 14 workers on a GPU machine). Each epoch's seed reaches them with every index, so the
    numbers are those of a run without workers, and a resumed run's are an uninterrupted one's."""
    import os

    from ffdi.data.dataset import ImageDataset

    log = tmp_path / "loaded_by"
    item = ImageDataset._item

    def spy(self, img, i):
        with open(log, "a") as f:
            f.write(f"{len(self)} {os.getpid()}\n")
        return item(self, img, i)

    monkeypatch.setattr(ImageDataset, "_item", spy)
    params = tiny_params(tiny_data, epochs=3, workers=1)
    with_workers = fit(params, *manifests, tmp_path / "a")["history"]
    loaded = [line.split() for line in log.read_text().splitlines()]
    train_n, val_n = (str(len(m)) for m in manifests)
    train_pids = {pid for n, pid in loaded if n == train_n}
    val_pids = {pid for n, pid in loaded if n == val_n}
    assert len(train_pids) == 1 and len(val_pids) == 1, "a new loader process each epoch"
    assert str(os.getpid()) not in train_pids | val_pids
    assert sum(n == train_n for n, _ in loaded) == 3 * len(manifests[0])

    without = fit(tiny_params(tiny_data, epochs=3, workers=0), *manifests, tmp_path / "b")["history"]

    def die(row):
        if row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(params, *manifests, tmp_path / "c", on_epoch=die)
    resumed = fit(params, *manifests, tmp_path / "c")["history"]
    for key in ("train_loss", "val_loss", "val_auc"):
        assert [r[key] for r in with_workers] == [r[key] for r in without] == [r[key] for r in resumed], key
