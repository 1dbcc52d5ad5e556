"""How long `prepare` takes on a multiFFDI-sized data set, and how much memory it needs.

Generates label files and image folders of the real size (524,429 train and 147,363 val images)
made of tiny files, then times ffdi.data.labels.prepare on them. Prints a table and writes a JSON.

    python -m benchmarks.studies.prepare_scale [--train N] [--val N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from ffdi.config import DataConfig
from ffdi.data.labels import prepare


def make_split(root: Path, folder: str, labels: str, n: int, real_share: float, salt: str) -> None:
    (root / folder).mkdir(parents=True)
    rows = ["img_name,target"]
    for i in range(n):
        digest = hashlib.md5(f"{salt}{i}".encode()).hexdigest()
        name = f"{digest}.jpg"
        # 1-byte files: prepare checks names against one listing and never opens them.
        fd = os.open(root / folder / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"\xff")
        os.close(fd)
        real = int(digest[:4], 16) / 0xFFFF < real_share
        rows.append(f"{name},{0 if real else 1}")
    (root / labels).write_text("\n".join(rows))  # no final newline, like some official files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=524_429)
    ap.add_argument("--val", type=int, default=147_363)
    ap.add_argument("--keep", type=Path, help="generate into (and keep) this folder")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/prepare_scale.json"))
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="ffdi-bench-"))
    root = work / "phase1"
    try:
        if not root.exists():
            t0 = time.perf_counter()
            make_split(root, "trainset", "trainset_label.txt", args.train, 0.19, "t")
            make_split(root, "valset", "valset_label.txt", args.val, 0.40, "v")
            print(f"generated {args.train + args.val:,} files in {time.perf_counter() - t0:.1f} s")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        summary = prepare(DataConfig(root=str(root)), work / "prepared")
        seconds = time.perf_counter() - t0
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = args.train + args.val
    result = {
        "rows": rows,
        "train_rows": summary["splits"]["train"]["images"],
        "val_rows": summary["splits"]["val"]["images"],
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "peak_rss_mib": round(rss_after / 1024),
        "peak_rss_growth_mib": round((rss_after - rss_before) / 1024),
        "cpus": os.cpu_count(),
    }
    print("\n| rows | seconds | rows/s | peak RSS (MiB) | RSS growth in prepare (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {rows:,} | {seconds:.1f} | {result['rows_per_second']:,} | {result['peak_rss_mib']} "
        f"| {result['peak_rss_growth_mib']} |"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
