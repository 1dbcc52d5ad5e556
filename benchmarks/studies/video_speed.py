"""Video scoring speed: frames scored per second on a 1080p, 60-second clip.

    python -m benchmarks.studies.video_speed [--model models/model.pt] [--clip .ffdi/bench/clip_1080p_60s.mp4]
                                     [--out benchmarks/results/video_speed.json] [--figure docs/img/video_speed.png]

The clip is made once (and kept at --clip): 1920x1080, 30 fps, 60 s, H.264 (libx264 preset veryfast,
CABAC and B-frames as a camera or an upload service writes them) with a keyframe every 2 s, showing
a face (scikit-image's astronaut) that moves over a photo, so --faces finds one in every frame.

Each setting (--frames 16 or --fps 2, with and without --faces) scores the whole clip through
`ffdi.inference.video.score_video`, the path of `ffdi score`, twice; the faster run counts. Also timed: the
sampling alone (seek + decode + RGB, no model) and, for reference, decoding every frame. Without
--model, an untrained model of params.yaml's architecture and image size: the speed is the same.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from ffdi.files import write_json

SIDE = (1920, 1080)
FPS = 30
SECONDS = 60
SETTINGS = [
    ("--frames 16", {"frames": 16}, False),
    ("--frames 16 --faces", {"frames": 16}, True),
    ("--fps 2", {"fps": 2}, False),
    ("--fps 2 --faces", {"fps": 2}, True),
]


def make_clip(path: Path) -> Path:
    from PIL import Image
    from skimage import data

    from ffdi.inference.video import write_video

    background = np.asarray(Image.fromarray(data.coffee()).resize(SIDE))
    face = np.asarray(Image.fromarray(data.astronaut()).resize((360, 360)))

    def frames():
        for i in range(FPS * SECONDS):
            t = i / FPS
            x = int((SIDE[0] - 360) * (0.5 + 0.45 * np.sin(t / 3)))
            y = int((SIDE[1] - 360) * (0.5 + 0.45 * np.cos(t / 4)))
            frame = background.copy()
            frame[y : y + 360, x : x + 360] = face
            yield frame

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    write_video(tmp, frames(), FPS, options={"preset": "veryfast", "g": str(2 * FPS), "crf": "23"})
    os.replace(tmp, path)
    return path


def detector_for(model: str | None):
    import torch

    from ffdi.config import load_params
    from ffdi.inference.detector import Detector
    from ffdi.model import checkpoint
    from ffdi.model.networks import build_model

    if model:
        return Detector.load(model, "cpu"), model
    params = load_params("params.yaml")
    torch.manual_seed(0)
    path = Path(".ffdi/bench/untrained.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(path, checkpoint.snapshot(build_model(params.model), params, 0, {}, "fp32"))
    return Detector.load(path, "cpu", precision="fp32"), f"untrained {params.model.arch}"


def best_of(runs: int, fn):
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.studies.video_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--clip", default=".ffdi/bench/clip_1080p_60s.mp4")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, one per core); 1 where other jobs share the cores",
    )
    ap.add_argument("--out", default="benchmarks/results/video_speed.json")
    ap.add_argument("--figure", default="docs/img/video_speed.png")
    args = ap.parse_args(argv)

    import av
    import torch

    from ffdi.inference.faces import FaceCropper
    from ffdi.inference.video import Sampling, sample_frames, score_video

    if args.threads:
        torch.set_num_threads(args.threads)
    clip = Path(args.clip)
    if not clip.is_file():
        t0 = time.perf_counter()
        make_clip(clip)
        print(f"made {clip} ({clip.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.0f} s")
    detector, described = detector_for(args.model)
    faces = FaceCropper()

    def decode_all():
        with av.open(str(clip)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            return sum(1 for _ in c.decode(s))

    decode_s, decoded = best_of(args.runs, decode_all)
    rows = [
        {
            "setting": "decode every frame (no model)",
            "frames": decoded,
            "seconds": decode_s,
            "frames_per_s": decoded / decode_s,
        }
    ]
    for label, sampling, with_faces in SETTINGS:
        s = Sampling(**sampling)
        if not with_faces:
            sample_s, n = best_of(args.runs, lambda: sum(1 for _ in sample_frames(clip, s)))
            rows.append(
                {
                    "setting": f"{label}: sampling alone (no model)",
                    "frames": n,
                    "seconds": sample_s,
                    "frames_per_s": n / sample_s,
                }
            )
        seconds, v = best_of(
            args.runs,
            lambda: score_video(detector, clip, s, "mean", batch_size=64, faces=faces if with_faces else None),
        )
        assert not v.error, v.error
        rows.append(
            {
                "setting": label,
                "frames": len(v.frames),
                "frames_without_face": v.frames_without_face,
                "seconds": seconds,
                "frames_per_s": len(v.frames) / seconds,
            }
        )
        print(
            f"{label:28s} {len(v.frames):4d} frames in {seconds:6.2f} s: {len(v.frames) / seconds:7.1f} frames/s",
            flush=True,
        )

    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    result = {
        "clip": f"{SIDE[0]}x{SIDE[1]}, {FPS} fps, {SECONDS} s, H.264 veryfast, keyframe every 2 s",
        "model": described,
        "image_size": detector.augment.image_size,
        "precision": detector.precision,
        "torch": torch.__version__,
        "av": av.__version__,
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "amx_bf16": bool(caps.get("amx_bf16", False)),
        "threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "rows": rows,
    }
    print()
    print("| setting | frames | seconds | frames/s |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['frames']} | {r['seconds']:.2f} | {r['frames_per_s']:.1f} |")
    print(
        f"\n{cpu}, {result['cores']} cores, amx_bf16 {result['amx_bf16']}, torch {torch.__version__}, "
        f"{detector.precision}, load average {result['load_average_1m']:.1f}"
    )
    write_json(args.out, result)
    figure(rows, result, Path(args.figure))
    print(f"-> {args.out}, {args.figure}")
    return 0


def figure(rows: list[dict], result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ffdi.files import save_figure

    scored = [r for r in rows if "(no model)" not in r["setting"]]
    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=100)
    ax.barh([r["setting"] for r in scored][::-1], [r["frames_per_s"] for r in scored][::-1], color="tab:blue")
    for i, r in enumerate(scored[::-1]):
        ax.text(r["frames_per_s"], i, f" {r['frames_per_s']:.1f}", va="center", fontsize=8)
    ax.set_xlabel("frames scored per second (sampling, decoding, faces, model)")
    ax.set_title(
        f"ffdi score on a 1080p 60 s clip: {result['cores']}-core CPU, {result['precision']}, torch {result['torch']}",
        fontsize=9,
    )
    ax.margins(x=0.15)
    fig.tight_layout()
    save_figure(fig, out)


if __name__ == "__main__":
    raise SystemExit(main())
