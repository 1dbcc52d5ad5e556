"""The frames stage's speed and disk: videos/s and frames/s, with and without faces, on clips like
FaceForensics++ c23's.

    python -m benchmarks.studies.frames_speed [--clips 6] [--workers N] [--out benchmarks/results/frames_speed.json]

The clips are made once (kept under .ffdi/bench/frames/): 1280x720, 25 fps, 16 s, H.264 at CRF 23 (c23 is
CRF 23) with a keyframe every 2 s, showing a face (scikit-image's astronaut, 256 px) that moves over a photo,
so that MTCNN finds one in every frame. Each clip is in trainset/ and in valset/ of one data set, so one
run of `ffdi.data.frames.extract` (the stage's code, every core by default) samples frames.train_frames (8)
of each training video and frames.eval_frames (32) of each val video, as the stage does. Each setting
runs twice; the faster run counts. Disk: the bytes the stage wrote, per video of each split.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from ffdi.files import write_json

SIDE = (1280, 720)
FPS = 25
SECONDS = 16
FACE = 256
HOME = Path(".ffdi/bench/frames")


def make_clip(path: Path, phase: float) -> Path:
    from PIL import Image
    from skimage import data

    from ffdi.data.video import write_video

    background = np.asarray(Image.fromarray(data.coffee()).resize(SIDE))
    face = np.asarray(Image.fromarray(data.astronaut()).resize((FACE, FACE)))

    def frames():
        for i in range(FPS * SECONDS):
            t = i / FPS + phase
            x = int((SIDE[0] - FACE) * (0.5 + 0.45 * np.sin(t / 3)))
            y = int((SIDE[1] - FACE) * (0.5 + 0.45 * np.cos(t / 4)))
            frame = background.copy()
            frame[y : y + FACE, x : x + FACE] = face
            yield frame

    tmp = path.with_suffix(".tmp.mp4")
    write_video(tmp, frames(), FPS, options={"preset": "veryfast", "g": str(2 * FPS), "crf": "23"})
    os.replace(tmp, path)
    return path


def data_set(clips: int) -> Path:
    root = HOME / f"data_{clips}"
    (root / "trainset").mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(clips):
        clip = root / "trainset" / f"clip{k:02d}.mp4"
        if not clip.is_file():
            print(f"making {clip} ...", flush=True)
            make_clip(clip, phase=7.0 * k)
        names.append(clip.name)
    if not (root / "valset").exists():
        (root / "valset").symlink_to("trainset")
    labels = "video_name,target\n" + "".join(f"{n},{k % 2}\n" for k, n in enumerate(names))
    for split in ("trainset", "valset"):
        (root / f"{split}_label.txt").write_text(labels)
    return root


def cpu_model() -> str:
    """lscpu's model name (platform.processor() is empty on Linux)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def du(folder: Path, split: str) -> int:
    return sum(p.stat().st_size for p in (folder / split).rglob("*.png"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out", default="benchmarks/results/frames_speed.json")
    args = ap.parse_args(argv)

    from ffdi.config import DataConfig, FramesConfig
    from ffdi.data.frames import extract

    root = data_set(args.clips)
    out = HOME / "out"
    cfg = FramesConfig()
    videos = 2 * args.clips
    frames = args.clips * (cfg.train_frames + cfg.eval_frames)
    rows = []
    for faces in (False, True):
        best = None
        for _ in range(2):
            t0 = time.perf_counter()
            summary = extract(DataConfig(root=str(root)), FramesConfig(faces=faces), out, args.workers)
            seconds = time.perf_counter() - t0
            best = seconds if best is None else min(best, seconds)
        written = sum(s["frames"] for s in summary["splits"].values())
        rows.append(
            {
                "faces": faces,
                "workers": args.workers,
                "videos": videos,
                "frames_asked": frames,
                "frames_written": written,
                "seconds": round(best, 2),
                "videos_per_s": round(videos / best, 3),
                "frames_per_s": round(frames / best, 2),
                "bytes_per_train_video": du(out, "trainset") // args.clips,
                "bytes_per_val_video": du(out, "valset") // args.clips,
            }
        )
        print(rows[-1], flush=True)
    shutil.rmtree(out, ignore_errors=True)
    result = {
        "clip": f"{SIDE[0]}x{SIDE[1]}, {FPS} fps, {SECONDS} s, H.264 CRF 23, a {FACE} px face",
        "frames": {"train_frames": cfg.train_frames, "eval_frames": cfg.eval_frames, "size": cfg.size},
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    write_json(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
