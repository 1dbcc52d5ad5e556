"""benchmarks.gpu_check: its CPU rehearsal end to end, and where it must refuse to run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check
from ffdi import hardware
from tests.conftest import ROOT


@pytest.mark.slow
def test_the_rehearsal_measures_every_step_without_mlflow_or_dvc(tmp_path):
    """The whole check, tiny, on the CPU, as the GPU machine would run it: there MLflow and DVC are
    missing, so here any import of them fails (a package of that name that raises comes first)."""
    for name in ("mlflow", "dvc"):
        (tmp_path / "block" / name).mkdir(parents=True)
        (tmp_path / "block" / name / "__init__.py").write_text(
            f"raise ImportError('gpu_check imported {name}, which the GPU machines lack')\n"
        )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "block"), str(ROOT)]))
    # --rehearsal where this machine has a GPU: the test is of the script, in a minute.
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check",
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(
        cmd + (["--rehearsal"] if torch.cuda.is_available() else []),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("REHEARSAL on CPU: ") and "figures are not GPU figures" in proc.stdout.splitlines()[0]
    r = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert r["rehearsal"] is True and r["device"] == "cpu" and r["gpu"] is None
    assert r["cores"] == len(os.sched_getaffinity(0)) and r["torch"] == torch.__version__ and r["date"]
    assert not [k for k in r if k.endswith(("_error", "_cut"))], {k: v for k, v in r.items() if "error" in k}
    for step in gpu_check.STEPS:  # each step ran, inside its deadline
        assert 0 <= r[f"{step}_seconds"] <= r[f"{step}_deadline_s"] + 1, step
    plan = gpu_check.REHEARSAL
    for p in (plan, gpu_check.GPU):  # the five minutes (the rehearsal's one) hold by construction
        assert sum(p.deadlines.values()) + gpu_check.ENVIRONMENT_DEADLINE <= (300 if p is gpu_check.GPU else 150)
    assert (r["tree_train_images"], r["tree_val_images"]) == (plan.train, plan.val)
    assert r["loader_train_img_s"] > 0 and r["loader_train_pass_img_s"] > 0
    assert r["loader_train_workers"] == max(1, r["cores"] - 1)
    cells = [f"model_b{bs}_ema_{ema}_compile_off_img_s" for bs in plan.cells for ema in ("off", "on")]
    assert all(r[k] > 0 for k in cells) and "skipped" in r["model_compile"]
    assert not [k for k in r if k.startswith("model_") and "compile_on" in k]
    assert r["fit_epoch1_train_img_s"] > 0 and r["fit_epoch1_val_img_s"] > 0 and 0 <= r["fit_epoch1_val_auc"] <= 1
    assert "fit_epoch2_train_img_s" not in r  # one epoch in the rehearsal
    assert r["fit_epoch1_train_efficiency"] > 0 and r["fit_efficiency"] > 0 and r["fit_slower_part"]
    assert r["syncs"] == "not available on CPU"
    assert r["detector_img_s"] > 0 and r["detector_model"] == "fit's best.pt"
    for key in cells + ["loader_train_img_s", "fit_epoch1_train_img_s", "detector_img_s"]:
        assert f"| {key} |" in proc.stdout  # a row of the table


@pytest.fixture
def no_gpu(tmp_path, monkeypatch):
    """No nvidia-smi on PATH, no driver entries: the machine has no GPU, whatever this one has."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(hardware, "NVIDIA_PROC", tmp_path / "proc-nvidia-gpus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return tmp_path


def test_a_gpu_that_torch_cannot_use_stops_the_check_with_what_was_found(no_gpu):
    smi = no_gpu / "bin" / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\ncase "$1" in\n  -L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0000)";;\n'
        '  *) echo "580.159.04";;\nesac\n'
    )
    smi.chmod(0o755)
    with pytest.raises(
        SystemExit,
        match=r"has an NVIDIA GPU \(GPU 0: NVIDIA H100 80GB HBM3.*"
        r"driver 580\.159\.04.*"
        r"no CPU rehearsal",
    ):
        gpu_check.environment()


def test_the_driver_entry_alone_is_a_gpu_too(no_gpu):
    (no_gpu / "proc-nvidia-gpus" / "0000:00:1e.0").mkdir(parents=True)
    with pytest.raises(SystemExit, match="NVIDIA GPU at 0000:00:1e.0.*cannot use it"):
        gpu_check.environment()


def test_without_any_gpu_it_rehearses_on_the_cpu(no_gpu):
    env = gpu_check.environment()
    assert env["rehearsal"] is True and env["rehearsal_why"] == "no CUDA" and env["device"] == "cpu"
    assert env["gpus_present"] == 0 and env["driver"] is None


def test_a_step_is_cut_at_its_deadline_keeping_its_figures_and_an_error_is_recorded(capsys):
    import time
    from dataclasses import replace

    check = object.__new__(gpu_check.Check)  # the step machinery alone: no params, no data
    check.r, check.plan = {}, replace(gpu_check.REHEARSAL, deadlines={"loader": 0.3, "fit": 5})

    def stuck():
        check.r["loader_train_img_s"] = 123.0
        time.sleep(30)

    def broken():
        raise ValueError("the reason it failed")

    check.loader, check.fit = stuck, broken
    t0 = time.perf_counter()
    check.run_step("loader")
    check.run_step("fit")
    assert time.perf_counter() - t0 < 3
    assert check.r["loader_cut"] is True and check.r["loader_train_img_s"] == 123.0 and "loader_error" not in check.r
    assert check.r["fit_error"] == "ValueError: the reason it failed" and "fit_cut" not in check.r
    assert "loader: cut at its deadline" in capsys.readouterr().err
