"""A small, deterministic real-vs-fake data set in the multiFFDI layout.

Real images are random square crops of real photographs that ship inside the
scikit-image and scikit-learn wheels (ffdi.sample.photos), so no download is needed.

Fakes come from the named manipulations of ffdi.sample.manipulations (`KINDS`), each leaving a
different trace, so that a detector can be tested on a manipulation it never saw in training
(leave-one-manipulation-out).

Kinds are dealt out evenly: within a split, a seeded permutation ranks the
images, the lowest `round(n * fake_fraction)` ranks are fakes, and fakes cycle
through `KINDS` by rank, so every kind is represented within one of the others.
Each image is otherwise seeded from (seed, split, index), so generation is
order-independent and reproducible. Both classes are cropped, resized, and
JPEG-encoded the same way at the same quality and size, so file format, size or
quality give no shortcut. File names are the md5 of the file, as in multiFFDI.
Train and val label files name each image's manipulation in a `method` column
(`real` for real images); the test label file lists names only.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ffdi.config import SampleConfig
from ffdi.files import write_text
from ffdi.sample.manipulations import KINDS, REAL, manipulate
from ffdi.sample.photos import bundled_photos, real_crop

SPLITS = {"train": "trainset", "val": "valset", "test": "testset"}


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@functools.lru_cache(maxsize=16)
def _ranks(seed: int, split_index: int, n: int) -> np.ndarray:
    # A stream of its own (spawn_key), so it never repeats an image's stream.
    seq = np.random.SeedSequence([seed, split_index], spawn_key=(1,))
    return np.random.default_rng(seq).permutation(n)


def method_of(cfg: SampleConfig, split_index: int, i: int) -> str:
    """What image i of a split is: 'real' or the manipulation that makes it a fake."""
    n = (cfg.n_train, cfg.n_val, cfg.n_test)[split_index]
    rank = int(_ranks(cfg.seed, split_index, n)[i])
    if rank >= round(n * cfg.fake_fraction):
        return REAL
    return KINDS[rank % len(KINDS)]


def make_image(photos: list[Image.Image], cfg: SampleConfig, split_index: int, i: int, with_mask: bool = False):
    """Image i of a split: (JPEG bytes, target, method), plus its mask (None if real) with_mask.

    Seeded per image, so order-independent.
    """
    rng = np.random.default_rng([cfg.seed, split_index, i])
    method = method_of(cfg, split_index, i)
    source = int(rng.integers(len(photos)))
    img = real_crop(photos[source], cfg.size, rng)
    mask = None
    if method != REAL:
        donors = photos[:source] + photos[source + 1 :] or photos
        img, mask = manipulate(img, method, rng, donors)
    data = encode_jpeg(img, cfg.jpeg_quality)
    target = int(method != REAL)
    return (data, target, method, mask) if with_mask else (data, target, method)


def _encoded(cfg: SampleConfig, split_index: int, i: int) -> tuple[bytes, int, str]:
    return make_image(list(bundled_photos()), cfg, split_index, i)


def generate(cfg: SampleConfig, out: str | Path | None = None, workers: int = 1) -> dict[str, int]:
    """Write the sample data set; return the number of images per split.

    workers > 1 makes images in that many processes; each image is seeded on its own, so the
    files are the same whatever the number of workers.
    """
    root = Path(out or cfg.out)
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    pool = worker_pool(workers) if workers > 1 else None
    try:
        for split_index, (split, n) in enumerate(counts.items()):
            if n == 0:
                continue
            folder = root / SPLITS[split]
            folder.mkdir(parents=True, exist_ok=True)
            make = functools.partial(_encoded, cfg, split_index)
            images = pool.imap(make, range(n), chunksize=16) if pool else map(make, range(n))
            rows = []
            for data, target, method in tqdm(images, total=n, desc=f"sample {split}", unit="img", leave=False):
                name = hashlib.md5(data).hexdigest() + ".jpg"
                (folder / name).write_bytes(data)
                rows.append(f"{name},{target},{method}" if split != "test" else name)
            header = "img_name,target,method" if split != "test" else "img_name"
            write_text(root / f"{SPLITS[split]}_label.txt", "\n".join([header, *rows]) + "\n")
        if pool is not None:  # done: the workers leave on their own
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()  # after close and join, a no-op
    return counts


def worker_pool(workers: int):
    """A pool of forked processes whose SIGTERM kills them, as Pool.terminate expects.

    Forked workers inherit the stage's Python SIGTERM handler (ffdi.stage.stage_main), which only runs
    when the worker's main thread wakes. A worker asleep on the pool's task-queue lock may not wake
    (its numpy threads can take the signal), so Pool.terminate waited on it for ever: seen as a
    sample stage hung for 15 minutes in a DVC queue.
    """
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(workers, initializer=_default_sigterm)


def _default_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
