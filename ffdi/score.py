"""`ffdi score`: P(fake) for image files, folders and globs, with a trained detector.

    ffdi score PATH... [--model models/model.pt] [--out results.csv|results.json] [--faces]

One row per file: path, p_fake, label, error (and face_box with --faces). A file that cannot
be read gets a row with the reason and no score; it does not stop the run. Images are decoded,
scored and written one batch at a time, so memory stays flat however many files there are.
Without --tta the test-time views are those of ./params.yaml's predict.tta, the ones the
submission was predicted with, so the same image gets the same number as in submission.csv.

The path expansion, model loading and output writing here are shared with `ffdi explain`.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional, Sequence

from ffdi.errors import BadImage, FfdiError

DEFAULT_MODEL = "models/model.pt"
PARAMS_FILE = "params.yaml"

# Exit statuses, shared by `ffdi score` and `ffdi explain`.
EXIT_OK = 0
EXIT_ERROR = 1  # bad arguments, no images found, model that cannot be loaded
EXIT_SOME_FAILED = 3  # some files could not be scored; each has a row saying why

EXIT_STATUS_HELP = """exit status:
  0  every file was scored
  1  bad arguments, no images found, or the model could not be loaded
  3  some files could not be scored (unreadable, or no face with --faces): their rows say why
"""


class UsageError(FfdiError):
    """Bad command-line arguments."""


class ModelError(FfdiError):
    """A --model that cannot be loaded."""


class _Parser(argparse.ArgumentParser):
    """argparse, but bad arguments exit 1 like every other user error (argparse's own is 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def make_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    return _Parser(prog=prog, description=description, epilog=epilog,
                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_arguments(ap: argparse.ArgumentParser, ensemble: bool = False) -> None:
    """The options that pick the detector and how it scores; the same for score and explain."""
    ap.add_argument("--model", action="append" if ensemble else "store", default=None,
                    help=f"checkpoint file, runs:/<run id>/<path> or models:/<model id> (default: {DEFAULT_MODEL}, "
                         "written by `dvc repro`)" + ("; repeat it for an ensemble, whose p_fake is the mean of "
                                                      "the models'" if ensemble else ""))
    ap.add_argument("--tta", nargs="*", default=None, metavar="VIEW",
                    help="test-time views averaged with the image (hflip vflip rot90 rot180 rot270 transpose); "
                         "`--tta` alone: none. Default: predict.tta of ./params.yaml, as in the submission; "
                         "none without a params.yaml")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="p_fake at or above which an image is labelled fake (default: eval.threshold of "
                         "./params.yaml, as evaluate and the served model use; 0.5 without a params.yaml)")


# --- which files ---------------------------------------------------------------------------------


def image_suffixes() -> set[str]:
    from ffdi.data import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def expand_paths(args: Sequence[str]) -> list[str]:
    """Files named on the command line, in order, each once.

    A file is taken whatever its suffix (the user named it); a folder gives its image files,
    recursively and sorted; a glob (quoted, so the shell left it alone) gives its matches, image
    files only, so `'dir/*'` skips the label files beside them. A path that does not exist is
    kept, so that it gets a row saying so; a folder or glob with no images is a usage error.
    """
    suffixes = image_suffixes()
    out: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            found = _images_under(arg, suffixes)
            if not found:
                raise UsageError(f"{arg}: folder holds no image files ({', '.join(sorted(suffixes))})")
            out += found
        elif os.path.exists(arg) or not glob.has_magic(arg):
            out.append(arg)
        else:
            found = []
            for match in sorted(glob.glob(arg, recursive=True)):
                if os.path.isdir(match):
                    found += _images_under(match, suffixes)
                elif Path(match).suffix.lower() in suffixes:
                    found.append(match)
            if not found:
                raise UsageError(f"{arg}: no image file matches")
            out += found
    return list(dict.fromkeys(out))  # the same file through a folder and a glob: once


def _images_under(folder: str, suffixes: set[str]) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if Path(f).suffix.lower() in suffixes]
    return found


# --- which model, and how it scores ----------------------------------------------------------------


def default_tta(cli_tta: Optional[list[str]]) -> tuple[tuple[str, ...], str]:
    """The test-time views, and where they came from (for the summary)."""
    if cli_tta is not None:
        return tuple(cli_tta), "--tta"
    if not Path(PARAMS_FILE).is_file():  # not an ffdi project: the image alone, not predict.tta's default
        return (), "default: no params.yaml here"
    from ffdi.config import load_params

    return load_params(PARAMS_FILE).predict.tta, f"{PARAMS_FILE} predict.tta"


def default_threshold(cli_threshold: Optional[float]) -> float:
    if cli_threshold is not None:
        threshold = cli_threshold
    else:
        from ffdi.config import load_params

        threshold = load_params(PARAMS_FILE, optional=True).eval.threshold
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise UsageError(f"the threshold must be a probability in [0, 1], got {threshold!r}")
    return float(threshold)


