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


def project_env() -> dict:
    """The environment of a project's commands: this Python's tools first, no outside MLflow, DVC or
    git settings, offline."""
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
    return env


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

    project = Project(dst, project_env())
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


# --- the shared trained project ------------------------------------------------------------------

GROUPS = ("a", "b", "c")


def label_with_groups(root: Path, groups=GROUPS) -> None:
    """Rewrite the train and val label files with a `method` column: fakes take the groups in turn."""
    import pandas as pd

    for name in ("trainset_label.txt", "valset_label.txt"):
        labels = pd.read_csv(root / name, dtype={"img_name": str})
        fake_rank = (labels.target == 1).cumsum() - 1
        labels["method"] = [groups[r % len(groups)] if t == 1 else "real" for t, r in zip(labels.target, fake_rank)]
        labels[["img_name", "target", "method"]].to_csv(root / name, index=False)


# One trained project serves every test that reads a trained pipeline's outputs (evaluate's reports,
# the submission, scoring, the MLflow run, crash recovery's reference run): labelled data with three
# manipulations, an extra set and three degradations, 3 epochs of 15 steps (seconds each: long enough for
# test_crash to kill a run inside an epoch), the models logged. Tests that change it work on a copy.
SHARED_PARAMS = {
    "data": {"root": "data/labelled"},
    "sample": {"n_train": 96, "n_val": 48, "n_test": 12, "size": 32, "seed": 5},
    "augment": {"resize": 32, "image_size": 32},
    "train": {"epochs": 3, "batch_size": 16},
    # One thread: the same numbers whichever pytest-xdist worker builds it (test_crash compares digits).
    "runtime": {"workers": 0, "threads": 1},
    "eval": {
        "batch_size": 32,
        "extra_sets": {"other": "data/other"},
        "degradations": ["jpeg:100", "noise:60", "downscale:0.25"],
    },
    "predict": {"batch_size": 32},
}
SHARED_DATA = {"n_train": 240, "n_val": 48, "n_test": 12, "size": 32, "seed": 5}
OTHER_DATA = {"n_train": 4, "n_val": 40, "n_test": 0, "size": 32, "seed": 6}


def make_shared_project(dst: Path) -> Project:
    """The shared project, untrained: its files, params and data (labelled, and `other`), committed."""
    from ffdi.config import SampleConfig
    from ffdi.sample.generate import generate

    p = make_project(dst, SHARED_PARAMS)
    for name, cfg in (("labelled", SHARED_DATA), ("other", OTHER_DATA)):
        generate(SampleConfig(**cfg), p.repo / "data" / name)
        label_with_groups(p.repo / "data" / name)
    p.commit("labelled data")
    return p


def build_shared_project(root: Path) -> Project:
    """The shared project, trained by `dvc repro`, built once per test session even under pytest-xdist:
    the first worker to ask builds it under a lock, the others wait for it and find it done."""
    from filelock import FileLock

    repo, done = root / "shared" / "repo", root / "shared" / "built"
    with FileLock(str(root / "shared.lock")):
        if not done.exists():
            shutil.rmtree(repo.parent, ignore_errors=True)  # a build that failed half-way
            p = make_shared_project(repo)
            p.sh("dvc", "repro")
            done.write_text("ok")
    return Project(repo, project_env())


def copy_project(src: Project, dst: Path) -> Project:
    """A copy of a project (git, DVC cache, MLflow store) that tests may change.

    MLflow keeps absolute artifact locations in its store; they are moved to the copy's, so that
    what the copy logs lands in the copy."""
    import sqlite3

    shutil.copytree(src.repo, dst, symlinks=True)
    old, new = str(src.repo), str(dst)  # in paths and in file:// URIs alike
    with sqlite3.connect(dst / "mlflow.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in db.execute(f"PRAGMA table_info('{table}')").fetchall():
                name, kind = column[1], column[2].upper()
                if "CHAR" in kind or "TEXT" in kind:
                    db.execute(
                        f'UPDATE \'{table}\' SET "{name}" = replace("{name}", ?, ?) WHERE "{name}" LIKE ?',
                        (old, new, f"%{old}%"),
                    )
    db.close()
    return Project(dst, project_env())
