"""Videos into the image layout the pipeline reads (stage `frames`).

Where data.root's train label file names videos (`video_name,target[,manipulation]`), each video of each
split is sampled (frames.train_frames per training video, frames.eval_frames per val and test video,
evenly spread, ffdi.data.video), each frame cropped to its largest face (MTCNN, ffdi.data.faces) with
frames.margin and resized to frames.size, and written as a PNG:

    <out>/<split folder>/<video_name>/<k>.png      k: the frame's position among those sampled
    <out>/<label file>                             img_name,target[,<group column>],video_name
    <out>/videos.csv                               per video: frames asked, decoded, with a face, written;
                                                   the reason a video was left out
    <out>/frames.json                              what was made, and the params it was made with

PNG, not JPEG: the crops come out of a lossy codec already, and a second lossy encoding would add
compression traces that differ between this pipeline and what it will later score.

A frame without a face is skipped. A video without a usable frame (no face in any, or a bad file: truncated,
audio only, no frames, not a video, missing) is listed in videos.csv and left out under data.on_bad_image:
skip, and stops the stage with one line naming it under `error`. The folder is written beside `out` and
renamed into place at the end: a stopped run leaves the old output or none, never half of one.

An image data set is passed through: frames.json says {"kind": "images"} and prepare reads data.root itself,
so the image pipeline is the same, to the bit, with or without this stage.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from ffdi.config import DataConfig, FramesConfig
from ffdi.data.labels import (
    FRAMES_SUMMARY,
    TEST_LABELS,
    VIDEO_RECORD,
    VIDEO_SUFFIXES,
    list_images,
    names_videos,
    read_labels,
)
from ffdi.errors import BadImage, DataError
from ffdi.files import write_csv, write_json

RECORD_COLUMNS = [
    "split",
    "video_name",
    "target",
    "group",
    "frames_asked",
    "frames_decoded",
    "frames_with_face",
    "frames_written",
    "error",
]


@dataclasses.dataclass(frozen=True)
class Job:
    """One video to turn into frames."""

    split: str
    video_name: str
    path: str
    dest: str  # the folder its PNGs go to
    frames: int


def is_video_data(data: DataConfig) -> bool:
    """Whether data.root's train label file names videos (by their suffixes)."""
    path = Path(data.root) / data.train_labels
    return names_videos(read_labels(path, require_target=True, group_column=data.group_column), path)


def extract(data: DataConfig, cfg: FramesConfig, out: str | Path, workers: int = 1) -> dict:
    """Write `out` (see the module's docstring) and return what frames.json holds."""
    out = Path(out)
    if not Path(data.root).is_dir():
        raise DataError(f"data.root {data.root!r}: folder not found")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = _extract(data, cfg, tmp, workers) if is_video_data(data) else {"kind": "images"}
        write_json(tmp / FRAMES_SUMMARY, summary)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _splits(data: DataConfig) -> list[tuple[str, str, Path | None, pd.DataFrame]]:
    """(split, folder, label file or None, labels) of the splits there are: train and val, and test where
    its folder exists (with its label file where there is one, else every video in the folder)."""
    root, found = Path(data.root), []
    for split, folder, labels_file in (
        ("train", data.train_dir, data.train_labels),
        ("val", data.val_dir, data.val_labels),
    ):
        path = root / labels_file
        labels = read_labels(path, require_target=True, group_column=data.group_column)
        if not names_videos(labels, path):
            raise DataError(
                f"{path}: names images while {data.train_labels} names videos; a data set is one or the other"
            )
        found.append((split, folder, path, labels))
    if data.test_dir and (root / data.test_dir).is_dir():
        path = root / data.test_labels if data.test_labels else None
        if path is not None and path.is_file():
            labels = read_labels(path, require_target=False)
            if len(labels) and not names_videos(labels, path):
                raise DataError(
                    f"{path}: names images while {data.train_labels} names videos; a data set is one or the other"
                )
        else:
            names = sorted(list_images(root / data.test_dir, VIDEO_SUFFIXES))
            labels, path = pd.DataFrame({"img_name": names, "target": -1, "group": ""}), None
        found.append(("test", data.test_dir, path, labels))
    return found


