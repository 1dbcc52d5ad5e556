"""Saving a run as it trains: the best epoch's weights, the last epoch's state, and resuming from it.

As timm's CheckpointSaver: `fit` asks it, after each epoch, whether the epoch is the best so far and
to save; after a crash it puts the last complete epoch back. The moving average of the weights
(train.ema) travels with the state, with its step count (the warm-up's clock).
"""

from __future__ import annotations

from pathlib import Path

from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from ffdi.config import Params
from ffdi.model import checkpoint

# Which direction is better for each selectable metric (train.best_metric).
MAXIMISE = {"val_auc": True, "val_acc": True, "val_loss": False}


class WeightAverage:
    """train.ema: timm's moving average of `model`'s weights, updated after every optimiser step.

    The warm-up makes the decay grow with the step count, so a run of a few hundred steps is not
    dominated by its random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.ema, self.steps = model, ModelEmaV3(model, decay=decay, use_warmup=True), 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def __call__(self) -> None:
        self.steps += 1
        self.ema.update(self.model, step=self.steps)

    def state_dict(self) -> dict:
        return {"ema": self.ema.module.state_dict(), "ema_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state["ema"])
        self.steps = state["ema_steps"]


class CheckpointSaver:
    """`state_dir/best.pt` (the scored weights of the best epoch by train.best_metric, a checkpoint that
    rebuilds its model) and `state_dir/last.pt` (all that resuming needs), rewritten each epoch."""

    def __init__(
        self,
        state_dir: Path,
        params: Params,
        precision: str,
        *,
        model,
        optimizer,
        scheduler,
        scaler,
        ema: WeightAverage | None = None,
    ):
        self.last_path, self.best_path = Path(state_dir) / "last.pt", Path(state_dir) / "best.pt"
        self.params, self.precision = params, precision
        self.model, self.optimizer, self.scheduler, self.scaler, self.ema = model, optimizer, scheduler, scaler, ema
        self.metric = params.train.best_metric
        self.best: dict = {}  # {"metric", "value", "epoch"}

    @property
    def scored(self) -> nn.Module:
        """What is validated and saved as best: the moving average where there is one."""
        return self.ema.module if self.ema is not None else self.model

    def resume(self, device) -> tuple[list[dict], list]:
        """Put the last complete epoch back, if a killed run with the same config left one: (its history,
        its unreadable images); ([], []) where there is none."""
        if not self.last_path.is_file():
            return [], []
        state = checkpoint.load(self.last_path, device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state)
        self.best = dict(state["best"])
        tqdm.write(f"resuming from {self.last_path} after epoch {state['epoch']}")
        return list(state["history"]), [tuple(s) for s in state.get("skipped", [])]

    def is_best(self, epoch: int, row: dict) -> bool:
        """Whether `row` (the epoch's metrics) beats the best so far; if so it becomes the best."""
        value, best = row[self.metric], self.best.get("value")
        better = best is None or (value > best if MAXIMISE[self.metric] else value < best)
        if better:
            self.best = {"metric": self.metric, "value": value, "epoch": epoch}
        return better

    def save(self, epoch: int, row: dict, history: list[dict], skipped: list, best: bool) -> None:
        if best:
            checkpoint.save(self.best_path, checkpoint.snapshot(self.scored, self.params, epoch, row, self.precision))
        state = checkpoint.resume_state(
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.params,
            epoch=epoch,
            history=history,
            best=self.best,
            skipped=skipped,
        )
        if self.ema is not None:
            state.update(self.ema.state_dict())
        checkpoint.save(self.last_path, state)
