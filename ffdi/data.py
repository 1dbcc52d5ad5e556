"""Label files, split manifests, the image dataset and its transforms.

Label files follow multiFFDI: CSV with header `img_name,target` (`img_path` is
accepted for `img_name`), target 1 = fake, 0 = real. A test split has names only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate
from torchvision import transforms as T
from torchvision.transforms import functional as TF
from tqdm import tqdm

from ffdi.config import AugmentConfig, DataConfig
from ffdi.io import write_csv, write_json

NAME_COLUMNS = ("img_name", "img_path")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MANIFEST_COLUMNS = ["img_name", "target", "path"]


class DataError(ValueError):
    """Bad input data; the message names the file, line and value."""


def read_labels(path: str | Path, require_target: bool = True) -> pd.DataFrame:
    """Parse a label file into columns img_name, target (target is -1 when absent).

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
        body, name_idx, target_idx = rows, 0, None  # a bare list of names
    else:
        body, name_idx = rows[1:], header.index(name_col)
        target_idx = header.index("target") if "target" in header else None
        if require_target and target_idx is None:
            raise DataError(f"{path} line {header_line}: header has no 'target' column: {','.join(header)!r}")

    names: list[str] = []
    targets: list[int] = []
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
        names.append(name)
        targets.append(target)
    return pd.DataFrame({"img_name": names, "target": targets})


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
        labels = read_labels(labels_path, require_target=True)
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
            labels = pd.DataFrame({"img_name": sorted(list_images(test_folder)), "target": -1})
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
            s: {"images": len(m), "fake": int((m.target == 1).sum()), "real": int((m.target == 0).sum())}
            for s, m in splits.items()
        },
    }
    write_json(out_dir / "summary.json", summary)
    return summary


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run the prepare stage first (dvc repro prepare)")
    return pd.read_csv(path, dtype={"img_name": str, "target": int, "path": str}, keep_default_na=False)


class BadImage(DataError):
    """An image file that cannot be used: empty, truncated, not an image, or a decompression bomb."""


def load_image(path: str, draft_size: Optional[int] = None) -> Image.Image:
    """Open an image as 8-bit RGB, honouring EXIF rotation; raise BadImage naming the file.

    JPEG draft mode decodes at a reduced scale (1/2, 1/4, 1/8) that is still at
    least `draft_size`: a 512 px multiFFDI image bound for 256 px decodes ~2.5x faster.
    Images over PIL's pixel limit (~89 Mpx) are refused, not decoded: a tiny
    file can expand to gigabytes.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImage(f"{path}: refused as a possible decompression bomb: {e}") from None
    except FileNotFoundError:
        raise BadImage(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        reason = "empty file" if size == 0 else f"cannot decode ({e})"
        raise BadImage(f"{path}: {reason}") from None
    ImageOps.exif_transpose(img, in_place=True)  # no copy when there is no EXIF rotation
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":  # convert() would copy it
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: keep the top 8 bits. PIL's own convert() clips to 255, turning it white.
        arr = np.asarray(img).astype(np.uint32) >> 8
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        # Transparent pixels become black, the same for every image.
        canvas = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, img)
    return img.convert("RGB")


def build_transform(cfg: AugmentConfig, train: bool) -> Callable:
    """PIL image -> normalised float CHW tensor, one image at a time (the reference for what the model sees)."""
    steps: list = [*pil_steps(cfg, train), T.ToTensor()]
    if cfg.normalize == "imagenet":
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return T.Compose(steps)


def build_uint8_transform(cfg: AugmentConfig, train: bool) -> Callable:
    """PIL image -> uint8 HWC tensor; `normalize_batch` finishes the job for a whole batch.

    Loader workers stop at uint8: a quarter of the bytes to pass between processes
    and to copy to the GPU, and the float conversion runs once per batch on the device.
    """
    return Uint8Transform(cfg, train)


def pil_steps(cfg: AugmentConfig, train: bool) -> list:
    # Resize first: every later step works on the small image.
    steps: list = [T.Resize(cfg.resize)]
    if train:
        if cfg.hflip:
            steps.append(T.RandomHorizontalFlip(cfg.hflip))
        if cfg.vflip:
            steps.append(T.RandomVerticalFlip(cfg.vflip))
        if cfg.rotation:
            steps.append(T.RandomRotation(cfg.rotation))
        if cfg.grayscale:
            steps.append(T.RandomGrayscale(cfg.grayscale))
    steps.append(T.CenterCrop(cfg.image_size))
    return steps


class Uint8Transform:
    """`pil_steps`, then the pixels as a uint8 HWC tensor, skipping the steps that would only copy.

    The draft decode usually gives the resize size already, and then the centre crop size.
    """

    def __init__(self, cfg: AugmentConfig, train: bool):
        self.resize, self.size = cfg.resize, cfg.image_size
        self.random = pil_steps(cfg, train)[1:-1]  # the flips, rotation and grayscale, in order

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if min(img.size) != self.resize:
            img = TF.resize(img, self.resize)
        for step in self.random:
            img = step(img)
        if img.size != (self.size, self.size):
            img = TF.center_crop(img, self.size)
        return torch.from_numpy(np.array(img))


def normalize_batch(x: torch.Tensor, normalize: str, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W): ToTensor + Normalize for a whole batch, bit for bit.

    The permute gives channels_last strides for free. The same operations in the same order
    as torchvision's keep training numbers identical to the per-image pipeline: a fused
    x * scale + shift is 2x cheaper on CPU, but its last-bit differences change a run's results.
    """
    x = x.permute(0, 3, 1, 2).float().div_(255)
    if normalize == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = x.sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class ImageDataset(Dataset):
    """Images listed in a manifest; item i is (tensor or None, target, i, why-skipped).

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
        normalize: Optional[str] = None,
    ):
        self.paths = manifest.path.tolist()
        # With a uint8 transform: how `normalize_batch` finishes each batch on the device.
        self.normalize = normalize
        self.targets = torch.tensor(manifest.target.to_numpy(), dtype=torch.long)
        self.transform = transform
        self.draft_size = draft_size
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.paths[i], self.draft_size)
        except BadImage as e:
            if self.on_bad_image == "error":
                raise
            return None, self.targets[i], i, str(e)
        return self.transform(img), self.targets[i], i, ""


@dataclass
class Batch:
    x: Optional[torch.Tensor]  # None when every image in the batch was skipped
    y: torch.Tensor
    index: torch.Tensor
    skipped: list[tuple[int, str]]  # (dataset index, reason)


def skip_collate(items: list) -> Batch:
    kept = [it for it in items if it[0] is not None]
    return Batch(
        # default_collate stacks straight into shared memory in a loader worker: one copy less.
        x=default_collate([it[0] for it in kept]) if kept else None,
        y=torch.stack([it[1] for it in kept]) if kept else torch.zeros(0, dtype=torch.long),
        index=torch.tensor([it[2] for it in kept], dtype=torch.long),
        skipped=[(it[2], it[3]) for it in items if it[0] is None],
    )
