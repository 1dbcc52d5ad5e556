"""The tables of `ffdi generalisation`, from the finished runs that set data.holdout: per variant
(the params that differ, data.holdout and the seed excepted), (a) held-out manipulation x metric
and (b) train on one -> test on each, as mean ± sd over seeds; with several variants, each one's
held-out AUC against the reference variant's with a paired bootstrap CI; written as report.md,
heatmaps and CSVs (`render`).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ffdi.analysis import knob_table as knobs  # not to be confused with knob_table() below
from ffdi.analysis import plots
from ffdi.analysis.compare import (
    bootstrap_auc_difference,
    mean_auc,
    paired_bootstrap,
    reference_variant,
    varying_keys,
)
from ffdi.analysis.runs import Run, aligned_frames, val_predictions
from ffdi.config import Params
from ffdi.errors import FfdiError
from ffdi.evaluation.metrics import fpr_key, roc_auc
from ffdi.files import write_csv, write_text
from ffdi.schema import EVAL_GROUP_AUC, EVAL_ROC_AUC, HELDOUT, HELDOUT_ROC_AUC, SEEN

HOLDOUT = "data.holdout"
# Table (a): MLflow metric -> column.
HELDOUT_COLUMNS = {
    HELDOUT_ROC_AUC: "held-out AUC",
    f"{HELDOUT}average_precision": "held-out AP",
    f"{HELDOUT}{fpr_key(1e-3)}": "held-out TPR@FPR 1e-3",
    f"{SEEN}roc_auc": "seen AUC",
    EVAL_ROC_AUC: "val AUC (all)",
}


class GeneralisationError(FfdiError):
    pass


def holdout_of(run: Run) -> tuple:
    raw = run.params.get(HOLDOUT, "[]")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return ()
    return tuple(sorted(value)) if isinstance(value, (list, tuple)) else ()


def holdout_runs(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if holdout_of(r)]


def group_by_variant(runs: Sequence[Run]) -> tuple[list[str], dict[str, list[Run]]]:
    """Runs grouped by the params that differ between them, data.holdout and the seed excepted."""
    keys = [k for k in varying_keys(list(runs)) if k != HOLDOUT] if runs else []
    variants: dict[str, list[Run]] = {}
    for r in runs:
        label = ", ".join(f"{k}={r.params.get(k)}" for k in keys) or "all runs"
        variants.setdefault(label, []).append(r)
    return keys, dict(sorted(variants.items()))


def manipulations_of(runs: Sequence[Run]) -> list[str]:
    names = {k[len(EVAL_GROUP_AUC) :] for r in runs for k in r.metrics if k.startswith(EVAL_GROUP_AUC)}
    return sorted(names | {g for r in runs for g in holdout_of(r)})


def _stats(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"), len(values)


def variant_tables(runs: Sequence[Run]) -> dict[str, pd.DataFrame]:
    """For one variant's runs: long tables of mean, sd and run count.

    heldout: one row per (held-out manipulation, metric), from the runs that held out only it.
    train_on_one: one row per (trained on, tested on), from the runs that held out all but one.
    """
    groups = manipulations_of(runs)
    heldout_rows, cross_rows = [], []
    for g in groups:
        loo = [r for r in runs if holdout_of(r) == (g,)]
        for key, column in HELDOUT_COLUMNS.items():
            mean, sd, n = _stats([r.metrics.get(key) for r in loo])
            heldout_rows.append({"heldout": g, "metric": column, "mean": mean, "sd": sd, "runs": n})
        trained = [r for r in runs if set(holdout_of(r)) == set(groups) - {g}]
        for tested in groups:
            mean, sd, n = _stats([r.metrics.get(f"{EVAL_GROUP_AUC}{tested}") for r in trained])
            cross_rows.append({"trained_on": g, "tested_on": tested, "mean": mean, "sd": sd, "runs": n})
    return {
        "heldout": pd.DataFrame(heldout_rows, columns=["heldout", "metric", "mean", "sd", "runs"]),
        "train_on_one": pd.DataFrame(cross_rows, columns=["trained_on", "tested_on", "mean", "sd", "runs"]),
    }


def tables(runs: Sequence[Run]) -> tuple[list[str], dict[str, dict[str, pd.DataFrame]]]:
    keys, variants = group_by_variant(holdout_runs(runs))
    return keys, {label: variant_tables(rs) for label, rs in variants.items()}


def _heldout_probs(runs: Sequence[Run], group: str, frames: dict, names: list) -> np.ndarray | None:
    chosen = [r for r in runs if holdout_of(r) == (group,)]
    return np.stack([frames[r.run_id].loc[names, "y_pred"].to_numpy() for r in chosen]) if chosen else None


def mean_difference(
    y: np.ndarray,
    image_groups: np.ndarray,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """The held-out AUC difference (b - a) averaged over manipulations, with a paired bootstrap CI:
    each replicate resamples the val images once, for every manipulation and both variants alike."""

    def stat(idx: np.ndarray) -> float:
        diffs = []
        for group, (a, b) in pairs.items():
            rows = idx[(y[idx] == 0) | (image_groups[idx] == group)]
            diffs.append(mean_auc(y[rows], b[:, rows]) - mean_auc(y[rows], a[:, rows]))
        return float(np.mean(diffs))

    d = paired_bootstrap(stat, len(y), n_boot, seed=seed)
    return {k: d[k] for k in ("difference", "ci_low", "ci_high")}


def differs_from(variants: dict[str, list[Run]], reference: str):
    """label -> the params where that variant differs from the reference (params.yaml's dotted keys
    first: a stage's own record, like the served model's `tta`, repeats one of them)."""

    def short(label: str) -> str:
        mine, ref = variants[label][0].params, variants[reference][0].params
        # A param one of them lacks (logged by another ffdi version) differs in nothing: as in varying_keys.
        differ = [k for k in sorted(set(mine) & set(ref)) if k not in (HOLDOUT, "train.seed") and mine[k] != ref[k]]
        differ = [k for k in differ if "." in k] or differ
        return ", ".join(f"{k}={mine[k]}" for k in differ) or label

    return short


def reference_differences(
    variants: dict[str, list[Run]], reference: str, load=val_predictions, n_boot: int = 1000
) -> pd.DataFrame:
    """Per variant and held-out manipulation: held-out AUC (mean, sd over seeds) and its difference
    from the reference variant's, with ffdi compare's paired bootstrap CI over the same val images;
    a row `mean` per variant averages the difference over the manipulations both held out."""
    names, frames = aligned_frames([r for rs in variants.values() for r in rs], load)
    short = differs_from(variants, reference)
    first = next(iter(frames.values())).loc[names]
    y, image_groups = first.target.to_numpy(), first.group.fillna("").astype(str).to_numpy()
    groups = manipulations_of([r for rs in variants.values() for r in rs])
    reference_probs = {g: _heldout_probs(variants[reference], g, frames, names) for g in groups}
    rows = []
    for label in [reference, *(v for v in variants if v != reference)]:
        runs, pairs = variants[label], {}
        for g in groups:
            probs, ref = _heldout_probs(runs, g, frames, names), reference_probs[g]
            if probs is None:
                continue
            keep = (y == 0) | (image_groups == g)
            aucs = [roc_auc(y[keep], p[keep]) for p in probs]
            row = {
                "variant": label,
                "differs": short(label) if label != reference else "(reference)",
                "heldout": g,
                "runs": len(aucs),
                "heldout_auc": float(np.mean(aucs)),
                "sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else float("nan"),
            }
            if label != reference and ref is not None:
                d = bootstrap_auc_difference(y[keep], ref[:, keep], probs[:, keep], n_boot=n_boot)
                row.update(difference=d["difference"], ci_low=d["ci_low"], ci_high=d["ci_high"])
                pairs[g] = (ref, probs)
            rows.append(row)
        if pairs:
            rows.append(
                {
                    "variant": label,
                    "differs": short(label),
                    "heldout": "mean",
                    "runs": float("nan"),
                    "heldout_auc": float("nan"),
                    "sd": float("nan"),
                    **mean_difference(y, image_groups, pairs, n_boot),
                }
            )
    return pd.DataFrame(
        rows, columns=["variant", "differs", "heldout", "runs", "heldout_auc", "sd", "difference", "ci_low", "ci_high"]
    )


def differences_markdown(table: pd.DataFrame, reference: str) -> list[str]:
    lines = [
        f"## Against the reference: {reference}",
        "",
        "Held-out AUC: mean ± sd over seeds. Difference: from the reference's held-out AUC on the same "
        "manipulation, with the paired bootstrap 95% CI of `ffdi compare` (the val images resampled, the same "
        "resample for both). `mean`: the difference averaged over the manipulations, one resample for all. "
        "The CI covers which val images were drawn, not the seed: with one run per variant, a seed's spread "
        "can exceed it.",
        "",
        "| variant (what differs from the reference) | held out | runs | held-out AUC | difference | 95% CI "
        "| verdict |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for _, r in table.iterrows():
        auc = (
            ""
            if pd.isna(r["heldout_auc"])
            else f"{r['heldout_auc']:.4f}" + ("" if pd.isna(r["sd"]) else f" ± {r['sd']:.4f}")
        )
        if pd.isna(r["difference"]):
            diff = ci = verdict = ""
        else:
            diff, ci = f"{r['difference']:+.4f}", f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
            verdict = "better" if r["ci_low"] > 0 else "worse" if r["ci_high"] < 0 else "not distinguishable"
        runs = "" if pd.isna(r["runs"]) else str(int(r["runs"]))
        lines.append(f"| {r['differs']} | {r['heldout']} | {runs} | {auc} | {diff} | {ci} | {verdict} |")
    return lines + [""]


def matrix(long: pd.DataFrame, rows: str, cols: str, value: str = "mean") -> pd.DataFrame:
    """A long table as rows x cols, in the order the long table lists them."""
    m = long.pivot(index=rows, columns=cols, values=value)
    return m.reindex(index=list(dict.fromkeys(long[rows])), columns=list(dict.fromkeys(long[cols])))


def _cell(row) -> str:
    if row["runs"] == 0:
        return "n/a"
    if row["runs"] == 1:
        return f"{row['mean']:.4f}"
    return f"{row['mean']:.4f} ± {row['sd']:.4f}"


def _markdown_table(long: pd.DataFrame, rows: str, cols: str, corner: str) -> list[str]:
    cells = long.assign(cell=long.apply(_cell, axis=1))
    m = matrix(cells, rows, cols, "cell")
    lines = [f"| {corner} | " + " | ".join(map(str, m.columns)) + " |", "|---|" + "---:|" * len(m.columns)]
    for name, row in m.iterrows():
        lines.append(f"| {name} | " + " | ".join(row.tolist()) + " |")
    return lines


def render_markdown(
    keys: list[str],
    result: dict[str, dict[str, pd.DataFrame]],
    runs: Sequence[Run],
    differences: pd.DataFrame | None = None,
    reference: str | None = None,
) -> str:
    lines = [
        "# Generalisation to unseen manipulations",
        "",
        f"{len(runs)} finished runs with `{HOLDOUT}` set, grouped by {', '.join(keys) or '(nothing differs)'}. "
        "Each cell is the mean ± sd over runs (seeds); a cell with one run shows its value alone.",
        "",
        "- **Held out** (a): trained without one manipulation's fakes (nor did they choose the best epoch). "
        "*held-out AUC/AP/TPR*: that manipulation's val fakes against all real val images; "
        "*seen AUC*: the other manipulations' fakes against the same real images; "
        "*val AUC (all)*: every val image.",
        "- **Train on one** (b): trained on one manipulation's fakes alone (and all real images); each column "
        "is the AUC of one manipulation's val fakes against all real val images. The diagonal was seen in "
        "training; the rest were not.",
        "",
    ]
    for label, t in result.items():
        counts = t["heldout"].groupby("heldout")["runs"].max()
        lines += [f"## {label}", "", "### (a) Held-out manipulation", ""]
        lines += _markdown_table(t["heldout"], "heldout", "metric", "held out")
        lines += [
            "",
            "Runs per row: " + ", ".join(f"{g} {n}" for g, n in counts.items()),
            "",
            "### (b) Train on one, test on each (AUC)",
            "",
        ]
        if t["train_on_one"]["runs"].any():
            lines += _markdown_table(t["train_on_one"], "trained_on", "tested_on", "trained on \\ tested on")
        else:
            lines += ["No train-on-one runs (`--only leave-one-out`)."]
        lines += [""]
    if differences is not None and len(differences):
        lines += differences_markdown(differences, reference) + ["![differences](differences.png)", ""]
    commits = sorted({r.tags.get("git.commit", "unknown")[:10] for r in runs})
    if len(commits) > 1:
        lines += [f"Note: these runs come from {len(commits)} commits ({', '.join(commits)}).", ""]
    lines += ["![held out](heldout.png)", "", "![train on one](train_on_one.png)", ""]
    return "\n".join(lines)


def runs_table(runs: Sequence[Run], keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run_id": r.run_id,
                "name": r.name,
                "holdout": ",".join(holdout_of(r)),
                "seed": r.params.get("train.seed"),
                **{k: r.params.get(k) for k in keys},
                "git_commit": r.tags.get("git.commit", ""),
            }
            for r in runs
        ]
    )


def knob_table(
    runs: Sequence[Run],
    *,
    params: Params | None,
    reference: str | None,
    load=val_predictions,
    load_degraded=knobs.robustness_predictions,
    n_boot: int = 1000,
):
    """The knob table (ffdi.analysis.knob_table) of every variant with runs trained on all manipulations, grouped
    by the params that differ among all the runs; None where fewer than two variants or no reference."""
    flat = [r for r in runs if not holdout_of(r)]
    keys, variants = group_by_variant(list(runs))
    if not flat or len(variants) < 2:
        return None, None
    ref = reference_variant(keys, variants, params, reference)
    if ref is None:
        return None, None
    loo = {label: [r for r in rs if len(holdout_of(r)) == 1] for label, rs in variants.items()}
    loo = {label: rs for label, rs in loo.items() if rs}
    held = reference_differences(loo, ref, load, n_boot) if ref in loo else None
    trained_on_all = {label: [r for r in rs if not holdout_of(r)] for label, rs in variants.items()}
    table = knobs.table(
        trained_on_all,
        reference=ref,
        heldout=held,
        differs=differs_from(variants, ref),
        load_val=load,
        load_degraded=load_degraded,
        n_boot=n_boot,
    )
    return table, knobs.choose(table)


def render(
    runs: Sequence[Run],
    out: Path,
    *,
    params: Params | None = None,
    reference: str | None = None,
    load=val_predictions,
    n_boot: int = 1000,
    load_degraded=knobs.robustness_predictions,
) -> dict:
    """Write report.md, the heatmaps and CSVs for these runs to `out`; return what was written.

    With several variants, each is also compared with the reference variant (see reference_variant)
    on held-out AUC, with paired bootstrap CIs (differences.csv); `load` reads a run's val predictions.
    Where runs trained on all manipulations are there too, the knob table (ffdi.analysis.knob_table):
    knobs.csv, knobs.png.
    """
    keys, result = tables(runs)
    chosen = holdout_runs(runs)
    knob, pick = knob_table(
        runs, params=params, reference=reference, load=load, load_degraded=load_degraded, n_boot=n_boot
    )
    if not result and knob is None:
        raise GeneralisationError(
            f"no finished, evaluated run has {HOLDOUT} set: run `ffdi generalisation` without --no-run first"
        )
    out.mkdir(parents=True, exist_ok=True)
    markdown, differences, ref = "", None, None
    if knob is not None:
        write_csv(out / "knobs.csv", knob)
        plots.plot_knobs(knob, out / "knobs.png", knobs.TITLES, f"against the reference: {knob.variant.iloc[0]}")
        markdown = "\n".join(knobs.markdown(knob, pick)) + "\n"
    if result:
        differences, ref = heldout_report(
            result, keys=keys, chosen=chosen, out=out, params=params, reference=reference, load=load, n_boot=n_boot
        )
        markdown = render_markdown(keys, result, chosen, differences, ref) + "\n" + markdown
    else:
        markdown = "# Knob table\n\n" + markdown
    write_text(out / "report.md", markdown)
    return {
        "keys": keys,
        "tables": result,
        "markdown": markdown,
        "runs": chosen,
        "differences": differences,
        "reference": ref,
        "knobs": knob,
        "chosen": pick,
    }


def heldout_report(result, *, keys, chosen, out: Path, params, reference, load, n_boot):
    """The leave-one-out and train-on-one files: CSVs, heatmaps and, with several variants,
    differences.csv/png against the reference."""
    long = {
        name: pd.concat([t[name].assign(variant=label) for label, t in result.items()], ignore_index=True)
        for name in ("heldout", "train_on_one")
    }
    for name, frame in long.items():
        write_csv(out / f"{name}.csv", frame[["variant", *frame.columns[:-1]]])
    write_csv(out / "runs.csv", runs_table(chosen, keys))
    heldout = {
        label: matrix(t["heldout"], "heldout", "metric").rename_axis(index="held out", columns="")
        for label, t in result.items()
    }
    cross = {
        label: matrix(t["train_on_one"], "trained_on", "tested_on").rename_axis(index="trained on", columns="tested on")
        for label, t in result.items()
    }
    plots.plot_heatmaps(
        heldout,
        out / "heldout.png",
        title="held-out manipulation x metric, mean over runs",
        value_label="mean",
        vmin=0.0,
    )
    plots.plot_heatmaps(
        cross,
        out / "train_on_one.png",
        title="trained on one manipulation, tested on each: AUC, mean over runs",
        value_label="AUC",
    )
    differences, ref = None, None
    if len(result) > 1:
        variants = group_by_variant(chosen)[1]
        ref = reference_variant(keys, variants, params, reference)
        if ref is not None:
            differences = reference_differences(variants, ref, load, n_boot)
            write_csv(out / "differences.csv", differences)
            plots.plot_differences(differences, out / "differences.png", f"against the reference: {ref}")
    return differences, ref
