"""The command line: `stage_main` for the DVC stages, and the `ffdi` command.

User errors (bad params, data, weights, tracking address) print one clear line and exit 1,
not a traceback. SIGTERM (a scheduler's or `kill`'s stop) is handled like Ctrl-C: the MLflow
run is marked KILLED and the last complete epoch stays saved for the rerun. This module
imports nothing heavy, so `sample` and `prepare` don't load the training stack to reach it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, Optional

from ffdi.errors import FfdiError


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def user_error_message(e: BaseException) -> str:
    message = str(e).strip()
    if "Original Traceback" in message:  # raised in a DataLoader worker: keep its own last line
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def stage_main(fn: Callable, *paths: str) -> None:
    """Run a stage function on the validated params (FFDI_PARAMS, default params.yaml) and its paths.

    paths: the names of the files and folders the stage reads and writes, each given as `--name
    PATH` by the stage's cmd in dvc.yaml, where its deps and outs are listed too: the one place
    that says where things are. Run without arguments (e.g. under torchrun), the stage takes them
    from that cmd in ./dvc.yaml. fn(params, name=Path(...), ...).
    """
    signal.signal(signal.SIGTERM, _terminate)
    from ffdi.config import load_params

    stage = fn.__module__.rsplit(".", 1)[-1] if fn.__module__ != "__main__" else _main_stage()
    try:
        args = _stage_paths(stage, paths, sys.argv[1:] or (_cmd_args(stage) if paths else []))
        fn(load_params(os.environ.get("FFDI_PARAMS", "params.yaml")), **args)
    except (FfdiError, FileNotFoundError) as e:
        print(f"error: {user_error_message(e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume after the last complete epoch", file=sys.stderr)
        sys.exit(130)


def _main_stage() -> str:
    """The stage module run as __main__ (python -m stages.train): its name, 'train'."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name.rsplit(".", 1)[-1] if spec else "stage"


def _stage_paths(stage: str, names: tuple, argv: list[str]) -> dict:
    from pathlib import Path

    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"the DVC stage {stage!r}")
    for name in names:
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True)
    return vars(ap.parse_args(argv))


def _cmd_args(stage: str, dvc_yaml: str = "dvc.yaml") -> list[str]:
    """The arguments dvc.yaml's cmd passes to `python -m stages.<stage>`."""
    import shlex

    import yaml

    try:
        cmd = yaml.safe_load(open(dvc_yaml))["stages"][stage]["cmd"]
    except (OSError, KeyError, TypeError) as e:
        raise FileNotFoundError(f"{dvc_yaml}: no cmd for stage {stage!r} to take the paths from ({e}); "
                                f"run it from the project folder, or give them: python -m stages.{stage} --help")
    words = shlex.split(cmd)
    return words[words.index(f"stages.{stage}") + 1:]


def main(argv: Optional[list[str]] = None) -> int:
    """`ffdi <command> ...`; each command's module parses its own arguments."""
    commands = {
        "compare": ("ffdi.compare", "compare the runs of an MLflow experiment"),
        "generalisation": ("ffdi.generalisation", "leave-one-manipulation-out experiments and their tables"),
        "serve": ("ffdi.serving", "serve a logged detector over HTTP (mlflow models serve)"),
        "score": ("ffdi.score", "P(fake) for image files, folders and globs, to CSV or JSON"),
        "explain": ("ffdi.explain", "overlays of where a detector sees fake evidence (LayerCAM or Grad-CAM)"),
    }
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        ap = argparse.ArgumentParser(prog="ffdi", description="Deepfake image detection: train with `dvc repro`, "
                                     "then use the trained detector with these commands.")
        ap.add_argument("command", choices=list(commands), help="; ".join(f"{k}: {v[1]}" for k, v in commands.items()))
        ap.parse_args(argv[:1])
        return 2
    import importlib

    module = importlib.import_module(commands[argv[0]][0])
    try:
        return module.main(argv[1:])
    except FfdiError as e:
        print(f"error: {user_error_message(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
