"""The data listing that prepare depends on instead of every image's bytes (ffdi.data.labels.listing)."""

import shutil

import pytest

from ffdi.config import DataConfig
from ffdi.data.labels import listing, prepare


@pytest.fixture
def data(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


def test_the_listing_changes_with_what_prepare_reads_and_only_with_that(data, tmp_path):
    cfg = DataConfig(root=str(data))
    before = listing(cfg)
    assert before["folders"]["trainset"]["images"] == len(list((data / "trainset").iterdir()))
    assert set(before["label_files"]) == {"trainset_label.txt", "valset_label.txt", "testset_label.txt"}

    # A copy of the same files (new inode and time) lists the same: queued experiments see their
    # own copy of the sample, and must not retrain for it.
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert listing(DataConfig(root=str(copy))) == before
    (data / "trainset" / "notes.txt").write_text("not an image")
    assert listing(cfg) == before

    val = sorted((data / "valset").iterdir())
    val[0].write_bytes(val[1].read_bytes() + b"\0")  # rewritten under its own name
    changed = listing(cfg)
    assert changed["folders"]["valset"] != before["folders"]["valset"]
    assert changed["folders"]["trainset"] == before["folders"]["trainset"]

    (data / "trainset" / "sub").mkdir()
    shutil.copy(val[1], data / "trainset" / "sub" / "extra.jpg")  # nested names count too
    assert listing(cfg)["folders"]["trainset"]["images"] == before["folders"]["trainset"]["images"] + 1

    text = (data / "valset_label.txt").read_text()
    (data / "valset_label.txt").write_text(text.replace(",1,", ",0,", 1))
    assert listing(cfg)["label_files"]["valset_label.txt"] != before["label_files"]["valset_label.txt"]


def test_prepared_data_changes_when_an_image_changes_under_its_name(data, tmp_path):
    """So that the models trained on it rerun: the manifests alone (names, targets) stay the same."""
    cfg = DataConfig(root=str(data))
    first = prepare(cfg, tmp_path / "a", listing(cfg))
    again = prepare(cfg, tmp_path / "b", listing(cfg))
    assert first == again
    img = sorted((data / "valset").iterdir())[0]
    img.write_bytes(img.read_bytes() + b"\0")
    changed = prepare(cfg, tmp_path / "c", listing(cfg))
    assert changed["data_hash"] == first["data_hash"]  # the same names and labels
    assert changed["listing_sha256"] != first["listing_sha256"]


@pytest.mark.slow
def test_dvc_reruns_prepare_when_the_images_change_and_only_then(data, tmp_path):
    from tests.project import TINY_PARAMS, make_project

    p = make_project(tmp_path / "repo", {**TINY_PARAMS, "data": {"root": str(data)}})  # outside the repo, as real data
    p.sh("dvc", "repro", "prepare")
    again = p.out("dvc", "repro", "prepare")
    assert "Running stage 'listing'" in again and "Stage 'prepare' didn't change, skipping" in again
    status = p.out("dvc", "status")  # listing is always "changed": DVC cannot know without running it
    stages = [line.rstrip(":") for line in status.splitlines() if line and not line.startswith((" ", "\t"))]
    # (sample never ran here: data.root is elsewhere, so only listing may precede prepare)
    assert "listing" in stages and "prepare" not in stages and "always changed" in status, status
    summary = (p.repo / "prepared" / "summary.json").read_text()

    img = sorted((data / "valset").iterdir())[0]
    img.write_bytes(img.read_bytes() + b"\0")
    out = p.out("dvc", "repro", "prepare")
    assert "Running stage 'prepare'" in out
    assert (p.repo / "prepared" / "summary.json").read_text() != summary  # so train would rerun
