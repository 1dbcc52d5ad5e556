"""Degraded copies of images, as deepfakes reach users: recompressed, blurred, resized, noisy.

A robustness curve is the val AUC when every image, real and fake alike, goes through one
degradation at one severity before the Detector sees it. The degradation acts on the image as
stored (a full decode, no draft), and its result then goes through exactly the Detector's own
decoding and preprocessing: a JPEG-recompressed image is decoded from its new bytes as a file
would be. Everything is deterministic: the only random one, `noise`, is seeded from the image's
name and the severity, so results do not depend on order, batch size or loader workers.

Severities are written `kind:severity` in eval.degradations (kinds and ranges: config.DEGRADATIONS):
- `jpeg:Q`      re-encode as JPEG at quality Q (lower is worse);
- `webp:Q`      re-encode as (lossy) WebP at quality Q;
- `social:Q`    what an upload to a social network does: halve the size (bicubic), then JPEG at
                quality Q, and leave it at that size (the Detector resizes it as any image);
- `blur:S`      Gaussian blur, sigma S px;
- `downscale:F` shrink by F (0 < F < 1) and enlarge back to the original size (bicubic);
- `resize:P`    resize so the shorter side is P px, and leave it so: the Detector then resizes it
                to its own input size, as it would any image of that size;
- `noise:S`     add Gaussian noise of standard deviation S (in 8-bit levels).

A chain of operations is one kind with one severity (`social`), not a syntax such as
`downscale:0.5+jpeg:70`: each kind is one curve over one number, so it stays one CSV of
reports/evaluate/robustness/ with `severity` on its x axis, and one metric name part
(`robustness.social.70`, `robust_social_70_auc`) with no character that DVC or MLflow splits on or refuses.

Under each degradation, as on clean val, each manipulation's fakes are also measured against all
real images: `robustness.<kind>.<severity>.auc_<manipulation>`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset

from ffdi.config import AugmentConfig, parse_degradation
from ffdi.data.transforms import build_uint8_transform, load_image
from ffdi.evaluation import metrics
from ffdi.inference.detector import Detector, Scores

# Kinds whose severity gets milder as the number grows (quality, scale, size): curves run mild -> severe.
MILDER_WHEN_LARGER = {"jpeg", "webp", "social", "downscale", "resize"}


@dataclass(frozen=True)
class Degradation:
    kind: str
    severity: float

    @classmethod
    def parse(cls, spec: str) -> Degradation:
        return cls(*parse_degradation(spec))

    @property
    def key(self) -> str:
        """The severity as a metric-name part: 70, 0p5 (no dots, which DVC and MLflow both split on)."""
        return severity_key(self.severity)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.severity:g}"

    def apply(self, img: Image.Image, name: str = ""):
        """The degraded image: a PIL image, or the encoded bytes for `jpeg`, `webp` and `social`
        (decoded like a file later)."""
        if self.kind in ("jpeg", "webp"):
            return encode(img, self.kind, int(self.severity))
        if self.kind == "social":
            w, h = img.size
            return encode(
                img.resize((max(1, round(w / 2)), max(1, round(h / 2))), Image.BICUBIC), "jpeg", int(self.severity)
            )
        if self.kind == "blur":
            return img.filter(ImageFilter.GaussianBlur(self.severity))
        if self.kind == "downscale":
            w, h = img.size
            small = img.resize((max(1, round(w * self.severity)), max(1, round(h * self.severity))), Image.BICUBIC)
            return small.resize((w, h), Image.BICUBIC)
        if self.kind == "resize":
            w, h = img.size
            scale = self.severity / min(w, h)
            return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        if self.kind == "noise":
            rng = np.random.default_rng([zlib.crc32(name.encode()), zlib.crc32(self.label.encode())])
            noisy = np.asarray(img, np.float32) + rng.normal(0.0, self.severity, (img.size[1], img.size[0], 3))
            return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
        raise ValueError(f"unknown degradation {self.kind!r}")  # pragma: no cover - parse() checks kinds


def encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper(), quality=quality)
    return buf.getvalue()


def severity_key(value: float) -> str:
    return f"{value:g}".replace(".", "p").replace("-", "m")


def parse_all(specs: Sequence[str]) -> list[Degradation]:
    """Grouped by kind (in order of first mention), each kind's severities mild -> severe."""
    parsed = [Degradation.parse(s) for s in specs]
    kinds = list(dict.fromkeys(d.kind for d in parsed))
    return [
        d
        for kind in kinds
        for d in sorted(
            (d for d in parsed if d.kind == kind), key=lambda d: d.severity, reverse=kind in MILDER_WHEN_LARGER
        )
    ]