def use_project_store() -> None:
    """Point MLflow at this project's store (tracking.uri, else ./mlflow.db) for runs:/ and models:/ URIs.

    Only where the current folder is an ffdi project and MLFLOW_TRACKING_URI does not say otherwise.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    if not Path(PARAMS_FILE).is_file() and not Path("mlflow.db").is_file():
        return
    import mlflow

    from ffdi.config import load_params
    from ffdi.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(load_params(PARAMS_FILE, optional=True).tracking))


def load_detector(model, device: str, tta: Sequence[str]):
    """Detector.load with errors a user can act on; several models: an Ensemble of them."""
    from ffdi.detector import Detector, Ensemble

    model = model or DEFAULT_MODEL
    if isinstance(model, (list, tuple)):
        if len(model) > 1:
            return Ensemble([load_detector(m, device, tta) for m in model])
        model = model[0]

    if model.startswith(("runs:", "models:")) or "://" in model:
        use_project_store()
    elif not Path(model).is_file():
        hint = " (train one with `dvc repro`, or pass --model)" if model == DEFAULT_MODEL else ""
        raise ModelError(f"{model}: model not found{hint}")
    try:
        return Detector.load(model, device, tta=tta)
    except FfdiError:
        raise
    except FileNotFoundError as e:
        raise ModelError(str(e)) from None
    except Exception as e:  # a file that is no checkpoint, an unknown run or model id, a missing device
        raise ModelError(f"{model}: cannot load the model ({type(e).__name__}: {str(e).strip()})") from None


# --- scoring ---------------------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    p_fake: Optional[float] = None
    error: str = ""
    face_box: Optional[tuple[int, int, int, int]] = None

    def label(self, threshold: float) -> str:
        if self.p_fake is None:
            return ""
        return "fake" if self.p_fake >= threshold else "real"


def reason(e: BaseException, path: str) -> str:
    """The error without the file name in front: the row names the file already."""
    message = str(e).strip()
    for prefix in (f"{path}: ", "image: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def score_rows(detector, paths: Iterable[str], batch_size: int = 64, faces=None) -> Iterator[Row]:
    """One Row per path, in order, produced a batch at a time.

    Pulls `batch_size` paths, decodes them, scores the readable ones in one forward pass and
    yields their rows before reading on: at most one batch of decoded images is ever held.
    faces: a `ffdi.faces.FaceCropper`; each image is then scored on the crop of its largest face.
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


# --- output ----------------------------------------------------------------------------------------

COLUMNS = ["path", "p_fake", "label", "error"]


class RowWriter:
    """Writes rows as they come: CSV (a file or stdout) or a JSON list. A file is written
    atomically: the old one stays until the run has finished."""

    def __init__(self, stream: IO[str], fmt: str, threshold: float, faces: bool):
        self.stream, self.fmt, self.threshold = stream, fmt, threshold
        self.columns = COLUMNS + (["face_box"] if faces else [])
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
            self.csv.writerow(values)
        else:
            record = {"path": row.path, "p_fake": row.p_fake, "label": label or None, "error": row.error or None}
            if "face_box" in self.columns:
                record["face_box"] = list(row.face_box) if row.face_box is not None else None
            self.stream.write(("\n  " if self.first else ",\n  ") + json.dumps(record))
            self.first = False

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if not self.first else "]\n")
        self.stream.flush()


def output_format(out: Optional[str]) -> str:
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


def describe_detector(detector, tta_source: str) -> str:
    views = ", ".join(detector.views[1:]) or "none"
    members = getattr(detector, "members", [detector])
    return "; ".join(
        f"model {m.source}; tta {views} ({tta_source}); device {m.device}; precision {m.precision}; "
        f"image size {m.augment.image_size}" for m in members) + (
        f" (an ensemble of {len(members)}: p_fake is their mean)" if len(members) > 1 else "")


def main(argv: Optional[list[str]] = None) -> int:
    ap = make_parser(
        "ffdi score",
        "P(fake) for image files, folders (recursive) and globs, one row per file:\n"
        "  path, p_fake, label (fake/real at --threshold), error [, face_box with --faces]\n"
        "Unreadable files get a row with the reason and an empty p_fake; the run goes on.",
        EXIT_STATUS_HELP,
    )
    ap.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, or quoted globs ('imgs/**/*.jpg')")
    ap.add_argument("--out", default=None,
                    help="results.csv or results.json, written atomically; default: CSV on stdout, the summary on stderr")
    ap.add_argument("--faces", action="store_true",
                    help="score the largest face of each image (MTCNN), cropped as the training images are framed; "
                         "an image with no face gets a row saying so")
    add_model_arguments(ap, ensemble=True)
    try:
        args = ap.parse_args(argv)
        return run(args)
    except FfdiError as e:
        from ffdi.cli import user_error_message

        print(f"error: {user_error_message(e)}", file=sys.stderr)
        return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    fmt = output_format(args.out)
    args.threshold = default_threshold(args.threshold)
    paths = expand_paths(args.paths)
    tta, tta_source = default_tta(args.tta)
    detector = load_detector(args.model, args.device, tta)
    faces = None
    if args.faces:
        from ffdi.faces import FaceCropper

        faces = FaceCropper(device=detector.device)

    summary = Summary()
    t0 = time.perf_counter()
    to_file = args.out not in (None, "-")

    def write_all(stream: IO[str]) -> None:
        writer = RowWriter(stream, fmt, args.threshold, faces is not None)
        with tqdm(total=len(paths), desc="score", unit="img", mininterval=1.0, file=sys.stderr,
                  leave=False) as bar:
            for row in score_rows(detector, paths, args.batch_size, faces):
                writer.write(row)
                summary.add(row, args.threshold)
                bar.update(1)
        writer.close()

    if to_file:
        from ffdi.io import atomic_path

        with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as f:
            write_all(f)
    else:
        write_all(sys.stdout)
    summary.seconds = time.perf_counter() - t0

    where = f" -> {args.out}" if to_file else ""
    print(f"scored {summary.scored} of {len(paths)} images{where}: {summary.fake} fake, "
          f"{summary.scored - summary.fake} real at threshold {args.threshold}; "
          f"{summary.errors} could not be scored ({summary.seconds:.1f} s)", file=sys.stderr)
    print(describe_detector(detector, tta_source), file=sys.stderr)
    return EXIT_SOME_FAILED if summary.errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
