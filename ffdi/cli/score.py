"""`ffdi score`: P(fake) for image files, videos, folders and globs, with a trained detector.

    ffdi score PATH... [--model models/model.pt] [--out results.csv|results.json] [--faces]
                       [--frames K | --fps F] [--aggregate mean|max|topk:K] [--per-frame frames.csv]

One row per file: path, p_fake, label, error (and face_box with --faces). A file that cannot
be read gets a row with the reason and no score; it does not stop the run. Images are decoded,
scored and written one batch at a time, so memory stays flat however many files there are.
A video's row (ffdi.inference.video) holds the aggregate of its sampled frames' P(fake) as p_fake, and
frames_scored, frames_without_face and the aggregate used; --per-frame writes each frame's.
Without --tta the test-time views are those of ./params.yaml's predict.tta, the ones the
submission was predicted with, so the same image gets the same number as in submission.csv.

The options, path expansion, model loading and exit statuses come from ffdi.cli.detector_kit, shared
with `ffdi explain`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO

from ffdi.cli.detector_kit import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOME_FAILED,
    VIDEO_HELP,
    UsageError,
    add_model_arguments,
    add_video_arguments,
    default_threshold,
    default_tta,
    describe_detector,
    exit_status_help,
    expand_paths,
    load_detector,
    make_parser,
    reason,
    video_defaults,
)
from ffdi.errors import BadImage, FfdiError

# --- scoring ---------------------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    p_fake: float | None = None
    error: str = ""
    face_box: tuple[int, int, int, int] | None = None
    video: object | None = None  # a video's ffdi.inference.video.VideoScore: its frames and aggregate

    def label(self, threshold: float) -> str:
        if self.p_fake is None:
            return ""
        return "fake" if self.p_fake >= threshold else "real"


def score_rows(detector, paths: Iterable[str], batch_size: int = 64, faces=None) -> Iterator[Row]:
    """One Row per path, in order, produced a batch at a time.

    Pulls `batch_size` paths, decodes them, scores the readable ones in one forward pass and
    yields their rows before reading on: at most one batch of decoded images is ever held.
    faces: a `ffdi.inference.faces.FaceCropper`; each image is then scored on the crop of its largest face.
    P(fake) is the view-averaged softmax, exactly as `Detector.score` and the submission compute it.
    """
    it = iter(paths)
    while True:
        chunk = list(islice(it, batch_size))
        if not chunk:
            return
        rows = [Row(p) for p in chunk]
        pixels, kept = [], []
        for row in rows:
            try:
                if faces is None:
                    pixels.append(detector.preprocess(row.path))
                else:
                    crop, row.face_box = faces.crop_file(row.path)
                    pixels.append(detector.preprocess(crop))
                kept.append(row)
            except (BadImage, OSError) as e:  # includes faces.NoFace, a BadImage
                row.error = reason(e, row.path)
        if kept:
            for row, p in zip(kept, detector.prob_batch(pixels)):
                row.p_fake = float(p)
        del pixels
        yield from rows


def score_files(
    detector, paths: Iterable[str], *, batch_size: int = 64, faces=None, sampling=None, aggregate: str = "mean"
) -> Iterator[Row]:
    """score_rows for images, and one Row per video (ffdi.inference.video.score_video), in the order given."""
    from itertools import groupby

    from ffdi.inference.video import is_video, score_video

    for videos, group in groupby(paths, key=is_video):
        if not videos:
            yield from score_rows(detector, group, batch_size, faces)
            continue
        for path in group:
            v = score_video(detector, path, sampling, aggregate, batch_size=batch_size, faces=faces, name=path)
            yield Row(path, v.score, v.error, video=v)


# --- output ----------------------------------------------------------------------------------------

COLUMNS = ["path", "p_fake", "label", "error"]
VIDEO_COLUMNS = ["frames_scored", "frames_without_face", "aggregate"]
FRAME_COLUMNS = ["path", "time", "p_fake", "label", "error"]


class RowWriter:
    """Writes rows as they come: CSV (a file or stdout) or a JSON list. A file is written
    atomically: the old one stays until the run has finished."""

    def __init__(self, stream: IO[str], fmt: str, threshold: float, faces: bool, videos: bool = False):
        self.stream, self.fmt, self.threshold = stream, fmt, threshold
        self.columns = COLUMNS + (["face_box"] if faces else []) + (VIDEO_COLUMNS if videos else [])
        self.first = True
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            self.csv.writerow(self.columns)
        else:
            stream.write("[")

    def write(self, row: Row) -> None:
        label = row.label(self.threshold)
        if self.fmt == "csv":
            p = "" if row.p_fake is None else f"{row.p_fake:.8f}"
            values = [row.path, p, label, row.error]
            if "face_box" in self.columns:
                values.append("" if row.face_box is None else " ".join(str(v) for v in row.face_box))
            if "aggregate" in self.columns:
                v = row.video
                values += ["", "", ""] if v is None else [v.frames_scored, v.frames_without_face, v.aggregate]
            self.csv.writerow(values)
        else:
            record = {"path": row.path, "p_fake": row.p_fake, "label": label or None, "error": row.error or None}
            if "face_box" in self.columns:
                record["face_box"] = list(row.face_box) if row.face_box is not None else None
            if "aggregate" in self.columns:
                v = row.video
                record.update(
                    dict.fromkeys(VIDEO_COLUMNS)
                    if v is None
                    else {
                        "frames_scored": v.frames_scored,
                        "frames_without_face": v.frames_without_face,
                        "aggregate": v.aggregate,
                    }
                )
            self.stream.write(("\n  " if self.first else ",\n  ") + json.dumps(record))
            self.first = False

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if not self.first else "]\n")
        self.stream.flush()


def write_frames(w, row: Row, threshold: float, faces: bool) -> None:
    """--per-frame: each sampled frame of a video, with its time in seconds and P(fake)."""
    for f in row.video.frames:
        p = "" if f.p_fake is None else f"{f.p_fake:.8f}"
        label = "" if f.p_fake is None else ("fake" if f.p_fake >= threshold else "real")
        box = [" ".join(map(str, f.face_box)) if f.face_box else ""] if faces else []
        w.writerow([row.path, f"{f.time:.6f}", p, label, f.error, *box])


def output_format(out: str | None) -> str:
    if out is None or out == "-":
        return "csv"
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise UsageError(f"--out {out}: give a .csv or .json file (or leave --out out to print CSV)")
    return suffix[1:]


# --- the command -----------------------------------------------------------------------------------


@dataclass
class Summary:
    scored: int = 0
    fake: int = 0
    errors: int = 0
    seconds: float = 0.0

    def add(self, row: Row, threshold: float) -> None:
        if row.p_fake is None:
            self.errors += 1
        else:
            self.scored += 1
            self.fake += row.label(threshold) == "fake"


def main(argv: list[str] | None = None) -> int:
    ap = make_parser(
        "ffdi score",
        "P(fake) for image files, videos, folders (recursive) and globs, one row per file:\n"
        "  path, p_fake, label (fake/real at --threshold), error [, face_box with --faces]\n"
        "  [, frames_scored, frames_without_face, aggregate where there are videos]\n"
        "Unreadable files get a row with the reason and an empty p_fake; the run goes on.",
        exit_status_help(faces=True) + "\n" + VIDEO_HELP,
    )
    ap.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, videos, folders, or quoted globs ('imgs/**/*.jpg')"
    )
    ap.add_argument(
        "--out",
        default=None,
        help="results.csv or results.json, written atomically; default: CSV on stdout, the summary on stderr",
    )
    ap.add_argument(
        "--faces",
        action="store_true",
        help="score the largest face of each image (MTCNN), cropped as the training images are framed; "
        "an image with no face gets a row saying so",
    )
    add_video_arguments(ap)
    ap.add_argument(
        "--per-frame",
        default=None,
        metavar="FILE",
        help="a CSV of every sampled video frame: path, time (s), p_fake, label, error",
    )
    add_model_arguments(ap, ensemble=True)
    try:
        args = ap.parse_args(argv)
        return run(args)
    except FfdiError as e:
        from ffdi.errors import user_error_message

        print(f"error: {user_error_message(e)}", file=sys.stderr)
        return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    fmt = output_format(args.out)
    args.threshold = default_threshold(args.threshold)
    paths = expand_paths(args.paths)
    from ffdi.inference.video import is_video

    videos = sum(map(is_video, paths))
    sampling, aggregate = video_defaults(args.frames, args.fps, args.aggregate)
    if args.per_frame is not None and Path(args.per_frame).suffix.lower() != ".csv":
        raise UsageError(f"--per-frame {args.per_frame}: give a .csv file")
    tta, tta_source = default_tta(args.tta)
    detector = load_detector(args.model, args.device, tta)
    faces = None
    if args.faces:
        from ffdi.inference.faces import FaceCropper

        faces = FaceCropper(device=detector.device)

    summary = Summary()
    t0 = time.perf_counter()
    to_file = args.out not in (None, "-")

    def write_all(stream: IO[str], frames: IO[str] | None) -> None:
        writer = RowWriter(stream, fmt, args.threshold, faces is not None, videos > 0)
        frame_writer = None
        if frames is not None:
            frame_writer = csv.writer(frames, lineterminator="\n")
            frame_writer.writerow(FRAME_COLUMNS + (["face_box"] if faces is not None else []))
        with tqdm(total=len(paths), desc="score", unit="file", mininterval=1.0, file=sys.stderr, leave=False) as bar:
            for row in score_files(
                detector, paths, batch_size=args.batch_size, faces=faces, sampling=sampling, aggregate=aggregate
            ):
                writer.write(row)
                if frame_writer is not None and row.video is not None:
                    write_frames(frame_writer, row, args.threshold, faces is not None)
                summary.add(row, args.threshold)
                bar.update(1)
        writer.close()

    from contextlib import ExitStack

    from ffdi.files import atomic_path

    with ExitStack() as stack:
        frames = None
        if args.per_frame is not None:
            tmp_frames = stack.enter_context(atomic_path(args.per_frame))
            frames = stack.enter_context(open(tmp_frames, "w", newline=""))
        if to_file:
            tmp = stack.enter_context(atomic_path(args.out))
            write_all(stack.enter_context(open(tmp, "w", newline="")), frames)
        else:
            write_all(sys.stdout, frames)
    summary.seconds = time.perf_counter() - t0

    where = f" -> {args.out}" if to_file else ""
    what = (
        "images"
        if not videos
        else f"files ({len(paths) - videos} images, {videos} videos of {sampling.describe()}"
        f", {aggregate} of their frames)"
    )
    print(
        f"scored {summary.scored} of {len(paths)} {what}{where}: {summary.fake} fake, "
        f"{summary.scored - summary.fake} real at threshold {args.threshold}; "
        f"{summary.errors} could not be scored ({summary.seconds:.1f} s)",
        file=sys.stderr,
    )
    print(describe_detector(detector, tta_source), file=sys.stderr)
    return EXIT_SOME_FAILED if summary.errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
