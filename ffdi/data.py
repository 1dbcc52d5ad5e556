"""Label files, split manifests, the image Dataset and its loader.

Label files follow multiFFDI: CSV with header `img_name,target` (`img_path` is
accepted for `img_name`), target 1 = fake, 0 = real. A test split has names only.
An optional extra column (data.group_column) names each image's manipulation or source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate
from torchvision.transforms import functional as TF
from tqdm import tqdm

from ffdi import manipulations
from ffdi.config import AugmentConfig, DataConfig
from ffdi.errors import BadImage, DataError
from ffdi.io import write_csv, write_json
from ffdi.transforms import build_uint8_transform, load_image, norm_stats

NAME_COLUMNS = ("img_name", "img_path")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MANIFEST_COLUMNS = ["img_name", "target", "group", "path"]


def read_labels(path: str | Path, require_target: bool = True, group_column: Optional[str] = None) -> pd.DataFrame:
    """Parse a label file into columns img_name, target, group (target is -1 when absent).

    group: the `group_column` of the file where it has one (the manipulation that made a fake);
    real images may leave it empty and get 'real'. Without the column, group is ''.
    Tolerates a UTF-8 BOM, CRLF line ends, blank lines and a missing final newline.
    A file without a known header is read as one name per line, but only when no
    target is required (a test split listing names).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    rows = [(n, r) for n, r in enumerate(csv.reader(io.StringIO(text, newline="")), 1) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: empty file, expected a header 'img_name,target'")
    header_line, header = rows[0]
    header = [h.strip() for h in header]
    name_col = next((c for c in NAME_COLUMNS if c in header), None)
    if name_col is None:
        if require_target or len(header) != 1:
            raise DataError(
                f"{path} line {header_line}: expected a header 'img_name,target' "
                f"(or 'img_path,target'), got {','.join(header)!r}"
            )
        body, name_idx, target_idx, group_idx = rows, 0, None, None  # a bare list of names
    else:
        body, name_idx = rows[1:], header.index(name_col)
        target_idx = header.index("target") if "target" in header else None
        group_idx = header.index(group_column) if group_column and group_column in header else None
        if require_target and target_idx is None:
            raise DataError(f"{path} line {header_line}: header has no 'target' column: {','.join(header)!r}")

    names: list[str] = []
    targets: list[int] = []
    groups: list[str] = []
    seen: dict[str, int] = {}
    for line, row in tqdm(body, desc=f"check {path.name}", unit="row", mininterval=1.0, leave=False):
        if len(row) != len(header) and name_col is not None:
            raise DataError(f"{path} line {line}: expected {len(header)} fields, got {len(row)}: {','.join(row)!r}")
        name = row[name_idx].strip()
        check_name(name, path, line)
        if name in seen:
            raise DataError(f"{path} line {line}: duplicate name {name!r} (first on line {seen[name]})")
        seen[name] = line
        target = -1
        if target_idx is not None:
            raw = row[target_idx].strip()
            if raw not in ("0", "1"):
                raise DataError(f"{path} line {line}: target must be 0 or 1, got {raw!r}")
            target = int(raw)
        group = ""
        if group_idx is not None:
            group = row[group_idx].strip() or ("real" if target == 0 else "unknown")
            if target == 0 and group != "real":
                raise DataError(f"{path} line {line}: a real image (target 0) has {group_column} {group!r}; "
                                "leave it empty or write 'real'")
            if target == 1 and group == "real":
                raise DataError(f"{path} line {line}: a fake image (target 1) has {group_column} 'real'")
        names.append(name)
        targets.append(target)
        groups.append(group)
    return pd.DataFrame({"img_name": names, "target": targets, "group": groups})


def check_name(name: str, path: Path, line: int) -> None:
    """Names are relative paths inside the split folder; anything escaping it is refused."""
    if not name:
        raise DataError(f"{path} line {line}: empty image name")
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in p.parts:
        raise DataError(f"{path} line {line}: image name {name!r} escapes the data folder")


def list_images(folder: Path) -> set[str]:
    """Image file names in `folder`, from one directory listing (no stat per file)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if Path(e.name).suffix.lower() in IMAGE_SUFFIXES}
    except FileNotFoundError:
        raise DataError(f"{folder}: image folder not found") from None


def build_manifest(root: Path, split_dir: str, labels: pd.DataFrame, labels_path: Path) -> pd.DataFrame:
    """Check every labelled image exists; add the path that loaders open."""
    folder = root / split_dir
    present = list_images(folder)
    nested = labels.img_name.str.contains("/", regex=False)
    missing = [n for n in labels.img_name[~nested] if n not in present]
    missing += [n for n in labels.img_name[nested] if not (folder / n).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{labels_path}: {len(missing)} of {len(labels)} images not found in {folder}: {shown}")
    out = labels.copy()
    out["path"] = [str(folder / n) for n in out.img_name]
    return out[MANIFEST_COLUMNS]


@dataclass
class Split:
    name: str
    manifest: pd.DataFrame


def prepare(cfg: DataConfig, out_dir: str | Path) -> dict:
    """Validate the label files against the images and write one manifest per split.

    Writes <out_dir>/{train,val[,test]}.csv and summary.json; returns the summary.
    """
    root, out_dir = Path(cfg.root), Path(out_dir)
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r}: folder not found")
    splits = {}
    for split, folder, label_file in (("train", cfg.train_dir, cfg.train_labels), ("val", cfg.val_dir, cfg.val_labels)):
        labels_path = root / label_file
        labels = read_labels(labels_path, require_target=True, group_column=cfg.group_column)
        if labels.empty:
            raise DataError(f"{labels_path}: the {split} split is empty")
        classes = sorted(set(labels.target))
        if len(classes) < 2:
            raise DataError(
                f"{labels_path}: the {split} split has only target {classes[0]}; both real (0) and fake (1) are "
                "needed" + (" (ROC-AUC is undefined with one class)" if split == "val" else "")
            )
        splits[split] = build_manifest(root, folder, labels, labels_path)

    test_folder = root / cfg.test_dir if cfg.test_dir else None
    if test_folder is not None and test_folder.is_dir():
        labels_path = root / cfg.test_labels if cfg.test_labels else None
        if labels_path is not None and labels_path.is_file():
            labels = read_labels(labels_path, require_target=False)
        else:
            labels = pd.DataFrame({"img_name": sorted(list_images(test_folder)), "target": -1, "group": ""})
            labels_path = test_folder
        if labels.empty:
            raise DataError(f"{labels_path}: the test split is empty")
        splits["test"] = build_manifest(root, cfg.test_dir, labels, labels_path)

    digest = hashlib.sha256()
    for split, manifest in splits.items():
        write_csv(out_dir / f"{split}.csv", manifest)
        # multiFFDI names are md5s of file content, so names + targets fingerprint the data.
        digest.update(f"{split}\n".encode())
        digest.update(manifest[["img_name", "target"]].to_csv(index=False).encode())
    summary = {
        "root": str(root),
        "predict_split": "test" if "test" in splits else "val",
        "data_hash": digest.hexdigest()[:16],
        "splits": {
            s: {
                "images": len(m),
                "fake": int((m.target == 1).sum()),
                "real": int((m.target == 0).sum()),
                "fake_groups": {g: int(((m.target == 1) & (m.group == g)).sum()) for g in fake_groups(m)},
            }
            for s, m in splits.items()
        },
    }
    write_json(out_dir / "summary.json", summary)
    return summary


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run the prepare stage first (dvc repro prepare)")
    frame = pd.read_csv(path, dtype={"img_name": str, "target": int, "group": str, "path": str}, keep_default_na=False)
    if "group" not in frame:  # a manifest written before groups existed
        frame.insert(2, "group", "")
    return frame


def fake_groups(manifest: pd.DataFrame) -> list[str]:
    """The manipulations named among the fakes, sorted; [] when the labels name none."""
    return sorted(g for g in set(manifest.group[manifest.target == 1]) if g)


def drop_groups(manifest: pd.DataFrame, groups) -> pd.DataFrame:
    """`manifest` without the fakes of `groups` (held-out manipulations); real images stay."""
    keep = ~((manifest.target == 1) & manifest.group.isin(list(groups)))
    return manifest[keep].reset_index(drop=True)


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
        draft_size: Optional[int] = None,
        on_bad_image: str = "error",
        normalize: Optional[tuple] = None,
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

    def __getitem__(self, item: int | tuple[int, Optional[int]]):
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
        self.seed: Optional[int] = None

    def set_epoch(self, epoch: int, seed: Optional[int]) -> None:
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
    x: Optional[torch.Tensor]  # None when every image in the batch was skipped
    y: torch.Tensor
    index: torch.Tensor
    skipped: list[tuple[int, str]]  # (dataset index, reason)

    def pin_memory(self) -> "Batch":
        """What DataLoader(pin_memory=True) calls. Without it a Batch is left in pageable memory,
        and a copy to the GPU from pageable memory waits for the GPU's queue to drain first, each
        step (non_blocking or not): the host cannot run ahead of the device."""
        return Batch(self.x.pin_memory() if self.x is not None else None, self.y.pin_memory(), self.index,
                     self.skipped)


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
    return _loader(loader.dataset, loader.sampler, loader.batch_size, workers, persistent)


def make_loader(
    manifest: pd.DataFrame,
    aug: AugmentConfig,
    batch_size: int,
    workers: int,
    train: bool,
    on_bad_image: str = "error",
    shard: bool = False,
    seed: int = 0,
    persistent: bool = False,
) -> DataLoader:
    """Batches of uint8 NHWC images; `transforms.normalize_batch` finishes them on the device.

    train: shuffled and augmented, each epoch as `loader.sampler.set_epoch(epoch, seed)` says.
    shard: in a DDP group, each process reads only its 1/world of the rows (shuffled from `seed`
    and the epoch). persistent: the workers live from one epoch to the next (training's loaders).
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
    return _loader(dataset, EpochSampler(dataset, train, shard, seed), batch_size, workers, persistent)


def _loader(dataset: ImageDataset, sampler: EpochSampler, batch_size: int, workers: int,
            persistent: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=False,
        num_workers=workers,
        collate_fn=skip_collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=persistent and workers > 0,
        # Each new iterator draws its workers' base seed from this generator: a private one leaves
        # the global RNG (dropout, ...) as it was, however many iterators an epoch makes.
        generator=torch.Generator(),
    )
