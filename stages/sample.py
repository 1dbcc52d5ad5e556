"""Stage `sample`: write the built-in sample data set (params group `sample`)."""

import os
import shutil
from pathlib import Path

from ffdi.sample.generate import generate
from ffdi.stage import stage_main


def main(params):
    out = Path(params.sample.out)
    shutil.rmtree(out, ignore_errors=True)  # regenerate from scratch: no stale images
    counts = generate(params.sample, out, workers=len(os.sched_getaffinity(0)))
    print(f"sample data in {out}: {counts}")


if __name__ == "__main__":
    stage_main(main)
