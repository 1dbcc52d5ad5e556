"""Stage `prepare`: validate label files against images; write split manifests to prepared/."""

from ffdi.data import prepare
from ffdi.pipeline import PREPARED, stage_main


def main(params):
    summary = prepare(params.data, PREPARED)
    for split, counts in summary["splits"].items():
        print(f"{split}: {counts['images']} images ({counts['fake']} fake, {counts['real']} real)")
    print(f"predictions will be made for the {summary['predict_split']} split")


if __name__ == "__main__":
    stage_main(main)