def _extract(data: DataConfig, cfg: FramesConfig, tmp: Path, workers: int) -> dict:
    root = Path(data.root)
    splits = _splits(data)
    jobs, rows = [], []
    for split, folder, _, labels in splits:
        k = cfg.train_frames if split == "train" else cfg.eval_frames
        for name, target, group in zip(labels.img_name, labels.target, labels.group):
            rows.append({"split": split, "video_name": name, "target": int(target), "group": group})
            jobs.append(Job(split, name, str(root / folder / name), str(tmp / folder / name), k))

    records = []
    with _pool(cfg, min(workers, len(jobs))) as run:
        bar = tqdm(run(jobs), total=len(jobs), desc="frames", unit="video", mininterval=1.0)
        for row, job, rec in zip(rows, jobs, bar):
            if rec["error"]:
                if data.on_bad_image == "error":
                    raise DataError(f"{job.path}: {rec['error']} (data.on_bad_image: skip leaves it out and goes on)")
                tqdm.write(f"left out: {job.path}: {rec['error']}")
            records.append({**row, **rec})
    record = pd.DataFrame(records, columns=RECORD_COLUMNS)
    write_csv(tmp / VIDEO_RECORD, record)

    summary: dict = {"kind": "videos", "root": str(root), "params": dataclasses.asdict(cfg), "splits": {}}
    for split, folder, labels_path, labels in splits:
        mine = record[record.split == split]
        kept = mine[mine.error == ""]
        frame_rows = _frame_rows(tmp / folder, kept)
        table = pd.DataFrame(frame_rows, columns=["img_name", "target", "group", "video_name"])
        if split == "test":
            table = table[["img_name", "video_name"]]
            name = data.test_labels or TEST_LABELS
        else:
            if data.group_column and (labels.group != "").any():
                table = table.rename(columns={"group": data.group_column})
            else:
                table = table.drop(columns=["group"])
            name = data.train_labels if split == "train" else data.val_labels
        write_csv(tmp / name, table)
        summary["splits"][split] = {
            "videos": len(mine),
            "videos_kept": len(kept),
            "videos_left_out": sorted(mine.video_name[mine.error != ""]),
            "frames": len(table),
            "labels": str(labels_path) if labels_path else None,
        }
    return summary


def _frame_rows(folder: Path, kept: pd.DataFrame) -> list[dict]:
    """The label rows of the frames written for the kept videos, in the order of the label file."""
    rows = []
    for v, t, g in zip(kept.video_name, kept.target, kept.group):
        for png in sorted(os.listdir(folder / v)):
            rows.append({"img_name": f"{v}/{png}", "target": int(t), "group": g, "video_name": v})
    return rows


# --- one video, in a worker --------------------------------------------------------------------------

_cropper = None  # each worker's FaceCropper (MTCNN), made once
_cfg: FramesConfig | None = None


def _init(cfg: FramesConfig, threads: int, worker: bool = False) -> None:
    global _cropper, _cfg
    _cfg = cfg
    if worker:  # a forked worker: the stage's SIGTERM handler (ffdi.stage) would print a traceback when
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool stops it; it is the parent's to report
    if cfg.faces:
        import torch

        from ffdi.data.faces import FaceCropper

        torch.set_num_threads(threads)  # one per worker: the workers are the parallelism
        _cropper = FaceCropper(margin=cfg.margin)


class _pool:
    """`with _pool(cfg, n) as run: run(jobs)` yields each job's record, in order: in this process for one
    worker, else in n processes."""

    def __init__(self, cfg: FramesConfig, workers: int):
        self.cfg, self.workers, self.pool = cfg, max(1, workers), None

    def __enter__(self):
        if self.workers == 1:
            _init(self.cfg, 1)
            return lambda jobs: map(one_video, jobs)
        import multiprocessing

        # fork, not spawn: spawn re-runs the caller's __main__ in each worker (which fails for a script
        # read from stdin, and the pool then restarts its workers forever); the stage has not loaded
        # torch before the fork, and each worker makes its own MTCNN after it.
        self.pool = multiprocessing.get_context("fork").Pool(self.workers, _init, (self.cfg, 1, True))
        return lambda jobs: self.pool.imap(one_video, jobs, chunksize=1)

    def __exit__(self, exc_type, *exc):
        if self.pool is not None:
            self.pool.close() if exc_type is None else self.pool.terminate()  # stopped: drop the videos queued
            self.pool.join()


def one_video(job: Job) -> dict:
    """Sample, crop and write one video's frames; its record. Never raises for a bad video."""
    from ffdi.data.faces import NoFace, crop_face
    from ffdi.data.video import BadVideo, Sampling, sample_frames

    cfg = _cfg
    rec = {"frames_asked": job.frames, "frames_decoded": 0, "frames_with_face": 0, "frames_written": 0, "error": ""}
    dest = Path(job.dest)
    try:
        for k, frame in enumerate(sample_frames(job.path, Sampling(frames=job.frames), job.path)):
            rec["frames_decoded"] += 1
            image = frame.image
            if cfg.faces:
                try:
                    image, _ = crop_face(_cropper, image)
                except (NoFace, BadImage):
                    continue  # a frame without a face: skipped, counted
                rec["frames_with_face"] += 1
            dest.mkdir(parents=True, exist_ok=True)
            _resize(image, cfg.size, cfg.faces).save(dest / f"{k:03d}.png")
            rec["frames_written"] += 1
    except BadVideo as e:
        rec["error"] = str(e).removeprefix(f"{job.path}: ")
    if not rec["error"] and not rec["frames_written"]:
        rec["error"] = f"no face in any of the {rec['frames_decoded']} frames sampled"
    if rec["error"]:
        shutil.rmtree(dest, ignore_errors=True)  # none of a left-out video's frames reach the label files
    if not cfg.faces:
        rec["frames_with_face"] = ""
    return rec


def _resize(image: Image.Image, size: int | None, square: bool) -> Image.Image:
    """A face crop (square) to size x size; a whole frame to a shorter side of size."""
    if size is None:
        return image
    w, h = image.size
    target = (size, size) if square else ((size, round(h * size / w)) if w <= h else (round(w * size / h), size))
    return image if image.size == target else image.resize(target, Image.Resampling.LANCZOS)
