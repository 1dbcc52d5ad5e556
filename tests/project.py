"""A throwaway copy of this project, as a user's git + DVC repo, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

# The default recipe's training degradations turned off, for tests that compare images exactly.
NO_DEGRADATION = {"jpeg": None, "blur": None, "downscale": None}

# The whole pipeline in about 30 s: 32 px images, 2 epochs.
TINY_PARAMS = {
    "sample": {"n_train": 96, "n_val": 48, "n_test": 12, "size": 32, "seed": 5},
    "augment": {"resize": 32, "image_size": 32},
    "train": {"epochs": 2, "batch_size": 16},
    "runtime": {"workers": 0},
    "eval": {"batch_size": 32},
    "predict": {"batch_size": 32},
}


def project_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def every_core() -> None:
    """preexec_fn: the command gets all the cores of the test session, not just its pytest-xdist
    worker's (tests/conftest.py pins each worker to its own). For DVC's queue, which runs
    experiments side by side: two at a time on one core took the sweep over 10 minutes."""
    cores = os.environ.get("FFDI_TEST_CORES")
    if cores:
        os.sched_setaffinity(0, [int(c) for c in cores.split(",")])


@dataclass
class Project:
    repo: Path
    env: dict

    def sh(self, *cmd: str, check: bool = True, all_cores: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            cmd,
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            preexec_fn=every_core if all_cores else None,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                f"\n--- stderr\n{proc.stderr[-4000:]}"
            )
        return proc

    def out(self, *cmd: str) -> str:
        return self.sh(*cmd).stdout.strip()

    def popen(self, *cmd: str, log: Path) -> subprocess.Popen:
        """Start in a new process group, so a signal can reach dvc and its stage together."""
        return subprocess.Popen(
            cmd, cwd=self.repo, env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_queue(self, jobs: int) -> None:
        """`dvc queue start -j N` on every core, returning once the workers are up."""
        from ffdi.analysis.dvc_queue import start_workers

        start_workers(jobs, cwd=self.repo, env=self.env, preexec_fn=every_core)

    def commit(self, message: str) -> str:
        self.sh("git", "add", "-A")
        self.sh("git", "commit", "-q", "--allow-empty", "-m", message)
        return self.out("git", "rev-parse", "HEAD")


def make_project(dst: Path, overrides: dict) -> Project:
    """Copy the project's files to `dst`, apply params overrides, git init and commit."""
    dst.mkdir(parents=True, exist_ok=True)
    for rel in project_files():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    for stale in ("dvc.lock", "metrics.json", "submission.csv"):
        (dst / stale).unlink(missing_ok=True)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for group, values in overrides.items():
        params[group].update(values)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GIT_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        TQDM_DISABLE="1",
        PYTHONUNBUFFERED="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@e.st",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@e.st",
    )
    project = Project(dst, env)
    project.sh("git", "init", "-q", "-b", "main")
    project.commit("project")
    return project


def mlflow_runs(repo: Path, experiment: str = "ffdi") -> tuple:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []
    return client, exp, runs
