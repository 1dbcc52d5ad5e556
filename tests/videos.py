"""A labelled video data set made from an image data set in the multiFFDI layout (the tiny sample): each
video is a few consecutive images of one class and one manipulation, encoded losslessly with PyAV, so that
a video's frames are the images it was made of, to the bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ffdi.inference.video import write_video

LOSSLESS = {"codec": "ffv1", "pix_fmt": "bgr0"}  # Matroska


def make_video_set(src: Path, dst: Path, frames: int = 4, fps: int = 4, splits=("trainset", "valset")) -> Path:
    """dst/<split>/<kind><n>.mkv and dst/<split>_label.txt (video_name,target,method) from src's images, and
    dst/sources.csv: which image each frame is (split, video_name, frame, img_name)."""
    sources = []
    for split in splits:
        labels = pd.read_csv(src / f"{split}_label.txt", keep_default_na=False)
        (dst / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for (target, method), part in labels.groupby(["target", "method"], sort=True):
            names = sorted(part.img_name)
            for n in range(len(names) // frames):
                part_names = names[n * frames : (n + 1) * frames]
                images = [np.asarray(Image.open(src / split / x).convert("RGB")) for x in part_names]
                name = f"{method or 'real'}{n:02d}.mkv"
                write_video(dst / split / name, images, fps, **LOSSLESS)
                sources += [
                    {"split": split, "video_name": name, "frame": k, "img_name": x} for k, x in enumerate(part_names)
                ]
                rows.append({"video_name": name, "target": target, "method": method})
        pd.DataFrame(rows).to_csv(dst / f"{split}_label.txt", index=False)
    pd.DataFrame(sources).to_csv(dst / "sources.csv", index=False)
    return dst
