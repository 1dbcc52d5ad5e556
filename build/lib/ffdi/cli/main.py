"""The `ffdi` command: picks the subcommand, whose module (ffdi.cli.<command>) parses its own arguments.

User errors (bad params, data, weights, tracking address) print one clear line and exit 1,
not a traceback. The subcommand's module is imported only once it is chosen, so `ffdi --help`
loads neither torch nor MLflow.
"""

from __future__ import annotations

import argparse
import sys

from ffdi.errors import FfdiError, user_error_message


def main(argv: list[str] | None = None) -> int:
    """`ffdi <command> ...`; each command's module parses its own arguments."""
    commands = {
        "compare": ("ffdi.cli.compare", "compare the runs of an MLflow experiment"),
        "generalisation": ("ffdi.cli.generalisation", "leave-one-manipulation-out experiments and their tables"),
        "serve": ("ffdi.cli.serve", "serve a logged detector over HTTP (mlflow models serve)"),
        "score": ("ffdi.cli.score", "P(fake) for images and videos (files, folders, globs), to CSV or JSON"),
        "explain": ("ffdi.cli.explain", "overlays of where a detector sees fake evidence (LayerCAM or Grad-CAM)"),
    }
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(f"ffdi {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        ap = argparse.ArgumentParser(
            prog="ffdi",
            description="Deepfake image detection: train with `dvc repro`, "
            "then use the trained detector with these commands.",
        )
        ap.add_argument("command", choices=list(commands), help="; ".join(f"{k}: {v[1]}" for k, v in commands.items()))
        ap.add_argument("--version", action="store_true", help="print ffdi's version and exit")
        ap.parse_args(argv[:1])
        return 2
    import importlib

    module = importlib.import_module(commands[argv[0]][0])
    try:
        return module.main(argv[1:])
    except FfdiError as e:
        print(f"error: {user_error_message(e)}", file=sys.stderr)
        return 1


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("ffdi")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
