"""evaluate's explain.png: the most confident mistakes and hits of a scored split, each with the class
activation map (ffdi.inference.cams) of where the detector sees fake evidence, on one figure.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ffdi.files import save_figure
from ffdi.inference.cams import Explainer, draw_map, pyplot


def gallery(
    detector,
    rows: pd.DataFrame,
    out_png,
    *,
    n: int = 4,
    threshold: float = 0.5,
    layer: str | None = None,
    method: str = "layercam",
) -> dict[str, list[str]]:
    """One PNG: the n most confident false positives, the n most confident false negatives and
    the n top true positives of a scored split, each with its map and score.

    rows: one per image with `path`, `target` (0/1) and `y_pred` (its p_fake from this detector),
    e.g. evaluate's val manifest rows that were scored. Returns the paths shown, per row of the grid.
    """
    fake = rows.target == 1
    called_fake = rows.y_pred >= threshold
    picks = {
        "false positives (real called fake)": rows[~fake & called_fake].sort_values("y_pred", ascending=False),
        "false negatives (fake called real)": rows[fake & ~called_fake].sort_values("y_pred", ascending=True),
        "true positives (fake called fake)": rows[fake & called_fake].sort_values("y_pred", ascending=False),
    }
    picks = {k: v.head(n) for k, v in picks.items()}
    shown = pd.concat(list(picks.values()))
    explainer = Explainer(detector, layer, method)
    maps = {}
    if len(shown):
        pixels = torch.stack([detector.preprocess(p) for p in shown.path])
        maps = {path: (px, cam) for path, px, cam in zip(shown.path, pixels.numpy(), explainer.cams(pixels))}

    plt = pyplot()
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 2.2 * 3 + 0.6), dpi=100, squeeze=False)
    for r, (name, chosen) in enumerate(picks.items()):
        for c in range(n):
            ax = axes[r, c]
            if c < len(chosen):
                item = chosen.iloc[c]
                draw_map(ax, *maps[item.path], f"{Path(item.path).name[:14]}\np_fake {item.y_pred:.3f}")
                continue
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        axes[r, 0].set_ylabel(name.replace(" (", "\n("), fontsize=8)
    fig.suptitle(f"{explainer.title} of class fake ({explainer.layer}), threshold {threshold}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png)
    return {k: v.path.tolist() for k, v in picks.items()}
