"""`ffdi serve`: serve a logged detector (ffdi.inference.served_model) over HTTP with `mlflow models serve`.

    ffdi serve [--model models:/<id> | runs:/<run id>/detector] [--port 5001] [--host 127.0.0.1]

What the server answers (the served model's own docstring says more):

    request:  POST /invocations  {"inputs": ["<base64 of an image file>", ...]}   JPEG, PNG or WebP
    response: {"predictions": [{"p_fake": 0.93, "label": "fake"}, ...]}           one per image, in order
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ffdi.errors import TrackingError
from ffdi.stage import stage_path


def latest_detector(experiment: str) -> str:
    """The models:/ URI of the newest detector logged in the experiment of the current store."""
    return _newest_detector(experiment, "", "train with tracking.log_model: true, or pass --model models:/<id>")


def workspace_detector(run_ref: Path) -> str:
    """The models:/ URI of the detector logged in the workspace's run (`run_ref`, the pipeline's
    reports/mlflow_run.json): the model that `ffdi score` and submission.csv use, whatever ran since."""
    try:
        ref = json.loads(run_ref.read_text())
        run_id, experiment = ref["run_id"], ref["experiment"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrackingError(f"{run_ref}: not a run reference written by the train stage ({e})") from None
    return _newest_detector(
        experiment,
        f" AND source_run_id = '{run_id}'",
        f"the workspace's run {run_id} ({run_ref}) has none: run evaluate with tracking.log_model: true "
        "(dvc repro), or pass --model models:/<id> or --experiment NAME for the newest one there",
    )


def _newest_detector(experiment: str, and_filter: str, remedy: str) -> str:
    import mlflow
    from mlflow.entities import LoggedModelStatus

    from ffdi.tracking.pyfunc_model import MODEL_NAME

    exp = mlflow.MlflowClient().get_experiment_by_name(experiment)
    store = mlflow.get_tracking_uri()
    if exp is None:
        raise TrackingError(f"no MLflow experiment {experiment!r} in {store}; train first (dvc repro)")
    found = mlflow.search_logged_models(
        experiment_ids=[str(exp.experiment_id)],
        filter_string=f"name = '{MODEL_NAME}'{and_filter}",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=100,
        output_format="list",
    )
    # Skip a model whose logging was interrupted. Not in the filter: MLflow 3.17's SQL store
    # keeps the status as a number, and `status = 'READY'` matches nothing.
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    if not ready:
        raise TrackingError(f"no {MODEL_NAME!r} model logged in experiment {experiment!r} of {store}; {remedy}")
    return ready[0].model_uri


def default_detector(experiment: str) -> str:
    """The workspace's detector; outside a pipeline's project (no run reference), the newest one."""
    try:
        run_ref = stage_path("evaluate", "run_ref")
    except FileNotFoundError:
        run_ref = None
    if run_ref is not None and run_ref.is_file():
        return workspace_detector(run_ref)
    print(f"note: no run reference here ({run_ref or 'no dvc.yaml'}): serving the newest detector of {experiment!r}")
    return latest_detector(experiment)


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
    ]


def serve_env(tracking: str) -> dict[str, str]:
    """The server's environment: our store (to resolve models:/), and our venv's bin on PATH,
    where MLflow looks for `uvicorn`, even when ffdi was started without activating the venv."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def curl_example(host: str, port: int, image: str = "face.jpg") -> str:
    """A command that scores one image file. The payload goes through stdin: a 100 kB image's
    base64 would exceed the kernel's limit on a single command-line argument."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/invocations"
    return (
        f'printf \'{{"inputs": ["%s"]}}\' "$(base64 -w0 {shlex.quote(image)})" | '
        f"curl -s {url} -H 'Content-Type: application/json' --data-binary @-"
    )


def example_image(params_file: Path = Path("params.yaml")) -> str:
    """An image of the project's val split, for the curl example; a placeholder if none."""
    try:
        from ffdi.config import load_params

        data = load_params(params_file).data
        with os.scandir(Path(data.root) / data.val_dir) as entries:
            for entry in entries:
                if entry.name.lower().endswith((".jpg", ".jpeg", ".png", ".webp")):
                    return os.path.relpath(entry.path)
    except (OSError, ValueError):
        pass
    return "face.jpg"


def main(argv: list[str] | None = None) -> int:
    from ffdi.config import load_params

    ap = argparse.ArgumentParser(
        prog="ffdi serve",
        description="Serve a logged detector over HTTP with "
        "`mlflow models serve`: POST base64 image files, get P(fake) back.",
    )
    ap.add_argument(
        "--model",
        help="models:/<id> or runs:/<run id>/detector (default: the detector of the workspace's run, "
        "reports/mlflow_run.json: the model ffdi score and submission.csv use)",
    )
    ap.add_argument("--experiment", help="serve the newest detector logged in this MLflow experiment instead")
    ap.add_argument("--port", type=int, default=5001, help="(default: %(default)s)")
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept requests from other machines")
    args = ap.parse_args(argv)
    # Imported once the arguments are parsed: `ffdi serve --help` answers without loading MLflow.
    import mlflow

    from ffdi.inference.served_model import MAX_IMAGES
    from ffdi.tracking import mlflow_run

    cfg = load_params(optional=True).tracking
    store = mlflow_run.tracking_uri(cfg)
    local = Path(store.removeprefix("sqlite:///"))
    if store.startswith("sqlite:///") and not local.is_file():  # opening it would create an empty one
        raise TrackingError(f"no MLflow store at {local}; run ffdi serve from the project root, after training")
    mlflow.set_tracking_uri(store)
    model = args.model or (latest_detector(args.experiment) if args.experiment else default_detector(cfg.experiment))
    command = serve_command(model, args.host, args.port)
    print(
        f"serving {model} from {store} on http://{args.host}:{args.port} (Ctrl-C stops it)\n"
        f"score an image, up to {MAX_IMAGES} per request:\n  {curl_example(args.host, args.port, example_image())}",
        flush=True,
    )  # exec drops whatever is still buffered
    os.execve(command[0], command, serve_env(store))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
