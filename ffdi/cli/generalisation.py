"""Leave one manipulation out, as one command: how a detector does on fakes it never saw.

    ffdi generalisation [-S model.se=true] [--seeds 0 1 2] [--jobs 1] [--no-run] [--reference TEXT]
                        [--only trained-on-all leave-one-out train-on-one] [--out reports/generalisation]

1. Reads the manipulations named in the train labels (prepared/summary.json, else the label file).
2. Queues DVC experiments (`dvc exp run --queue`), for each seed and each `-S` override given
   (--only picks the kinds; by default the last two):
   - trained on all: data.holdout=[], for the knob table's clean and degraded columns;
   - leave one out: one per manipulation M, with data.holdout=[M] (trained on all the others);
   - train on one: one per manipulation M, with data.holdout = all the others (trained on M alone).
   With two manipulations the two kinds are the same experiments, queued once.
3. Runs them (`dvc queue start -j N`) and waits, polling `dvc queue status`, at most --timeout minutes.
4. Collects the finished runs from MLflow (those with data.holdout set), groups them by the params
   that differ other than data.holdout and the seed (e.g. model.se), and writes to --out:
   - report.md: per group, (a) held-out manipulation x metric (held-out AUC, AP, TPR at FPR 1e-3,
     the AUC of the seen manipulations and the overall val AUC), and (b) train on one -> test on each
     (the AUC of each manipulation's fakes against all real images); mean ± sd over seeds;
   - heldout.png, train_on_one.png (heatmaps), heldout.csv, train_on_one.csv, runs.csv;
   - with several variants, each one's held-out AUC against the reference variant's (--reference;
     default: the one run with params.yaml's values), per manipulation and averaged, with the paired
     bootstrap CI of `ffdi compare` (report.md, differences.csv, differences.png: a forest plot);
   - with runs trained on all manipulations too (`--only trained-on-all ...`), the knob table
     (ffdi.analysis.knob_table): each variant's clean val AUC, mean AUC over eval.degradations and mean held-out
     AUC against the reference's, with paired bootstrap CIs, and the variant the stated rule picks
     (knobs.csv, knobs.png: a forest plot per column, and a section of report.md);
   and logs them to an MLflow run tagged ffdi.kind=generalisation.
--no-run skips 1-3 and renders from the runs already in MLflow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ffdi.config import TrackingConfig, load_params

EXPERIMENT_KINDS = ("trained-on-all", "leave-one-out", "train-on-one")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ffdi generalisation",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    ap.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed on to `dvc exp run -S` (repeatable; 'model.se=false,true' sweeps both)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[], help="train.seed values (default: params.yaml's)")
    ap.add_argument(
        "--jobs", "-j", type=int, help="experiments at once (default: 2 where there are 2 cores or more, else 1)"
    )
    ap.add_argument("--timeout", type=float, default=480, help="minutes to wait for the queue (default: %(default)s)")
    ap.add_argument("--poll", type=float, default=10, help="seconds between looks at the queue (default: %(default)s)")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=EXPERIMENT_KINDS,
        default=list(EXPERIMENT_KINDS[1:]),
        metavar="KIND",
        help=f"the kinds of experiment to queue, of {', '.join(EXPERIMENT_KINDS)} (default: %(default)s); "
        "trained-on-all gives the knob table its clean and degraded columns",
    )
    ap.add_argument("--groups", nargs="+", help="the manipulations (default: those named in the train labels)")
    ap.add_argument("--no-run", action="store_true", help="only render from the runs already in MLflow")
    ap.add_argument("--out", type=Path, default=Path("reports/generalisation"))
    ap.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment in params.yaml)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    ap.add_argument(
        "--reference",
        help="the variant the others are compared with: text its label contains "
        "(default: the variant run with params.yaml's values)",
    )
    args = ap.parse_args(argv)
    # Imported once the arguments are parsed: `ffdi generalisation --help` answers without loading MLflow.
    from ffdi.analysis.dvc_queue import report_failures, run_experiments
    from ffdi.analysis.generalisation import default_jobs, generalisation, manipulations, planned_experiments
    from ffdi.analysis.generalisation_report import GeneralisationError

    args.jobs = default_jobs() if args.jobs is None else args.jobs
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")

    params = load_params(optional=True)
    cfg = params.tracking
    if args.experiment:
        cfg = TrackingConfig(experiment=args.experiment, uri=cfg.uri, log_model=cfg.log_model)
    failed: list[str] = []
    unfinished: list[str] = []
    if not args.no_run:
        groups = sorted(args.groups) if args.groups else manipulations(params)
        if len(groups) < 2:
            raise GeneralisationError(f"--groups: name at least two manipulations, got {groups}")
        print(f"manipulations: {', '.join(groups)}", flush=True)
        experiments = planned_experiments(
            groups,
            seeds=args.seeds,
            overrides=args.overrides,
            leave_one_out="leave-one-out" in args.only,
            train_on_one="train-on-one" in args.only,
            trained_on_all="trained-on-all" in args.only,
        )
        status = run_experiments(experiments, args.jobs, args.timeout * 60, poll_s=args.poll)
        failed = report_failures(status)
        unfinished = [n for n, s in status.items() if s not in ("Success", "Failed")]
        print(
            f"{sum(s == 'Success' for s in status.values())} succeeded, {len(failed)} failed, "
            f"{len(unfinished)} unfinished",
            flush=True,
        )
    result = generalisation(cfg, args.out, log=not args.no_log, params=params, reference=args.reference)
    print(result["markdown"])
    written = ["report.md"]
    if result["tables"]:
        written += ["heldout.png", "train_on_one.png", "heldout.csv", "train_on_one.csv", "runs.csv"]
    if result["differences"] is not None:
        written += ["differences.csv", "differences.png"]
    if result["knobs"] is not None:
        written += ["knobs.csv", "knobs.png"]
    print(f"written to {args.out}/ ({', '.join(written)})")
    if failed or unfinished:
        print(
            f"error: {len(failed)} experiments failed and {len(unfinished)} did not finish; the tables leave them out",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
