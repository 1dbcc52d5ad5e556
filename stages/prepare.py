"""Stage `prepare`: validate label files against images; write split manifests to prepared/."""

from ffdi.cli import stage_main
from ffdi.data import prepare
from stages import PREPARED


def main(params):
    summary = prepare(params.data, PREPARED)
    for split, counts in summary["splits"].items():
        groups = ", ".join(f"{g} {n}" for g, n in counts["fake_groups"].items())
        print(f"{split}: {counts['images']} images ({counts['fake']} fake, {counts['real']} real)"
              + (f"; fakes by {params.data.group_column}: {groups}" if groups else ""))
    print(f"predictions will be made for the {summary['predict_split']} split")


if __name__ == "__main__":
    stage_main(main)
