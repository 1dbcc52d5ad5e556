"""`stage_main`: how every DVC stage (stages/) runs, on the validated params and the paths of its cmd.

User errors (bad params, data, weights, tracking address) print one clear line and exit 1,
not a traceback. SIGTERM (a scheduler's or `kill`'s stop) is handled like Ctrl-C: the MLflow
run is marked KILLED and the last complete epoch stays saved for the rerun. This module
imports nothing heavy, so `sample` and `prepare` don't load the training stack to reach it;
it sits at the bottom of the layers, so that no stage imports the command line (ffdi.cli).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from ffdi.errors import FfdiError, user_error_message


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


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
        raise FileNotFoundError(
            f"{dvc_yaml}: no cmd for stage {stage!r} to take the paths from ({e}); "
            f"run it from the project folder, or give them: python -m stages.{stage} --help"
        ) from e
    words = shlex.split(cmd)
    return words[words.index(f"stages.{stage}") + 1 :]


def stage_path(stage: str, name: str, dvc_yaml: str = "dvc.yaml") -> Path:
    """The path dvc.yaml's cmd gives the stage as `--name` (e.g. the train stage's run_ref), so that tools
    outside the pipeline find its files where the pipeline put them."""
    args = _cmd_args(stage, dvc_yaml)
    flag = f"--{name.replace('_', '-')}"
    if flag not in args:
        raise FileNotFoundError(f"{dvc_yaml}: the cmd of stage {stage!r} gives no {flag}")
    return Path(args[args.index(flag) + 1])
