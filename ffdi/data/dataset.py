"""The image Dataset, the order it is read in each epoch, and its loader (manifests: ffdi.data.labels)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate
from torchvision.transforms import functional as TF

from ffdi.config import AugmentConfig
from ffdi.data.transforms import build_uint8_transform, load_image, norm_stats
from ffdi.errors import BadImage
from ffdi.sample import manipulations


class ImageDataset(Dataset):
    """Images listed in a manifest; item (i, seed) is (tensor or None, target, i, why-skipped).

    seed: the epoch's augmentation seed (EpochSampler), or None for no seeding. Each image's random
    augmentation is seeded from (seed, i), so results do not depend on which worker (or how many)
    loaded it, nor on whether the workers lived through earlier epochs.

    With on_bad_image='skip', an unreadable image yields None and a reason instead
    of raising, so one bad file found mid-epoch cannot end a multi-hour run;
    `skip_collate` drops it from the batch and passes the reason on.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        transform: Callable,
        *,
        draft_size: int | None = None,
        on_bad_image: str = "error",
        normalize: tuple | None = None,
        self_blend: float = 0.0,
        blend_strength: float = 1.0,
        blend_axes: tuple[float, float] = manipulations.BLEND_AXES,
    ):
        self.paths = manifest.path.tolist()
        # With a uint8 transform: the (mean, std) with which `normalize_batch` finishes each batch
        # on the device (transforms.norm_stats).
        self.normalize = normalize
        self.targets = torch.tensor(manifest.target.to_numpy(), dtype=torch.long)
        self.transform = transform
        self.draft_size = draft_size
        self.on_bad_image = on_bad_image
        # augment.self_blend: a real image becomes a self-blended fake with this probability.
        self.self_blend, self.blend_strength, self.blend_axes = self_blend, blend_strength, tuple(blend_axes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int | None]):
        i, seed = item if isinstance(item, tuple) else (item, None)
        try:
            img = load_image(self.paths[i], self.draft_size)
        except BadImage as e:
            if self.on_bad_image == "error":
                raise
            return None, self.targets[i], i, str(e)
        if seed is None:
            return self._item(img, i)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone: torch.manual_seed would also queue a CUDA seeding, with a
            # stack trace, on every image of a CUDA build (a third of a 64 px image's loading time).
            torch.default_generator.manual_seed(seed * 1_000_003 + i)
            return self._item(img, i)

    def _item(self, img, i: int):
        target = self.targets[i]
        if self.self_blend and target == 0 and float(torch.rand(())) < self.self_blend:
            side = min(img.size)  # the region Resize + CenterCrop keep, as a square to blend in
            img = TF.center_crop(img, side) if img.size != (side, side) else img
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
            img, _ = manipulations.self_blend(img, rng, self.blend_strength, self.blend_axes)
            target = torch.tensor(1)
        return self.transform(img), target, i, ""


class EpochSampler(Sampler):
    """One epoch's row order, each row paired with the epoch's augmentation seed: (i, seed).

    The seed travels with every index to the loader's workers, so the workers can live from one
    epoch to the next (persistent_workers: no new processes each epoch) and still augment row i of
    epoch e as a fresh worker, or the main process, would. `set_epoch` before each epoch.
    shard: in a DDP group, this process's 1/world of the rows (DistributedSampler, which shuffles
    from `seed` and the epoch on its own).
    """

    def __init__(self, dataset: Dataset, shuffle: bool, shard: bool = False, seed: int = 0):
        self.n, self.shuffle = len(dataset), shuffle
        self.shard = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False) if shard else None
        self.seed: int | None = None

    def set_epoch(self, epoch: int, seed: int | None) -> None:
        """seed: the order's and the augmentation's seed for this epoch (None: unseeded)."""
        self.seed = seed
        if self.shard is not None:
            self.shard.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.shard) if self.shard is not None else self.n

    def __iter__(self):
        seed = self.seed
        if self.shard is not None:
            order = iter(self.shard)
        elif self.shuffle:
            g = torch.Generator()
            if seed is None:
                g.seed()
            else:
                g.manual_seed(seed)
            # The draw DataLoader's iterator made from its generator (its workers' base seed) before
            # the permutation, when the loader shuffled: kept, so runs keep the order they had.
            torch.empty((), dtype=torch.int64).random_(generator=g)
            order = iter(torch.randperm(self.n, generator=g).tolist())
        else:
            order = iter(range(self.n))
        return ((i, seed) for i in order)


