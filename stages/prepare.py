"""Stage `prepare`: validate label files against images; write split manifests to prepared/."""

import json

from ffdi.data.labels import FRAMES_SUMMARY, frames_data_config, listing, prepare, read_frames_summary
from ffdi.stage import stage_main


def main(params, listing_file, frames, out):
    # Run by DVC, the listing stage has just written the listing; run alone, list the data here.
    files = json.loads(listing_file.read_text()) if listing_file.is_file() else listing(params.data)
    # Run alone before the frames stage: read data.root as images (prepare says so if it names videos).
    made = read_frames_summary(frames) if (frames / FRAMES_SUMMARY).is_file() else {"kind": "images"}
    if made["kind"] == "videos":  # the frames stage's crops, in the image layout, stand for the videos
        summary = prepare(frames_data_config(params.data, frames), out, files, videos=made)
    else:
        summary = prepare(params.data, out, files)
    for split, counts in summary["splits"].items():
        groups = ", ".join(f"{g} {n}" for g, n in counts["fake_groups"].items())
        print(
            f"{split}: {counts['images']} images ({counts['fake']} fake, {counts['real']} real)"
            + (f"; fakes by {params.data.group_column}: {groups}" if groups else "")
        )
    print(f"predictions will be made for the {summary['predict_split']} split")


if __name__ == "__main__":
    stage_main(main, "listing_file", "frames", "out")
