"""`ffdi explain`: where a detector sees fake evidence, as overlays of class activation maps (ffdi.inference.cams).

    ffdi explain IMG... --out-dir DIR [--model M] [--tta VIEW...] [--layer NAME] [--method layercam]

Per image, DIR/<name>.png shows the image as the model sees it (decoded, resized, cropped)
beside the map of class 1 (fake) laid over it, with its p_fake in the title; DIR/scores.csv
lists path, p_fake, label, error and overlay. A video (ffdi.inference.video) gets DIR/<name>.png: a strip of
its --top most suspicious sampled frames, each with its map, time and p_fake; its row's p_fake is
the video's, as `ffdi score` gives it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ffdi.cli import detector_kit
from ffdi.errors import BadImage, FfdiError, user_error_message
from ffdi.files import write_csv
from ffdi.schema import CAM_METHODS


def label_of(p: float, threshold: float) -> str:
    return "fake" if p >= threshold else "real"


def overlay_names(paths: Sequence[str]) -> list[str]:
    """<stem>.png per image, made unique where two images share a stem."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = Path(p).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = detector_kit.make_parser(
        "ffdi explain",
        "Overlays of where the detector sees fake evidence (a class activation map of class fake),\n"
        "one PNG per image, and DIR/scores.csv: path, p_fake, label, error, overlay. The map is\n"
        "taken on the deepest stage whose map is at least 8x8 at the model's image size (or --layer).",
        detector_kit.exit_status_help(faces=False) + "\n" + detector_kit.VIDEO_HELP,
    )
    ap.add_argument("paths", nargs="+", metavar="IMG", help="image files, videos, folders, or quoted globs")
    ap.add_argument("--out-dir", required=True, help="folder for the overlays and scores.csv")
    ap.add_argument(
        "--layer",
        default=None,
        help="the module to map, e.g. layer3 (default: the deepest stage with a map of at least 8x8)",
    )
    ap.add_argument(
        "--method",
        choices=list(CAM_METHODS),
        default="layercam",
        help="layercam (default: faithful on mid-level stages) or gradcam (classic Grad-CAM)",
    )
    detector_kit.add_video_arguments(ap)
    ap.add_argument(
        "--top",
        type=int,
        default=4,
        metavar="K",
        help="a video's strip shows its K most suspicious sampled frames (default: %(default)s)",
    )
    detector_kit.add_model_arguments(ap)
    try:
        args = ap.parse_args(argv)
        return run(args)
    except FfdiError as e:
        print(f"error: {user_error_message(e)}", file=sys.stderr)
        return detector_kit.EXIT_ERROR


def run(args) -> int:
    # Imported once the arguments are parsed: `ffdi explain --help` answers without loading torch.
    from itertools import islice

    import pandas as pd
    import torch
    from tqdm import tqdm

    from ffdi.inference.cams import Explainer, save_overlay, save_strip

    if args.batch_size < 1:
        raise detector_kit.UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    args.threshold = detector_kit.default_threshold(args.threshold)
    if args.top < 1:
        raise detector_kit.UsageError(f"--top must be at least 1, got {args.top}")
    paths = detector_kit.expand_paths(args.paths)
    sampling, aggregate = detector_kit.video_defaults(args.frames, args.fps, args.aggregate)
    tta, tta_source = detector_kit.default_tta(args.tta)
    detector = detector_kit.load_detector(args.model, args.device, tta)
    explainer = Explainer(detector, args.layer, args.method)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    from ffdi.inference.video import is_video, score_video

    records = []
    for path, name in zip(paths, overlay_names(paths)):
        if not is_video(path):
            continue
        v = score_video(detector, path, sampling, aggregate, batch_size=args.batch_size, name=path, keep_top=args.top)
        if v.error:
            records.append({"path": path, "p_fake": None, "label": "", "error": v.error, "overlay": ""})
            continue
        cams = explainer.cams(torch.stack([px for _, _, px in v.top]))
        label = label_of(v.score, args.threshold)
        save_strip(
            v.top,
            cams,
            f"{Path(path).name}: p_fake {v.score:.4f} ({label}, {aggregate} of "
            f"{v.frames_scored} frames); the {len(v.top)} most suspicious",
            out_dir / name,
            explainer.title,
        )
        records.append({"path": path, "p_fake": v.score, "label": label, "error": "", "overlay": str(out_dir / name)})
    names = iter([(p, n) for p, n in zip(paths, overlay_names(paths)) if not is_video(p)])
    with tqdm(
        total=sum(not is_video(p) for p in paths),
        desc="explain",
        unit="img",
        mininterval=1.0,
        file=sys.stderr,
        leave=False,
    ) as bar:
        while chunk := list(islice(names, args.batch_size)):
            pixels, kept = [], []
            for path, name in chunk:
                try:
                    pixels.append(detector.preprocess(path))
                    kept.append((path, name))
                except (BadImage, OSError) as e:
                    records.append(
                        {
                            "path": path,
                            "p_fake": None,
                            "label": "",
                            "error": detector_kit.reason(e, path),
                            "overlay": "",
                        }
                    )
            if kept:
                batch = torch.stack(pixels)
                probs, maps = explainer.explain(batch)
                for (path, name), px, p, cam in zip(kept, batch.numpy(), probs, maps):
                    label = label_of(p, args.threshold)
                    save_overlay(
                        px, cam, f"{Path(path).name}: p_fake {p:.4f} ({label})", out_dir / name, explainer.title
                    )
                    records.append(
                        {"path": path, "p_fake": float(p), "label": label, "error": "", "overlay": str(out_dir / name)}
                    )
            bar.update(len(chunk))
    order = {p: i for i, p in enumerate(paths)}
    frame = pd.DataFrame(
        sorted(records, key=lambda r: order[r["path"]]), columns=["path", "p_fake", "label", "error", "overlay"]
    )
    write_csv(out_dir / "scores.csv", frame)
    errors = int(frame.p_fake.isna().sum())
    print(
        f"explained {len(frame) - errors} of {len(paths)} files -> {out_dir}/ (scores.csv, one PNG each); "
        f"{errors} could not be read; {explainer.title} of class fake on {explainer.layer}",
        file=sys.stderr,
    )
    print(detector_kit.describe_detector(detector, tta_source), file=sys.stderr)
    return detector_kit.EXIT_SOME_FAILED if errors else detector_kit.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
