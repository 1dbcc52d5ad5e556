"""Driving DVC's experiment queue: `dvc` run as a subprocess of this interpreter, experiments
queued with `dvc exp run --queue`, workers started with `dvc queue start`, `dvc queue status`
parsed and polled until every experiment has ended (starting workers again where DVC's left
experiments queued), and the logs of those that failed. `ffdi generalisation` runs its
experiments with it; the tests start the workers of their throwaway projects with it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ffdi.errors import FfdiError

STATUSES = ("Queued", "Running", "Success", "Failed")


class QueueError(FfdiError):
    """A `dvc` command that failed, or queued nothing."""


def dvc_env() -> dict:
    """This interpreter's bin first on PATH: DVC's queue workers and the stages run `dvc`/`python` from it."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def dvc(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=dvc_env(), timeout=timeout
    )
    if check and proc.returncode != 0:
        raise QueueError(
            f"dvc {' '.join(args)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc


def parse_queue_status(text: str) -> tuple[dict[str, str], int | None]:
    """`dvc queue status` -> ({experiment name: status}, active workers or None)."""
    tasks, active = {}, None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] in STATUSES and parts[0] != "Task":
            tasks[parts[1]] = parts[-1]
        m = re.search(r"Worker status: (\d+) active", line)
        if m:
            active = int(m.group(1))
    return tasks, active


def start_workers(jobs: int, command: Sequence[str] | None = None, timeout: float = 120, **run) -> None:
    """`dvc queue start -j N`, returning once the workers are started; `run`: more subprocess.run
    arguments (cwd, env, preexec_fn), for the tests' throwaway projects.

    The workers are daemons that inherit this command's stdout and stderr: with pipes there, as
    subprocess.run(capture_output=True) makes, waiting for the command waits for the workers to
    exit, i.e. for the whole queue. A file holds nobody up.
    """
    command = list(command or [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)])
    run.setdefault("env", dvc_env())
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout, **run
        )
        log.seek(0)
        if proc.returncode != 0:
            raise QueueError(f"{' '.join(command[1:])} exited {proc.returncode}: {log.read().strip()[-2000:]}")


def queue_status() -> tuple[dict[str, str], int | None]:
    return parse_queue_status(dvc("queue", "status").stdout)


def untracked_code() -> list[str]:
    """Files `dvc exp run --queue` would leave out: queued experiments see git-tracked files only."""
    try:
        out = subprocess.run(
            [
                "git",
                "ls-files",
                "--others",
                "--exclude-standard",
                "--",
                "ffdi",
                "stages",
                "dvc.yaml",
                "params.yaml",
                "requirements.txt",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [f for f in out.splitlines() if f.endswith((".py", ".yaml", ".txt"))]


def queue_experiments(experiments: Sequence[tuple[Sequence[str], str]]) -> list[str]:
    """Queue each experiment, given as (its `dvc exp run --queue` arguments, what it sets, for the
    messages); return the names DVC gave them."""
    names = []
    for args, what in experiments:
        out = dvc(*args).stdout
        queued = re.findall(r"Queued experiment '([^']+)'", out)
        if not queued:
            raise QueueError(f"dvc exp run --queue queued nothing for {what}:\n{out}")
        print(f"queued {', '.join(queued)}: {what}", flush=True)
        names += queued
    return names


def wait_for(
    names: Sequence[str],
    *,
    timeout_s: float,
    poll_s: float = 10.0,
    stall_s: float = 120.0,
    restart=None,
    restarts: int = 3,
) -> dict[str, str]:
    """Poll until each named experiment has succeeded or failed, or `timeout_s` passed.

    DVC's queue workers may exit while experiments are still queued (here they often stopped after
    one experiment each). When experiments wait with no worker active for two polls, `restart()`
    starts workers again. Only `restarts` restarts in a row that bring no progress are allowed;
    after those, experiments still waiting with no worker for `stall_s` end the wait (a worker
    that cannot start, e.g. without `dvc` on PATH). Returns the last status of each name.
    """
    start, last, idle_since, fruitless = time.monotonic(), None, None, 0
    while True:
        tasks, active = queue_status()
        status = {n: tasks.get(n, "unknown") for n in names}
        counts = {s: sum(v == s for v in status.values()) for s in (*STATUSES, "unknown")}
        line = ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)
        if line != last:
            print(f"[{time.monotonic() - start:6.0f} s] {line}", flush=True)
            if last is not None:
                fruitless = 0  # an experiment started or ended: the workers do work
            last = line
        if not counts["Queued"] and not counts["Running"]:
            return status
        if counts["Queued"] and not counts["Running"] and not active:
            idle_since = idle_since or time.monotonic()
            waited = time.monotonic() - idle_since
            if restart is not None and fruitless < restarts and waited >= min(stall_s, 2 * poll_s):
                fruitless += 1
                print(
                    f"[{time.monotonic() - start:6.0f} s] experiments queued and no queue worker active: "
                    "starting workers again",
                    flush=True,
                )
                restart()
                idle_since = None
            elif waited > stall_s:
                print(
                    f"error: experiments stay queued and no queue worker is active after {stall_s:.0f} s; "
                    "see `dvc queue status` and `dvc queue start`",
                    file=sys.stderr,
                )
                return status
        else:
            idle_since = None
        if time.monotonic() - start > timeout_s:
            print(
                f"error: timed out after {timeout_s / 60:.0f} min with {counts['Queued']} queued and "
                f"{counts['Running']} running; they go on in the background. Watch `dvc queue status`, then "
                "render with `ffdi generalisation --no-run`",
                file=sys.stderr,
            )
            return status
        time.sleep(poll_s)


def report_failures(status: dict[str, str]) -> list[str]:
    failed = [n for n, s in status.items() if s == "Failed"]
    for name in failed:
        logs = dvc("queue", "logs", name, check=False)
        tail = "\n".join((logs.stdout + logs.stderr).strip().splitlines()[-15:])
        print(f"\nexperiment {name} failed; the end of `dvc queue logs {name}`:\n{tail}", file=sys.stderr)
    return failed


def run_experiments(
    experiments: Sequence[tuple[Sequence[str], str]], jobs: int, timeout_s: float, poll_s: float = 10.0
) -> dict[str, str]:
    """Queue the experiments (as queue_experiments takes them), run them `jobs` at a time and wait
    for them (see wait_for); return the last status of each."""
    missing = untracked_code()
    if missing:
        print(
            "warning: queued experiments see only git-tracked files, and these are untracked: "
            f"{', '.join(missing)}. `git add` them first, or the experiments may fail.",
            file=sys.stderr,
        )
    before, _ = queue_status()
    busy = [n for n, s in before.items() if s in ("Queued", "Running")]
    if busy:
        print(f"note: the DVC queue already holds {', '.join(busy)}; they will run as well", file=sys.stderr)
    names = queue_experiments(experiments)
    print(f"running {len(names)} experiments, {jobs} at a time (dvc queue start -j {jobs})", flush=True)
    start_workers(jobs)
    try:
        status = wait_for(names, timeout_s=timeout_s, poll_s=poll_s, restart=lambda: start_workers(jobs))
    finally:
        tasks, _ = queue_status()
        if not any(s in ("Queued", "Running") for s in tasks.values()):
            dvc("queue", "stop", check=False)  # the idle worker would otherwise linger
    return status
