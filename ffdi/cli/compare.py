"""Compare the runs of an MLflow experiment, grouped by the params that differ between them.

    ffdi compare [--experiment ffdi] [--by model.se] [--out reports/compare]

The command; what it computes and writes (per group the mean and spread over seeds, paired
bootstrap CIs of the val-AUC differences, report.md and plots) is ffdi.analysis.compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ffdi.config import TrackingConfig


def main(argv: list[str] | None = None) -> int:
    from ffdi.config import load_params

    ap = argparse.ArgumentParser(prog="ffdi compare", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment in params.yaml)")
    ap.add_argument("--by", nargs="*", help="params to group by (default: every param that differs, except the seed)")
    ap.add_argument("--out", type=Path, default=Path("reports/compare"))
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    ap.add_argument(
        "--data",
        help="the data set (a data.hash tag, or its start) whose runs to compare, where the "
        "experiment holds several (default: the latest run's)",
    )
    ap.add_argument(
        "--reference",
        help="the group the others are compared with: text its label contains "
        "(default: the group run with params.yaml's values, else the first by label)",
    )
    args = ap.parse_args(argv)
    # Imported once the arguments are parsed: `ffdi compare --help` answers without loading MLflow.
    from ffdi.analysis.compare import compare
    from ffdi.analysis.runs import CompareError

    params = load_params(optional=True)
    cfg = params.tracking
    if args.experiment:
        cfg = TrackingConfig(experiment=args.experiment, uri=cfg.uri, log_model=cfg.log_model)
    try:
        result = compare(
            cfg,
            args.out,
            args.by,
            args.boot,
            log=not args.no_log,
            data=args.data,
            params=params,
            reference=args.reference,
        )
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result["markdown"])
    print(f"written to {args.out}/ (report.md, curves.png, roc.png, summary.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
