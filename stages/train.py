"""Stage `train`: train the detector; best checkpoint to models/model.pt, one MLflow run."""

from ffdi import pipeline


def main(params):
    best = pipeline.train(params)
    if best:  # rank 0, or a single process
        print(f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']} -> {pipeline.MODEL}")


if __name__ == "__main__":
    pipeline.stage_main(main)
