"""Stage `evaluate`: score the best checkpoint on val; metrics.json, ROC and confusion plots."""

from ffdi import pipeline


def main(params):
    report = pipeline.evaluate(params)
    print(", ".join(f"{k} {v:.4f}" for k, v in report["val"].items()))


if __name__ == "__main__":
    pipeline.stage_main(main)
