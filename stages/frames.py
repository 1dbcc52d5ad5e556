"""Stage `frames`: a video data set's frames as face crops in the image layout (ffdi.data.frames); an image
data set passes through (frames.json says so, and prepare reads data.root)."""

import os

from ffdi.data.frames import extract
from ffdi.stage import stage_main


def main(params, out):
    # Every core this process may use: the workers decode and find faces, one video each.
    summary = extract(params.data, params.frames, out, workers=len(os.sched_getaffinity(0)))
    if summary["kind"] == "images":
        print(f"{params.data.root}: an image data set, read as it is -> {out}")
        return
    for split, s in summary["splits"].items():
        print(
            f"{split}: {s['frames']} frames of {s['videos_kept']} videos"
            + (f"; {len(s['videos_left_out'])} left out (listed in {out}/videos.csv)" if s["videos_left_out"] else "")
        )


if __name__ == "__main__":
    stage_main(main, "out")
