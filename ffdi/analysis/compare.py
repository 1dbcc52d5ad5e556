"""Compare the runs of an MLflow experiment, grouped by the params that differ between them.

On small data the seed alone moves AUC by points, so a single run per variant
settles nothing. Per group this reports the mean and spread over seeds, and
for each group against the reference group a paired bootstrap confidence
interval of the val-AUC difference, resampling the same val images for both
groups. If the interval excludes 0, the gap is not image-sampling noise.

    ffdi compare [--experiment ffdi] [--by model.se] [--out reports/compare]    (the command: ffdi.cli.compare)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ffdi.analysis import plots
from ffdi.analysis.runs import (
    CompareError,
    Run,
    aligned_predictions,
    finished_pipeline_runs,
    one_data_set,
    run_histories,
)
from ffdi.config import Params, TrackingConfig, flatten
from ffdi.evaluation.metrics import rank_aucs
from ffdi.files import write_csv, write_text
from ffdi.schema import (
    EVAL_ACCURACY,
    EVAL_GROUP_WORST_AUC,
    EVAL_ROC_AUC,
    EVAL_TPR_AT_FPR,
    HELDOUT_ROC_AUC,
    RUN_KIND_TAG,
)
from ffdi.tracking import mlflow_run

# Params that vary between runs of the same variant rather than define one.
REPLICATE_KEYS = ("train.seed",)
SUMMARY_METRICS = {
    EVAL_ROC_AUC: "val AUC",
    HELDOUT_ROC_AUC: "held-out AUC",
    EVAL_GROUP_WORST_AUC: "worst-group AUC",
    EVAL_TPR_AT_FPR: "TPR@FPR",
    EVAL_ACCURACY: "accuracy",
}
# Tags that say how a run computed; runs that differ in them differ for reasons other than params.
HARDWARE_TAGS = {"hw.precision": "precision", "hw.device_name": "hardware"}


def varying_keys(runs: list[Run]) -> list[str]:
    """Params whose value differs between runs. A param absent from some runs (logged by an
    older ffdi) but the same wherever present does not split runs into groups."""
    keys = sorted(set().union(*(r.params for r in runs)))
    return [k for k in keys if k not in REPLICATE_KEYS and len({r.params[k] for r in runs if k in r.params}) > 1]


def logged(value) -> str:
    """A param value as MLflow holds it (mlflow_run.log_params)."""
    return "null" if value is None else str(value)


def reference_variant(
    keys: list[str], variants: dict[str, list[Run]], params: Params | None, reference: str | None = None
) -> str | None:
    """The variant the others are compared with: the one whose label contains `reference`, else the
    one run with params.yaml's values of the params that differ (the defaults)."""
    if reference:
        found = [label for label in variants if label == reference] or [
            label for label in variants if reference in label
        ]
        if len(found) != 1:
            raise CompareError(
                f"--reference {reference!r} matches {len(found)} variants; variants: " + "; ".join(variants)
            )
        return found[0]
    if params is None:
        return None
    defaults = flatten(params.to_dict())
    # Keys that are not params.yaml's (a stage's own record of what it did) do not decide.
    found = [
        label
        for label, rs in variants.items()
        if all(rs[0].params.get(k) == logged(defaults[k]) for k in keys if k in defaults)
    ]
    return found[0] if found else None


