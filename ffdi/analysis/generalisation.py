"""Leave one manipulation out: what `ffdi generalisation` (ffdi.cli.generalisation, where its steps are
described) queues and collects. The manipulations of the train labels, the DVC experiments to queue
for them (`planned_experiments`; ffdi.analysis.dvc_queue runs them), and `generalisation`, which renders
the finished runs' tables (ffdi.analysis.generalisation_report) and logs them to MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ffdi.analysis.generalisation_report import HOLDOUT, GeneralisationError, render
from ffdi.analysis.runs import CompareError, finished_pipeline_runs
from ffdi.config import Params, TrackingConfig
from ffdi.data.labels import read_labels
from ffdi.hardware import available_cores
from ffdi.schema import RUN_KIND_TAG
from ffdi.tracking import mlflow_run

# --- what to run ---------------------------------------------------------------------------------


def manipulations(params: Params, summary: Path = Path("prepared/summary.json")) -> list[str]:
    """The manipulations named among the train fakes: from prepare's summary when it describes
    data.root, else read from the train label file."""
    groups = None
    if summary.is_file():
        s = json.loads(summary.read_text())
        if s.get("root") == params.data.root:
            groups = sorted(s["splits"]["train"].get("fake_groups", {}))
    if groups is None:
        labels = read_labels(Path(params.data.root) / params.data.train_labels, True, params.data.group_column)
        groups = sorted({g for g, t in zip(labels.group, labels.target) if t == 1 and g})
    if len(groups) < 2:
        raise GeneralisationError(
            f"leave-one-out needs at least two manipulations named in column {params.data.group_column!r} of "
            f"{Path(params.data.root) / params.data.train_labels}; found {groups or 'none'}"
        )
    return groups


def holdout_sets(
    groups: Sequence[str], leave_one_out: bool = True, train_on_one: bool = True, trained_on_all: bool = False
) -> list[tuple]:
    """The data.holdout of each experiment, without repeats (with two manipulations, leaving one
    out is training on the other); () is trained on all, the knob table's clean and degraded columns."""
    sets = [()] if trained_on_all else []
    if leave_one_out:
        sets += [(g,) for g in groups]
    if train_on_one:
        sets += [tuple(o for o in groups if o != g) for g in groups]
    return list(dict.fromkeys(tuple(sorted(s)) for s in sets))


def exp_run_args(holdout: Sequence[str], seeds: Sequence[int], overrides: Sequence[str]) -> list[str]:
    """`dvc exp run --queue` arguments. The holdout is a JSON list: a YAML list to DVC, not a sweep."""
    args = ["exp", "run", "--queue", "-S", f"{HOLDOUT}={json.dumps(list(holdout))}"]
    if seeds:
        args += ["-S", "train.seed=" + ",".join(str(s) for s in seeds)]
    for o in overrides:
        args += ["-S", o]
    return args


def planned_experiments(
    groups: Sequence[str],
    *,
    seeds: Sequence[int],
    overrides: Sequence[str],
    leave_one_out: bool = True,
    train_on_one: bool = True,
    trained_on_all: bool = False,
) -> list[tuple[list[str], str]]:
    """Each experiment to queue: its `dvc exp run --queue` arguments, and the holdout it sets."""
    return [
        (exp_run_args(holdout, seeds, overrides), f"{HOLDOUT}={list(holdout)}")
        for holdout in holdout_sets(groups, leave_one_out, train_on_one, trained_on_all)
    ]


# --- collecting, rendering and logging ------------------------------------------------------------


def generalisation(
    cfg: TrackingConfig, out: Path, log: bool = True, params: Params | None = None, reference: str | None = None
) -> dict:
    import mlflow

    mlflow_run.setup(cfg)
    try:
        result = render(finished_pipeline_runs(cfg.experiment), out, params=params, reference=reference)
    except CompareError as e:  # no such experiment; runs evaluated on different val images
        raise GeneralisationError(str(e)) from None
    if log:
        with mlflow_run.run(cfg, run_name="generalisation"):
            mlflow.set_tags(
                {
                    RUN_KIND_TAG: "generalisation",
                    "generalisation.by": ",".join(result["keys"]),
                    "generalisation.runs": str(len(result["runs"])),
                }
            )
            mlflow.log_artifacts(str(out), artifact_path="generalisation")
    return result


def default_jobs() -> int:
    """Two at a time from 2 cores: each pipeline takes its share of the cores (hardware.CpuShare),
    and two queued on 2 cores finished in 0.78x the time of one after the other."""
    return 1 if available_cores() < 2 else 2
