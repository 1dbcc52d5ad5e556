"""Stage `predict`: write the submission CSV img_name,y_pred (probability of fake)."""

from ffdi import pipeline


def main(params):
    submission = pipeline.predict(params)
    print(f"{len(submission)} predictions -> {params.predict.out}")


if __name__ == "__main__":
    pipeline.stage_main(main)
