"""The plots of many runs, for compare and generalisation: per-epoch curves, ROC curves, heatmaps and
forest plots. Written as the plots of one evaluation are (ffdi.evaluation.plots): atomically, with
matplotlib's non-interactive backend.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ffdi.evaluation.plots import colour_cycle  # noqa: E402
from ffdi.files import save_figure  # noqa: E402


def plot_run_curves(histories: dict[str, list[dict[str, list]]], out: Path) -> None:
    """Per-epoch val AUC and loss, one line per run, one colour per group.

    histories: {group: [{'step': [...], 'val_auc': [...], 'val_loss': [...]}, ...]}.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    colours = colour_cycle()
    for i, (label, runs) in enumerate(histories.items()):
        for j, h in enumerate(runs):
            for ax, key in zip(axes, ("val_auc", "val_loss")):
                ax.plot(
                    h["step"],
                    h[key],
                    color=colours[i % len(colours)],
                    alpha=0.8,
                    label=label if j == 0 else None,
                    marker="o",
                    ms=3,
                )
    for ax, key in zip(axes, ("val AUC", "val loss")):
        ax.set(xlabel="epoch", ylabel=key, title=f"{key} per epoch, one line per run")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def plot_run_rocs(y: np.ndarray, probs: dict[str, np.ndarray], mean_aucs: dict[str, float], out: Path) -> None:
    """ROC curves on the same val images: one line per run, one colour per group."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    colours = colour_cycle()
    for i, (label, p) in enumerate(probs.items()):
        for j, run_probs in enumerate(p):
            fpr, tpr, _ = roc_curve(y, run_probs)
            ax.plot(
                fpr,
                tpr,
                color=colours[i % len(colours)],
                alpha=0.7,
                label=f"{label} (mean AUC {mean_aucs[label]:.4f})" if j == 0 else None,
            )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on val, one line per run")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def plot_heatmaps(
    tables: dict, out: Path, *, title: str, value_label: str, vmin: float = 0.5, vmax: float = 1.0
) -> None:
    """One annotated heatmap per variant, side by side: {variant: DataFrame of values (NaN: no run)}."""
    n = max(len(tables), 1)
    shapes = [t.shape for t in tables.values()] or [(1, 1)]
    rows = max(s[0] for s in shapes)
    cols = max(s[1] for s in shapes)
    fig, axes = plt.subplots(
        1, n, figsize=(1.6 + 1.25 * cols * n, 1.6 + 0.55 * rows), dpi=100, squeeze=False, layout="constrained"
    )
    image = None
    for ax, (label, frame) in zip(axes[0], tables.items()):
        values = frame.to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(
                j,
                i,
                "n/a" if np.isnan(v) else f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if np.isnan(v) or v > (vmin + vmax) / 2 else "white",
            )
        ax.set(xticks=range(values.shape[1]), yticks=range(values.shape[0]))
        ax.set_title(textwrap.fill(label, 45), fontsize=8)  # a variant's label lists its params
        ax.set_xticklabels([str(c) for c in frame.columns], rotation=30, ha="right", fontsize=8)
        ax.set_yticklabels([str(r) for r in frame.index], fontsize=8)
        ax.set(xlabel=frame.columns.name or "", ylabel=frame.index.name or "")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label=value_label, shrink=0.8)
    fig.suptitle(title)
    save_figure(fig, out)


def plot_differences(differences, out: Path, title: str) -> list[tuple[str, str, float, float, float]]:
    """A forest plot of each variant's difference from the reference: per held-out manipulation a
    dot with its CI, the mean over manipulations a diamond. Returns the (variant, held out,
    difference, low, high) plotted, top to bottom."""
    rows = differences.dropna(subset=["difference"])
    variants = list(dict.fromkeys(rows.differs))
    held = [h for h in dict.fromkeys(rows.heldout) if h != "mean"] + ["mean"]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(rows) + 0.25 * len(variants)), dpi=100, layout="constrained")
    plotted, ticks, y = [], [], 0.0
    for variant in variants:
        mine = rows[rows.differs == variant].set_index("heldout")
        for h in [h for h in held if h in mine.index]:
            r = mine.loc[h]
            mean = h == "mean"
            ax.errorbar(
                r.difference,
                -y,
                xerr=[[r.difference - r.ci_low], [r.ci_high - r.difference]],
                fmt="D" if mean else "o",
                ms=7 if mean else 4,
                capsize=2,
                color="black" if mean else colour_cycle()[held.index(h) % len(colour_cycle())],
            )
            ticks.append((-y, f"{textwrap.shorten(variant, 40)}: {h}" if mean else h))
            plotted.append((variant, h, float(r.difference), float(r.ci_low), float(r.ci_high)))
            y += 1
        y += 0.6
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
    ax.set(xlabel="held-out AUC difference from the reference, 95% CI", title=textwrap.fill(title, 90))
    save_figure(fig, out)
    return plotted


def plot_knobs(knobs, out: Path, titles: dict[str, str], title: str) -> list[tuple[str, str, float, float, float]]:
    """A forest plot per column of the knob table (ffdi.analysis.knob_table): each variant's difference from the
    reference with its 95% CI; a variant not run in a column is left out of that panel. Returns the
    (variant, column, difference, low, high) plotted."""
    rows = knobs.dropna(subset=["difference"])
    variants = [v for v in dict.fromkeys(knobs.differs) if v != "(reference)"]
    fig, axes = plt.subplots(
        1,
        len(titles),
        figsize=(5 + 3.2 * len(titles), 1.6 + 0.55 * len(variants)),
        dpi=100,
        sharey=True,
        layout="constrained",
    )
    plotted = []
    for ax, (column, name) in zip(np.atleast_1d(axes), titles.items()):
        mine = rows[rows.column == column].set_index("differs")
        for i, v in enumerate(variants):
            if v in mine.index:
                r = mine.loc[v]
                ax.errorbar(
                    r.difference,
                    -i,
                    xerr=[[r.difference - r.ci_low], [r.ci_high - r.difference]],
                    fmt="o",
                    ms=5,
                    capsize=2,
                    color="black" if r.ci_low > 0 or r.ci_high < 0 else "grey",
                )
                plotted.append((v, column, float(r.difference), float(r.ci_low), float(r.ci_high)))
        ax.axvline(0, color="grey", lw=1)
        ax.set(xlabel="difference from the reference, 95% CI", title=textwrap.fill(name, 34))
        for i, v in enumerate(variants):
            if v not in mine.index:
                ax.annotate(
                    "not run",
                    (0.5, -i),
                    xycoords=("axes fraction", "data"),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="grey",
                )
    axes[0].set_yticks([-i for i in range(len(variants))], [textwrap.fill(v, 38) for v in variants], fontsize=7)
    axes[0].set_ylim(-len(variants) + 0.5, 0.5)
    fig.suptitle(textwrap.fill(title, 120), fontsize=10)
    save_figure(fig, out)
    return plotted
