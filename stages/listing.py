"""Stage `listing`: a fingerprint of the images and label files under data.root, which prepare
depends on instead of on every image's bytes (ffdi.data.labels.listing). It runs every time, in seconds."""

from ffdi.data.labels import listing
from ffdi.files import write_json
from ffdi.stage import stage_main


def main(params, out):
    found = listing(params.data)
    write_json(out, found)
    print(
        ", ".join(
            f"{folder}: {f['images']} images, {f['bytes'] / 2**20:.0f} MiB" for folder, f in found["folders"].items()
        )
        + f" -> {out}"
    )


if __name__ == "__main__":
    stage_main(main, "out")
