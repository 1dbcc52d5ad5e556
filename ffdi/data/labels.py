"""Label files, split manifests and the listing of the image folders: what the prepare stage checks.

Label files follow multiFFDI: CSV with header `img_name,target` (`img_path` is accepted for
`img_name`, and multiFFDV's `video_name` for a folder of videos), target 1 = fake, 0 = real.
A test split has names only.
An optional extra column (data.group_column) names each image's manipulation or source.
No torch here: the listing and prepare stages start in a second, not in the five torch takes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm import tqdm

from ffdi.config import DataConfig
from ffdi.errors import DataError
from ffdi.files import write_csv, write_json

NAME_COLUMNS = ("img_name", "img_path", "video_name")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}  # scored by ffdi.inference.video
MANIFEST_COLUMNS = ["img_name", "target", "group", "path"]  # + video, for the frames of videos
# What the listing fingerprints: an image data set lists the same as before videos were listed.
LISTED_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
# The test split's label file in the frames stage's output where data.test_labels is empty (every video of
# testset/ is taken): a split's images are listed from its folder only when not nested, and frames are.
TEST_LABELS = "testset_label.txt"
# In the frames stage's folder (here, not in ffdi.schema: the frames stage must not depend on metric names,
# or renaming one would decode every video again).
FRAMES_SUMMARY = "frames.json"  # {"kind": "images"}, or what it made of videos
VIDEO_RECORD = "videos.csv"  # per video: frames asked, decoded, with a face, written; why it was left out


def read_labels(path: str | Path, require_target: bool = True, group_column: str | None = None) -> pd.DataFrame:
    """Parse a label file into columns img_name, target, group (target is -1 when absent), and video
    where the file names images and says each one's video_name too (the frames stage's crops).

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
                f"(or 'img_path,target', or 'video_name,target'), got {','.join(header)!r}"
            )
        body, name_idx, target_idx, group_idx, video_idx = rows, 0, None, None, None  # a bare list of names
    else:
        body, name_idx = rows[1:], header.index(name_col)
        target_idx = header.index("target") if "target" in header else None
        group_idx = header.index(group_column) if group_column and group_column in header else None
        video_idx = header.index("video_name") if name_col != "video_name" and "video_name" in header else None
        if require_target and target_idx is None:
            raise DataError(f"{path} line {header_line}: header has no 'target' column: {','.join(header)!r}")

    names: list[str] = []
    targets: list[int] = []
    groups: list[str] = []
    videos: list[str] = []
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
                raise DataError(
                    f"{path} line {line}: a real image (target 0) has {group_column} {group!r}; "
                    "leave it empty or write 'real'"
                )
            if target == 1 and group == "real":
                raise DataError(f"{path} line {line}: a fake image (target 1) has {group_column} 'real'")
        names.append(name)
        targets.append(target)
        groups.append(group)
        if video_idx is not None:
            videos.append(row[video_idx].strip())
    out = pd.DataFrame({"img_name": names, "target": targets, "group": groups})
    if video_idx is not None:
        out["video"] = videos
    return out


def names_videos(labels: pd.DataFrame, labels_path: Path) -> bool:
    """Whether a label file names videos (by their suffixes) rather than images; one or the other."""
    videos = labels.img_name.map(lambda n: Path(n).suffix.lower() in VIDEO_SUFFIXES)
    if videos.any() and not videos.all():
        raise DataError(
            f"{labels_path}: names {int(videos.sum())} videos and {int((~videos).sum())} images; "
            "a set is one or the other"
        )
    return bool(len(labels)) and bool(videos.all())


def check_name(name: str, path: Path, line: int) -> None:
    """Names are relative paths inside the split folder; anything escaping it is refused."""
    if not name:
        raise DataError(f"{path} line {line}: empty image name")
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in p.parts:
        raise DataError(f"{path} line {line}: image name {name!r} escapes the data folder")


