"""What `ffdi score` and `ffdi explain` share on the command line: the parser (bad arguments exit 1),
the options that pick the detector and how it scores, the files a PATH names, the defaults taken
from ./params.yaml, loading the model with errors a user can act on, the exit statuses, and the
lines that describe a failed file and the detector.

The detector and MLflow are imported inside the functions that need them, so that `ffdi --help`
and a bad argument answer without loading torch.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ffdi.errors import FfdiError

DEFAULT_MODEL = "models/model.pt"
PARAMS_FILE = "params.yaml"

# Exit statuses, shared by `ffdi score` and `ffdi explain`.
EXIT_OK = 0
EXIT_ERROR = 1  # bad arguments, no images found, model that cannot be loaded
EXIT_SOME_FAILED = 3  # some files could not be scored; each has a row saying why


def exit_status_help(faces: bool) -> str:
    """The exit statuses, as a command's help epilog; faces: the command has --faces."""
    unscored = "unreadable, or no face with --faces" if faces else "unreadable"
    return (
        "exit status:\n  0  every file was scored\n  1  bad arguments, no images found, or the model could not be "
        f"loaded\n  3  some files could not be scored ({unscored}): their rows say why\n"
    )


VIDEO_HELP = """videos (.mp4 .mov .mkv .webm .avi) are scored on sampled frames, rotated upright: --frames K
uniformly spread, or --fps F; a video's p_fake aggregates its frames' (--aggregate). Defaults:
eval.video_frames and eval.video_aggregate of ./params.yaml (16 frames, mean without one).
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
    return _Parser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_model_arguments(ap: argparse.ArgumentParser, ensemble: bool = False) -> None:
    """The options that pick the detector and how it scores; the same for score and explain."""
    ap.add_argument(
        "--model",
        action="append" if ensemble else "store",
        default=None,
        help=f"checkpoint file, runs:/<run id>/<path> or models:/<model id> (default: {DEFAULT_MODEL}, "
        "written by `dvc repro`)"
        + ("; repeat it for an ensemble, whose p_fake is the mean of the models'" if ensemble else ""),
    )
    ap.add_argument(
        "--tta",
        nargs="*",
        default=None,
        metavar="VIEW",
        help="test-time views averaged with the image (hflip vflip rot90 rot180 rot270 transpose); "
        "`--tta` alone: none. Default: predict.tta of ./params.yaml, as in the submission; "
        "none without a params.yaml",
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="p_fake at or above which an image is labelled fake (default: eval.threshold of "
        "./params.yaml, as evaluate and the served model use; 0.5 without a params.yaml)",
    )


def add_video_arguments(ap: argparse.ArgumentParser, aggregate: bool = True) -> None:
    """How videos are sampled (and aggregated); the same for score and explain."""
    group = ap.add_mutually_exclusive_group()
    group.add_argument(
        "--frames",
        type=int,
        default=None,
        metavar="K",
        help="frames per video, uniformly spread (default: eval.video_frames of ./params.yaml, 16)",
    )
    group.add_argument("--fps", type=float, default=None, metavar="F", help="or F frames per second of video")
    if aggregate:
        ap.add_argument(
            "--aggregate",
            default=None,
            metavar="HOW",
            help="a video's p_fake from its frames': mean | max | topk:K, the mean of the K highest "
            "(default: eval.video_aggregate of ./params.yaml, mean)",
        )


def video_defaults(frames: int | None, fps: float | None, aggregate: str | None = None):
    """(Sampling, aggregate) from the options, else ./params.yaml's eval.video_*, as the served model uses."""
    from ffdi.config import load_params, parse_aggregate
    from ffdi.inference.video import Sampling

    cfg = load_params(PARAMS_FILE, optional=True).eval
    if fps is None and frames is None:
        frames = cfg.video_frames
    how = aggregate if aggregate is not None else cfg.video_aggregate
    parse_aggregate(how, "--aggregate" if aggregate is not None else "eval.video_aggregate")
    try:
        return Sampling(frames=frames, fps=fps), how
    except FfdiError as e:
        raise UsageError(str(e)) from None


# --- which files ---------------------------------------------------------------------------------


def image_suffixes() -> set[str]:
    """What a folder or a glob gives: image files and videos."""
    from ffdi.data.labels import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    return IMAGE_SUFFIXES | VIDEO_SUFFIXES


def expand_paths(args: Sequence[str]) -> list[str]:
    """Files named on the command line, in order, each once.

    A file is taken whatever its suffix (the user named it); a folder gives its image files and
    videos, recursively and sorted; a glob (quoted, so the shell left it alone) gives its matches,
    image files and videos only, so `'dir/*'` skips the label files beside them. A path that does not exist is
    kept, so that it gets a row saying so; a folder or glob with no images is a usage error.
    """
    suffixes = image_suffixes()
    out: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            found = _images_under(arg, suffixes)
            if not found:
                raise UsageError(f"{arg}: folder holds no image files or videos ({', '.join(sorted(suffixes))})")
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
                raise UsageError(f"{arg}: no image file matches (nor a video)")
            out += found
    return list(dict.fromkeys(out))  # the same file through a folder and a glob: once


def _images_under(folder: str, suffixes: set[str]) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if Path(f).suffix.lower() in suffixes]
    return found


# --- which model, and how it scores ----------------------------------------------------------------


def default_tta(cli_tta: list[str] | None) -> tuple[tuple[str, ...], str]:
    """The test-time views, and where they came from (for the summary)."""
    if cli_tta is not None:
        return tuple(cli_tta), "--tta"
    if not Path(PARAMS_FILE).is_file():  # not an ffdi project: the image alone, not predict.tta's default
        return (), "default: no params.yaml here"
    from ffdi.config import load_params

    return load_params(PARAMS_FILE).predict.tta, f"{PARAMS_FILE} predict.tta"


def default_threshold(cli_threshold: float | None) -> float:
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
    from ffdi.tracking.mlflow_run import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(load_params(PARAMS_FILE, optional=True).tracking))


def load_detector(model, device: str, tta: Sequence[str]):
    """Detector.load with errors a user can act on; several models: an Ensemble of them."""
    from ffdi.inference.detector import Detector, Ensemble

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


# --- what the commands print ---------------------------------------------------------------------


def reason(e: BaseException, path: str) -> str:
    """The error without the file name in front: the row names the file already."""
    message = str(e).strip()
    for prefix in (f"{path}: ", "image: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def describe_detector(detector, tta_source: str) -> str:
    views = ", ".join(detector.views[1:]) or "none"
    members = getattr(detector, "members", [detector])
    return "; ".join(
        f"model {m.source}; tta {views} ({tta_source}); device {m.device}; precision {m.precision}; "
        f"image size {m.augment.image_size}"
        for m in members
    ) + (f" (an ensemble of {len(members)}: p_fake is their mean)" if len(members) > 1 else "")