class DegradedImages(Dataset):
    """Item i: every degradation of image i as uint8 (K, H, W, 3), ready for `Detector.view_log_probs`.

    Each image is decoded once, in full, and degraded K ways. The preprocessing after that is
    `Detector.preprocess`'s: encoded bytes (JPEG, WebP) are decoded as a file would be (JPEG's draft
    decode included), and an image goes through the same resize and centre crop.
    """

    def __init__(
        self, paths: Sequence[str], names: Sequence[str], degradations: Sequence[Degradation], augment: AugmentConfig
    ):
        self.paths, self.names = list(paths), list(names)
        self.degradations = list(degradations)
        self.resize = augment.resize
        self.transform = build_uint8_transform(augment, train=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_image(self.paths[i])
        views = []
        for d in self.degradations:
            out = d.apply(img, self.names[i])
            if isinstance(out, bytes):
                out = load_image(io.BytesIO(out), self.resize, name=f"{self.paths[i]} after {d.label}")
            views.append(self.transform(out))
        return torch.stack(views), i


def score_degraded(
    detector: Detector,
    manifest: pd.DataFrame,
    degradations: Sequence[Degradation],
    batch_size: int = 128,
    workers: int = 0,
) -> dict[Degradation, np.ndarray]:
    """P(fake) of every image of `manifest` under each degradation, from the Detector's forward pass.

    A forward batch holds about `batch_size` images: batch_size // K originals, K degradations each.
    """
    degradations = list(degradations)
    if not degradations or manifest.empty:
        return {d: np.zeros(0) for d in degradations}
    dataset = DegradedImages(manifest.path.tolist(), manifest.img_name.tolist(), degradations, detector.augment)
    k = len(degradations)
    loader = DataLoader(dataset, batch_size=max(1, batch_size // k), shuffle=False, num_workers=workers)
    logp = []
    for x, _ in loader:
        b = x.shape[0]
        out = detector.view_log_probs(x.reshape(b * k, *x.shape[2:]))  # (B*K, V, 2)
        logp.append(out.reshape(b, k, *out.shape[1:]))
    logp = torch.cat(logp)  # (N, K, V, 2)
    none = np.full(len(manifest), -1)
    return {d: Scores(logp[:, j], none, np.arange(len(manifest)), []).prob for j, d in enumerate(degradations)}


def subset(manifest: pd.DataFrame, n, seed: int = 0) -> pd.DataFrame:
    """A fixed random `n` rows with both classes in proportion (all rows when n is None or larger)."""
    if n is None or n >= len(manifest):
        return manifest
    rng = np.random.default_rng(seed)
    picked = []
    for _, rows in manifest.groupby("target", sort=True):
        share = max(1, round(n * len(rows) / len(manifest)))
        picked.append(rows.iloc[np.sort(rng.permutation(len(rows))[:share])])
    return pd.concat(picked).sort_index()


def robustness(
    manifest: pd.DataFrame,
    clean_prob: np.ndarray,
    degraded: dict[Degradation, np.ndarray],
    threshold: float = 0.5,
    fprs: Sequence[float] = (),
) -> dict[Degradation, dict[str, float]]:
    """Metrics of `manifest` under each degradation: `degraded` holds its P(fake) per degradation
    (`score_degraded`), `clean_prob` its scores undegraded.

    Per severity: roc_auc, average_precision, TPR at each FPR, accuracy at `threshold` (which a
    shift of all scores changes even where the ranking, and so the AUC, holds), the mean
    absolute change of P(fake) from the clean image, and auc_<manipulation> for each manipulation
    with fakes here (a degradation can spare one manipulation's traces and erase another's).
    """
    y = manifest.target.to_numpy()
    out = {}
    for d, prob in degraded.items():
        m = metrics.ranking_metrics(y, prob, tuple(fprs))
        m["accuracy"] = float(((prob >= threshold).astype(int) == y).mean())
        m["mean_abs_prob_change"] = float(np.abs(prob - clean_prob).mean())
        m.update(metrics.group_aucs(y, prob, manifest.group))
        out[d] = m
    return out


def predictions(
    manifest: pd.DataFrame, clean_prob: np.ndarray, degraded: dict[Degradation, np.ndarray]
) -> pd.DataFrame:
    """Per image: img_name, target, group, P(fake) clean, then one column per degradation (its label,
    e.g. `jpeg:50`): robustness_predictions.csv, from which `ffdi generalisation` bootstraps the
    degraded AUC of two variants over the same images."""
    frame = pd.DataFrame(
        {
            "img_name": manifest.img_name.to_numpy(),
            "target": manifest.target.to_numpy(),
            "group": manifest.group.to_numpy(),
            "clean": clean_prob,
        }
    )
    return frame.assign(**{d.label: prob for d, prob in degraded.items()})


def summary(results: dict[Degradation, dict[str, float]]) -> dict[str, float]:
    """degraded_mean_auc and degraded_worst_auc over the degradations: the one number the knob table
    ranks robustness by, and the floor that the default's targets are set on."""
    if not results:
        return {}
    aucs = [m["roc_auc"] for m in results.values()]
    return {"degraded_mean_auc": float(np.mean(aucs)), "degraded_worst_auc": float(np.min(aucs))}


def nested(results: dict[Degradation, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """{kind: {severity key: metrics}}, as metrics.json holds them (robustness.jpeg.70.roc_auc)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for d, m in results.items():
        out.setdefault(d.kind, {})[d.key] = m
    return out


def table(results: dict[Degradation, dict[str, float]]) -> pd.DataFrame:
    """One row per degradation: kind, severity, level (1 = mildest of its kind), then the metrics."""
    rows, level = [], {}
    for d, m in results.items():
        level[d.kind] = level.get(d.kind, 0) + 1
        rows.append({"kind": d.kind, "severity": d.severity, "level": level[d.kind], **m})
    return pd.DataFrame(rows)
