"""What each degradation of eval.degradations costs per image: CPU milliseconds of the degradation
itself and of decoding its result as the Detector would (ffdi.evaluation.degrade), at the sample's 64 px and at
multiFFDI's 512 px. CPU time (time.process_time), not wall time, so other work on the machine
does not inflate it; one thread.

    python -m benchmarks.studies.degradation_cost [--images 40] [--out benchmarks/results/degradation_cost.json]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import torch

from ffdi.config import EvalConfig
from ffdi.data.transforms import load_image
from ffdi.evaluation.degrade import Degradation
from ffdi.sample.photos import bundled_photos, real_crop


def cost_ms(images, d: Degradation, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):  # the least disturbed of a few passes
        t0 = time.process_time()
        for i, img in enumerate(images):
            out = d.apply(img, f"{i}.jpg")
            if isinstance(out, bytes):
                load_image(io.BytesIO(out))
        best = min(best, (time.process_time() - t0) / len(images) * 1000)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/degradation_cost.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import numpy as np

    rng = np.random.default_rng(0)
    photos = bundled_photos()
    rows = []
    for size in (64, 512):
        images = [real_crop(photos[i % len(photos)], size, rng) for i in range(args.images)]
        for spec in EvalConfig().degradations:
            rows.append(
                {
                    "degradation": spec,
                    "size_px": size,
                    "cpu_ms_per_image": round(cost_ms(images, Degradation.parse(spec)), 3),
                }
            )
    result = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| degradation | 64 px | 512 px |\n|---|---:|---:|")
    for spec in EvalConfig().degradations:
        ms = {r["size_px"]: r["cpu_ms_per_image"] for r in rows if r["degradation"] == spec}
        print(f"| `{spec}` | {ms[64]:.2f} ms | {ms[512]:.2f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
