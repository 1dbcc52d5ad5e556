"""Which aggregation of a video's frame scores ranks videos best: mean, max or topk:K.

    python -m benchmarks.video_aggregation [--model models/model.pt] [--out-dir data/video_sample]
                                           [--videos 240] [--frames 16] [--seed 11]

Makes a labelled set of videos in multiFFDV's layout (OUT/valset/*.mp4, OUT/valset_label.txt with
`video_name,target`; usable as an eval.extra_sets folder) from a fresh draw of the built-in sample's
generator (ffdi.sample.generate, another seed: other crops and manipulations of the same bundled photographs),
64 px like the sample. Each
video is --frames frames at 4 fps, H.264 (CRF 23): a real video has real frames only; a fake one has
a share of fake frames, 1/4, 1/2 or all (the rest real), the fakes of one manipulation. Then each
video is scored as `ffdi score` does (ffdi.inference.video.score_video, the model's predict.tta views, every
frame sampled) and the video-level ROC-AUC of each aggregation is printed: over all videos, and
for each share of fake frames against all the real videos.

Frames of one video are different faces (the sample has no video), so this measures how an
aggregation copes with some frames being fake and some not, not with motion or identity.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

AGGREGATES = ("mean", "max", "topk:2", "topk:4", "topk:8")
SHARES = (0.25, 0.5, 1.0)
FPS = 4


def make_set(out: Path, videos: int, frames: int, seed: int) -> pd.DataFrame:
    """OUT/valset/*.mp4 and OUT/valset_label.txt; returns the labels with each fake's share and method."""
    from PIL import Image

    from ffdi.config import SampleConfig
    from ffdi.inference.video import write_video
    from ffdi.sample.generate import generate

    images = out / "images"
    n_images = videos * frames * 2  # enough real and fake frames for every video, each image used once
    if not (images / "valset_label.txt").is_file():
        generate(SampleConfig(n_train=1, n_val=n_images, n_test=1, seed=seed), images)
    labels = pd.read_csv(images / "valset_label.txt")
    rng = np.random.default_rng(seed)
    real = list(rng.permutation(labels.img_name[labels.target == 0].to_numpy()))
    fakes = {m: list(rng.permutation(g.img_name.to_numpy())) for m, g in labels[labels.target == 1].groupby("method")}
    (out / "valset").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(videos):
        target = k % 2
        share = SHARES[(k // 2) % len(SHARES)] if target else 0.0
        method = sorted(fakes)[(k // 2) % len(fakes)] if target else "real"
        n_fake = round(share * frames)
        names = [fakes[method].pop() for _ in range(n_fake)] + [real.pop() for _ in range(frames - n_fake)]
        order = rng.permutation(frames)  # fake frames anywhere in the video
        pixels = [np.asarray(Image.open(images / "valset" / names[i]).convert("RGB")) for i in order]
        name = f"video{k:04d}.mp4"
        write_video(out / "valset" / name, pixels, FPS, options={"crf": "23"})
        rows.append({"video_name": name, "target": target, "fake_share": share, "method": method})
    frame = pd.DataFrame(rows)
    frame[["video_name", "target"]].to_csv(out / "valset_label.txt", index=False)
    frame.to_csv(out / "videos.csv", index=False)
    return frame


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.video_aggregation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/model.pt")
    ap.add_argument("--out-dir", default="data/video_sample")
    ap.add_argument("--videos", type=int, default=240)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples for the differences from mean")
    ap.add_argument("--results", default="benchmarks/results/video_aggregation.json")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from ffdi.analysis.compare import bootstrap_auc_difference
    from ffdi.config import load_params
    from ffdi.evaluation import metrics
    from ffdi.files import write_json
    from ffdi.inference.detector import Detector
    from ffdi.inference.video import Sampling, aggregate, score_video

    out = Path(args.out_dir)
    videos = (
        pd.read_csv(out / "videos.csv")
        if (out / "videos.csv").is_file()
        else make_set(out, args.videos, args.frames, args.seed)
    )
    tta = load_params("params.yaml").predict.tta
    detector = Detector.load(args.model, "cpu", tta=tta)
    frame_probs = []
    for name in tqdm(videos.video_name, desc="score", unit="video"):
        v = score_video(detector, out / "valset" / name, Sampling(frames=args.frames), "mean")
        assert not v.error, f"{name}: {v.error}"
        frame_probs.append(v.probs())
    y = videos.target.to_numpy()
    table = {}
    scores = {how: np.array([aggregate(f, how) for f in frame_probs]) for how in AGGREGATES}
    for how, p in scores.items():
        row = {"all": metrics.roc_auc(y, p)}
        for share in SHARES:
            keep = (videos.target == 0) | (videos.fake_share == share)
            row[f"fake share {share:g}"] = metrics.roc_auc(y[keep], p[keep.to_numpy()])
        if how != "mean":  # paired over videos: AUC(how) - AUC(mean), with its 95% bootstrap interval
            d = bootstrap_auc_difference(y, scores["mean"][None], p[None], n_boot=args.boot)
            row["minus mean"] = d["difference"]
            row["95% CI"] = f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
        table[how] = row
    frame_auc = metrics.roc_auc(np.repeat(y, [len(f) for f in frame_probs]), np.concatenate(frame_probs))
    shown = pd.DataFrame(table).T
    print(
        f"\nvideo-level ROC-AUC, {len(videos)} videos ({(y == 0).sum()} real, {(y == 1).sum()} fake) of "
        f"{args.frames} frames, model {args.model}, tta {', '.join(tta) or 'none'}:"
    )
    print(shown.to_string(float_format=lambda v: f"{v:.4f}", na_rep=""))
    print(f"(each frame alone, labelled by its video: {frame_auc:.4f})")
    write_json(
        args.results,
        {
            "videos": len(videos),
            "frames": args.frames,
            "model": args.model,
            "tta": list(tta),
            "auc": table,
            "frame_auc_by_video_label": frame_auc,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
