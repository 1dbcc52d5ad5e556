"""The package as `pip install .` gives it: every library ffdi imports is a declared dependency, and the
built wheel alone (not this checkout) answers `ffdi --version` and `ffdi score`."""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.test_score import random_checkpoint

# Imported where a user asks for it and installed apart (pyproject.toml says why): ffdi score --faces.
OPTIONAL = {"facenet_pytorch"}


def third_party_imports() -> dict[str, str]:
    """Top-level module -> a file of ffdi/ that imports it (inside functions too), standard library aside."""
    found = {}
    for path in sorted((ROOT / "ffdi").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "ffdi" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_library_ffdi_imports_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {normalise(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    dists = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {"torch", "mlflow", "av", "pytorch_grad_cam"} <= set(imports)  # function-level imports too
    missing = {
        module: where
        for module, where in imports.items()
        if module not in OPTIONAL and not declared & {normalise(d) for d in dists.get(module, [module])}
    }
    assert not missing, f"imported by ffdi but not in pyproject.toml's dependencies: {missing}"
    test_only = {"pytest", "pytest-xdist", "playwright", "import-linter", "ruff"}
    assert not declared & test_only, "test and development tools belong in the extras"


@pytest.mark.slow
def test_the_built_wheel_alone_scores_images(tiny_data, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("ffdi-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    # The wheel's ffdi first on the path, run from outside this checkout: what it lacks fails here.
    env = {**os.environ, "PYTHONPATH": str(site), "TQDM_DISABLE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import ffdi.cli.score, ffdi.analysis.compare; print(ffdi.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site))
    ffdi = site / "bin" / "ffdi"
    version = subprocess.run([ffdi, "--version"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert importlib.metadata.version("ffdi") in version.stdout

    model = random_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "scores.csv"
    images = tiny_data / "valset"
    subprocess.run(
        [ffdi, "score", images, "--model", model, "--out", out], env=env, cwd=tmp_path, capture_output=True, check=True
    )
    scores = pd.read_csv(out, keep_default_na=False)
    assert len(scores) == len(list(images.glob("*.jpg"))) and (scores.error == "").all()
    assert scores.p_fake.between(0, 1).all() and scores.p_fake.nunique() > 1
