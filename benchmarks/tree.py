"""A multiFFDI-shaped tree of any size, cheap on disk: hard links to a few distinct 512 px JPEGs.

    root/trainset/<md5>.jpg  root/trainset_label.txt   (img_name,target; 19% real)
    root/valset/<md5>.jpg    root/valset_label.txt     (img_path,target; 40% real; no final newline)

The distinct images come from ffdi.sample.generate (crops of real photographs and self-blended, resampled,
spliced or regenerated fakes, JPEG quality 90), so every file decodes like a multiFFDI image. Each
name is an md5, as in multiFFDI (of the split and index: the linked copies share their bytes).
Both headers of the real label files appear, and the val file lacks its final newline, as the
real one may. Used by benchmarks.efficiency and benchmarks.rehearsal.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

REAL_SHARE = {"train": 0.19, "val": 0.40}  # multiFFDI phase 1: 524,429 train (19% real), 147,363 val (40% real)
SPLITS = {"train": ("trainset", "trainset_label.txt", "img_name"), "val": ("valset", "valset_label.txt", "img_path")}


def distinct_images(cache: Path, n: int = 400, size: int = 512, workers: int | None = None) -> dict[int, list[Path]]:
    """n generated JPEGs of `size` px under cache (kept between runs), by target: {0: [...], 1: [...]}."""
    folder = cache / f"distinct-{n}-{size}"
    labels = folder / "trainset_label.txt"
    if not labels.is_file():
        from ffdi.config import SampleConfig
        from ffdi.sample.generate import generate

        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        # n_val=1: a SampleConfig, validated like params.yaml's, needs a val image; it goes unused.
        generate(
            SampleConfig(n_train=n, n_val=1, n_test=0, size=size, jpeg_quality=90, fake_fraction=0.5),
            folder,
            workers=workers or len(os.sched_getaffinity(0)),
        )
        print(f"generated {n} distinct {size} px JPEGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    # csv, not ffdi.data.dataset: the rehearsal's driver stays free of torch, so that its children's peak
    # memory (which starts from the parent's at the fork) is their own.
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    return {t: [folder / "trainset" / r["img_name"] for r in rows if int(r["target"]) == t] for t in (0, 1)}


def write_tree(root: Path, sizes: dict[str, int], distinct: dict[int, list[Path]]) -> dict[str, int]:
    """Hard-link sizes[split] images per split into root, with label files; returns the counts.

    An existing tree of the same sizes is kept (the label files are written last, so their
    presence means the tree is whole).
    """
    root = Path(root)
    stamp = root / ".tree"
    want = ",".join(f"{s}={sizes[s]}" for s in sorted(sizes))
    if stamp.is_file() and stamp.read_text() == want:
        return dict(sizes)
    shutil.rmtree(root, ignore_errors=True)
    for split, n in sizes.items():
        folder_name, label_name, header = SPLITS[split]
        folder = root / folder_name
        folder.mkdir(parents=True)
        n_real = round(n * REAL_SHARE[split])
        rows = [f"{header},target"]
        for i in range(n):
            target = int(i % 100 >= round(100 * REAL_SHARE[split])) if n >= 100 else int(i >= n_real)
            pool = distinct[target]
            name = hashlib.md5(f"{split}/{i}".encode()).hexdigest() + ".jpg"
            os.link(pool[i % len(pool)], folder / name)
            rows.append(f"{name},{target}")
        text = "\n".join(rows)
        (root / label_name).write_text(text if split == "val" else text + "\n")
    stamp.write_text(want)
    return dict(sizes)