def list_images(folder: Path, suffixes: set[str] = IMAGE_SUFFIXES) -> set[str]:
    """Image file names in `folder` (or those of other `suffixes`), from one directory listing (no stat per file)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if Path(e.name).suffix.lower() in suffixes}
    except FileNotFoundError:
        raise DataError(f"{folder}: image folder not found") from None


def build_manifest(
    root: Path, split_dir: str, labels: pd.DataFrame, labels_path: Path, suffixes: set[str] = IMAGE_SUFFIXES
) -> pd.DataFrame:
    """Check every labelled image (or file of `suffixes`) exists; add the path that loaders open."""
    folder = root / split_dir
    present = list_images(folder, suffixes)
    nested = labels.img_name.str.contains("/", regex=False)
    missing = [n for n in labels.img_name[~nested] if n not in present]
    missing += [n for n in labels.img_name[nested] if not (folder / n).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{labels_path}: {len(missing)} of {len(labels)} images not found in {folder}: {shown}")
    out = labels.copy()
    out["path"] = [str(folder / n) for n in out.img_name]
    return out[MANIFEST_COLUMNS + (["video"] if "video" in out else [])]


def prepare(cfg: DataConfig, out_dir: str | Path, files: dict | None = None, videos: dict | None = None) -> dict:
    """Validate the label files against the images and write one manifest per split.

    Writes <out_dir>/{train,val[,test]}.csv and summary.json; returns the summary. files: the
    data's `listing`, whose digest goes into the summary, so that images that change under their
    old names change the prepared data too (and the models trained on it rerun). videos: the frames
    stage's summary, where cfg reads its output (the frames of videos): the summary keeps its counts.
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
        if videos is None and names_videos(labels, labels_path):
            raise DataError(
                f"{labels_path}: names videos, which the frames stage turns into the images prepare reads; "
                "run it first (dvc repro frames)"
            )
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
    if videos is not None:
        summary["videos"] = videos["splits"]
    if files is not None:
        summary["listing_sha256"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    write_json(out_dir / "summary.json", summary)
    return summary


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run the prepare stage first (dvc repro prepare)")
    frame = pd.read_csv(
        path, dtype={"img_name": str, "target": int, "group": str, "path": str, "video": str}, keep_default_na=False
    )
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


def listing(cfg: DataConfig) -> dict:
    """A fingerprint of everything prepare reads: each split folder's image files (relative name and
    size, subfolders included) and the label files' bytes.

    The prepare stage depends on this, not on the images: DVC hashing the bytes of every image of
    a multiFFDI-sized tree took minutes the first time and most of a minute for each no-change
    `dvc status` (README, Scale), while listing it takes seconds. multiFFDI names each image by
    the md5 of its bytes, and an image rewritten under its old name almost surely changes size.
    Modification times are left out: a copy of the same files (DVC checks the sample out into each
    queued experiment) must give the same fingerprint, or every experiment would retrain.
    """
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r}: folder not found")
    folders = {}
    for folder in dict.fromkeys(f for f in (cfg.train_dir, cfg.val_dir, cfg.test_dir) if f):
        if not (root / folder).is_dir():
            continue  # prepare names a missing train or val folder; a test folder is optional
        files = sorted(_image_files(str(root / folder), ""))
        text = "".join(f"{name}\t{size}\n" for name, size in files)
        folders[folder] = {
            "images": len(files),
            "bytes": sum(size for _, size in files),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
    label_files = {}
    for name in dict.fromkeys(f for f in (cfg.train_labels, cfg.val_labels, cfg.test_labels) if f):
        if (root / name).is_file():
            label_files[name] = hashlib.md5((root / name).read_bytes()).hexdigest()
    return {"folders": folders, "label_files": label_files}


def _image_files(folder: str, prefix: str) -> list[tuple[str, int]]:
    """(relative name, size) of the image and video files under folder, subfolders included."""
    found = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_dir():
                found += _image_files(e.path, f"{prefix}{e.name}/")
            elif os.path.splitext(e.name)[1].lower() in LISTED_SUFFIXES:
                found.append((prefix + e.name, e.stat().st_size))
    return found


def read_frames_summary(folder: str | Path) -> dict:
    """What the frames stage made (ffdi.data.frames): {"kind": "images"}, or its videos' counts."""
    path = Path(folder) / FRAMES_SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the frames stage first (dvc repro frames)") from None


def frames_data_config(cfg: DataConfig, folder: str | Path) -> DataConfig:
    """The data config that reads the frames stage's output (the frames of videos) as an image data set."""
    import dataclasses

    return dataclasses.replace(cfg, root=str(folder), test_labels=cfg.test_labels or TEST_LABELS)