@dataclass
class Batch:
    x: torch.Tensor | None  # None when every image in the batch was skipped
    y: torch.Tensor
    index: torch.Tensor
    skipped: list[tuple[int, str]]  # (dataset index, reason)

    def pin_memory(self) -> Batch:
        """What DataLoader(pin_memory=True) calls. Without it a Batch is left in pageable memory,
        and a copy to the GPU from pageable memory waits for the GPU's queue to drain first, each
        step (non_blocking or not): the host cannot run ahead of the device."""
        return Batch(self.x.pin_memory() if self.x is not None else None, self.y.pin_memory(), self.index, self.skipped)


def skip_collate(items: list) -> Batch:
    kept = [it for it in items if it[0] is not None]
    return Batch(
        # default_collate stacks straight into shared memory in a loader worker: one copy less.
        x=default_collate([it[0] for it in kept]) if kept else None,
        y=torch.stack([it[1] for it in kept]) if kept else torch.zeros(0, dtype=torch.long),
        index=torch.tensor([it[2] for it in kept], dtype=torch.long),
        skipped=[(it[2], it[3]) for it in items if it[0] is None],
    )


def set_workers(loader: DataLoader, workers: int, persistent: bool) -> DataLoader:
    """`loader`, or an equal one with `workers` loader processes when the count changes (the CPU
    share of parallel pipelines changed): a persistent loader's workers are fixed at its start."""
    if workers == loader.num_workers:
        return loader
    loader._iterator = None  # a persistent loader's workers stop with their iterator
    return _loader(
        loader.dataset,
        loader.sampler,
        batch_size=loader.batch_size,
        workers=workers,
        persistent=persistent,
        drop_last=loader.drop_last,
    )


def make_loader(
    manifest: pd.DataFrame,
    aug: AugmentConfig,
    batch_size: int,
    workers: int,
    train: bool,
    *,
    on_bad_image: str = "error",
    shard: bool = False,
    seed: int = 0,
    persistent: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """Batches of uint8 NHWC images; `transforms.normalize_batch` finishes them on the device.

    train: shuffled and augmented, each epoch as `loader.sampler.set_epoch(epoch, seed)` says.
    shard: in a DDP group, each process reads only its 1/world of the rows (shuffled from `seed`
    and the epoch). persistent: the workers live from one epoch to the next (training's loaders).
    drop_last: leave out the last, smaller batch (on a GPU, so that cuDNN tunes one batch shape).
    """
    dataset = ImageDataset(
        manifest,
        build_uint8_transform(aug, train=train),
        draft_size=aug.resize,
        on_bad_image=on_bad_image,
        normalize=norm_stats(aug),
        self_blend=aug.self_blend if train else 0.0,
        blend_strength=aug.self_blend_strength,
        blend_axes=aug.self_blend_mask,
    )
    return _loader(
        dataset,
        EpochSampler(dataset, train, shard, seed),
        batch_size=batch_size,
        workers=workers,
        persistent=persistent,
        drop_last=drop_last,
    )


def _loader(
    dataset: ImageDataset, sampler: EpochSampler, *, batch_size: int, workers: int, persistent: bool, drop_last: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=skip_collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=persistent and workers > 0,
        # Each new iterator draws its workers' base seed from this generator: a private one leaves
        # the global RNG (dropout, ...) as it was, however many iterators an epoch makes.
        generator=torch.Generator(),
    )