def group_runs(runs: list[Run], by: list[str]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        label = ", ".join(f"{k}={r.params.get(k)}" for k in by) if by else "all runs"
        groups.setdefault(label, []).append(r)
    return dict(sorted(groups.items()))


def summary_table(groups: dict[str, list[Run]]) -> pd.DataFrame:
    rows = []
    for label, runs in groups.items():
        row = {
            "group": label,
            "runs": len(runs),
            "seeds": ",".join(sorted(r.params.get("train.seed", "?") for r in runs)),
        }
        for key, name in SUMMARY_METRICS.items():
            values = np.array([r.metrics[key] for r in runs if key in r.metrics])
            row[f"{name} mean"] = values.mean() if len(values) else float("nan")
            row[f"{name} sd"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def mean_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """The mean over runs (rows of `probs`) of their ROC-AUC."""
    return float(rank_aucs(y, probs).mean())


def bootstrap_auc_difference(
    y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Paired bootstrap of mean-over-runs AUC(b) - AUC(a), resampling val images with replacement.

    Both groups see the same resampled images, so image difficulty cancels out.
    """
    return paired_bootstrap(
        lambda idx: mean_auc(y[idx], probs_b[:, idx]) - mean_auc(y[idx], probs_a[:, idx]), len(y), n_boot, level, seed
    )


def paired_bootstrap(stat, n: int, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """`stat(idx)` on all n images and on n_boot resamples of them (with replacement), with its
    percentile CI. A resample where stat raises ValueError (an AUC without both classes) is drawn again."""
    rng = np.random.default_rng(seed)
    diffs = []
    while len(diffs) < n_boot:
        try:
            diffs.append(stat(rng.integers(0, n, n)))
        except ValueError:
            continue
    diffs = np.array(diffs)
    alpha = (1 - level) / 2
    return {
        "difference": float(stat(np.arange(n))),
        "ci_low": float(np.quantile(diffs, alpha)),
        "ci_high": float(np.quantile(diffs, 1 - alpha)),
        "share_below_zero": float((diffs < 0).mean()),
        "n_boot": n_boot,
        "level": level,
    }


def hardware_warnings(groups: dict[str, list[Run]]) -> list[str]:
    """One line per way the runs being compared differ in how they computed (precision, CPU/GPU).

    The same params give other numbers in bf16 than in fp32, and on another CPU: a gap between
    groups computed differently may be the hardware's, not the params'.
    """
    runs = [r for rs in groups.values() for r in rs]
    warnings = []
    for tag, what in HARDWARE_TAGS.items():
        values = {r.tags.get(tag, "unknown") for r in runs}
        if len(values) > 1:
            by_group = "; ".join(
                f"{label}: {', '.join(sorted({r.tags.get(tag, 'unknown') for r in rs}))}"
                for label, rs in groups.items()
            )
            warnings.append(f"runs differ in {what} ({tag}): {by_group}")
    return warnings


def heldout_rows(groups: dict[str, list[Run]], frame_groups: pd.Series) -> np.ndarray | None:
    """Real images plus the held-out manipulations' fakes, where every run held out the same ones."""
    import ast

    holdouts = {r.params.get("data.holdout", "[]") for rs in groups.values() for r in rs}
    if len(holdouts) != 1:
        return None
    names = ast.literal_eval(holdouts.pop())
    if not names:
        return None
    return (frame_groups.isin(names) | (frame_groups == "real")).to_numpy()


def difference_table(what: str, how: str, diffs: dict[str, dict]) -> list[str]:
    """Markdown lines: each group's AUC difference against the reference, its CI and a verdict."""
    lines = [
        "",
        f"## {what} difference against the reference group",
        "",
        how,
        "",
        "| group | reference | AUC difference | 95% CI | verdict |",
        "|---|---|---:|---|---|",
    ]
    for label, d in diffs.items():
        verdict = (
            "better" if d["ci_low"] > 0 else "worse" if d["ci_high"] < 0 else "not distinguishable (CI contains 0)"
        )
        lines.append(
            f"| {label} | {d['reference']} | {d['difference']:+.4f} "
            f"| [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | {verdict} |"
        )
    return lines


def render_markdown(
    experiment: str,
    by: list[str],
    table: pd.DataFrame,
    *,
    diffs: dict[str, dict],
    warnings: tuple = (),
    heldout_diffs: dict | None = None,
) -> str:
    lines = [
        f"# Comparison of experiment `{experiment}`",
        "",
        f"Grouped by: {', '.join(by) or '(nothing differs)'}; spread is the standard deviation over runs (seeds).",
        "",
        "| group | runs | seeds | " + " | ".join(f"{n} (mean ± sd)" for n in SUMMARY_METRICS.values()) + " |",
        "|---|---:|---|" + "---:|" * len(SUMMARY_METRICS),
    ]
    for _, row in table.iterrows():
        cells = [
            "n/a"
            if np.isnan(row[f"{n} mean"])
            else f"{row[f'{n} mean']:.4f} ± {row[f'{n} sd']:.4f}"
            if row["runs"] > 1
            else f"{row[f'{n} mean']:.4f} (1 run)"
            for n in SUMMARY_METRICS.values()
        ]
        lines.append(f"| {row['group']} | {row['runs']} | {row['seeds']} | " + " | ".join(cells) + " |")
    if (table.runs < 2).any():
        lines += ["", "A group with one run has no spread: run more seeds (`-S 'train.seed=1,2,3'`)."]
    if diffs:
        lines += difference_table(
            "Val-AUC",
            "Paired bootstrap over val images (the same resampled images for both "
            "groups); AUC averaged over each group's runs.",
            diffs,
        )
    if heldout_diffs:
        lines += difference_table(
            "Held-out-AUC",
            "The same paired bootstrap, over real images and the held-out manipulations' fakes only.",
            heldout_diffs,
        )
    if warnings:
        lines += (
            ["", "## Warning: these runs computed differently", ""]
            + [f"- {w}" for w in warnings]
            + [
                "",
                "Identical params give different numbers in another precision or on other hardware; see the README's "
                "reproducibility section for how large that spread was measured to be.",
            ]
        )
    lines += ["", "![per-epoch curves](curves.png)", "", "![ROC curves](roc.png)", ""]
    return "\n".join(lines)


def compare(
    cfg: TrackingConfig,
    out: Path,
    by: list[str] | None = None,
    n_boot: int = 1000,
    *,
    log: bool = True,
    data: str | None = None,
    params: Params | None = None,
    reference: str | None = None,
) -> dict:
    """data: the data.hash (or a prefix) of the runs to compare; default the latest run's data set.
    The reference group: the one whose label contains `reference`, else the one run with `params`'
    values (params.yaml's), else the first by label."""
    import mlflow

    mlflow_run.setup(cfg)
    runs, notes = one_data_set(finished_pipeline_runs(cfg.experiment), cfg.experiment, data)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    by = by or varying_keys(runs)
    groups = group_runs(runs, by)
    table = summary_table(groups)
    y, probs, image_groups = aligned_predictions(groups)
    first = reference_variant(by, groups, params, reference) or next(iter(groups))
    labels = [first, *(label for label in groups if label != first)]
    diffs, heldout_diffs = {}, {}
    rows = heldout_rows(groups, image_groups)
    for label in labels[1:]:
        d = bootstrap_auc_difference(y, probs[labels[0]], probs[label], n_boot=n_boot)
        diffs[label] = {"reference": labels[0], **d}
        if rows is not None:
            d = bootstrap_auc_difference(y[rows], probs[labels[0]][:, rows], probs[label][:, rows], n_boot=n_boot)
            heldout_diffs[label] = {"reference": labels[0], **d}
    warnings = hardware_warnings(groups)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    plots.plot_run_curves(run_histories(groups), out / "curves.png")
    plots.plot_run_rocs(y, probs, {label: mean_auc(y, p) for label, p in probs.items()}, out / "roc.png")
    write_csv(out / "summary.csv", table)
    markdown = render_markdown(cfg.experiment, by, table, diffs=diffs, warnings=warnings, heldout_diffs=heldout_diffs)
    write_text(out / "report.md", markdown)
    if log:
        with mlflow_run.run(cfg, run_name="compare"):
            mlflow.set_tags(
                {RUN_KIND_TAG: "compare", "compare.by": ",".join(by), "compare.runs": ",".join(r.run_id for r in runs)}
            )
            mlflow.log_artifacts(str(out), artifact_path="compare")
    return {
        "by": by,
        "table": table,
        "diffs": diffs,
        "heldout_diffs": heldout_diffs,
        "warnings": warnings,
        "markdown": markdown,
        "notes": notes,
        "runs": [r.run_id for r in runs],
    }
