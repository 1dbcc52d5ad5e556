"""Stage `train`: train the detector; best checkpoint to models/model.pt, one MLflow run.

Under torchrun every process trains its shard; rank 0 alone writes files and talks to MLflow.
A killed run resumes after its last complete epoch, into the same MLflow run.
"""

import json

import pandas as pd

from ffdi import hardware
from ffdi.data.labels import drop_groups, fake_groups, read_manifest
from ffdi.engine import distributed
from ffdi.engine.train import fit
from ffdi.errors import ConfigError, DataError
from ffdi.files import project_root, write_csv
from ffdi.model import checkpoint
from ffdi.sample import manipulations
from ffdi.schema import TRAIN
from ffdi.stage import stage_main
from ffdi.tracking import mlflow_run


def load_manifests(params, prepared):
    """Train and val rows, without the held-out manipulations' fakes: they must not reach
    training, nor the choice of the best epoch."""
    train, val = read_manifest(prepared / "train.csv"), read_manifest(prepared / "val.csv")
    unknown = sorted(set(params.data.holdout) - set(fake_groups(train)) - set(fake_groups(val)))
    if unknown:
        raise DataError(
            f"data.holdout names {unknown}, which no fake in the label files has in column "
            f"{params.data.group_column!r}; known: {fake_groups(train) or 'none'}"
        )
    if params.augment.self_blend and manipulations.KINDS[0] in params.data.holdout:
        raise ConfigError(
            f"data.holdout holds out {manipulations.KINDS[0]!r} while augment.self_blend makes such fakes "
            "during training: the held-out AUC would not be held out; set one of them off"
        )
    return drop_groups(train, params.data.holdout), drop_groups(val, params.data.holdout)


def main(params, prepared, model, run_ref, history):
    mlflow_run.check_reachable(params.tracking)  # in seconds, before anything is read or trained
    # Fails here, in seconds, where the machine has a GPU that torch cannot use.
    device, share = hardware.claim_hardware(params.runtime.device, params.runtime.threads, project_root() / ".ffdi")
    data_hash = json.loads((prepared / "summary.json").read_text())["data_hash"]
    train_rows, val_rows = load_manifests(params, prepared)
    state_dir = checkpoint.resume_dir(params, data_hash)
    with distributed.process_group(params.train, params.runtime.device):
        if distributed.rank_and_world()[0] != 0:  # a DDP worker: trains its shard, reports nothing
            fit(params, train_rows, val_rows, state_dir, cpu_share=share)
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        run_file = state_dir / "run.json"
        prior_run = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        with mlflow_run.run(params.tracking, run_id=prior_run, run_name=mlflow_run.run_name(params)) as run:
            import mlflow

            if prior_run is None:
                mlflow_run.log_params(params)
                mlflow.set_tags(mlflow_run.start_tags(params, data_hash))
                cores = share.threads()
                threads = hardware.resolve_threads(params.runtime.threads, cores, device)
                mlflow.set_tags(
                    hardware.describe(device, hardware.resolve_precision(params.train.amp, device), threads)
                )
                mlflow.set_tag("hw.loader_workers", hardware.resolve_workers(params.runtime.workers, cores, device))
                mlflow.set_tag("train.world_size", distributed.rank_and_world()[1])
                mlflow_run.log_datasets(prepared, {"training": ("train", train_rows), "validation": ("val", val_rows)})
                mlflow_run.write_run_ref(run_file, run.info.run_id, params.tracking.experiment)
            steps = mlflow_run.logged_steps(run.info.run_id)
            epochs: list[dict] = []

            def on_epoch(row):
                epochs.append(row)
                write_csv(history, pd.DataFrame(epochs))
                mlflow_run.log_epoch(row, steps)

            def on_resume(rows):
                epochs.extend(rows)
                for row in rows:  # an epoch saved but killed before it was logged
                    mlflow_run.log_epoch(row, steps)

            result = fit(
                params, train_rows, val_rows, state_dir, on_epoch=on_epoch, on_resume=on_resume, cpu_share=share
            )
            # Again after fit: a resumed run with no epochs left wrote no history, and DVC deleted it.
            write_csv(history, pd.DataFrame(result["history"]))
            best = result["best"]
            mlflow.log_metrics(
                {
                    f"{TRAIN}best_epoch": best["epoch"],
                    f"{TRAIN}best_{best['metric']}": best["value"],
                    f"{TRAIN}trainable_params": result["trainable_params"],
                }
            )
            mlflow_run.log_skipped(result["skipped"], "train")
            # The model reaches this run once, as evaluate's `detector` (the checkpoint with the views and
            # threshold it scores with): a PyTorch model logged here as well stored the weights twice more.
            checkpoint.finish(state_dir, model)
            mlflow_run.write_run_ref(run_ref, run.info.run_id, params.tracking.experiment)
    print(f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']} -> {model}")


if __name__ == "__main__":
    stage_main(main, "prepared", "model", "run_ref", "history")
