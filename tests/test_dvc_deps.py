"""dvc.yaml lists exactly the code each stage runs: no stale list, no spurious reruns.

The import set of each stage is found twice: statically (every `import ffdi...` and
`from stages import ...` anywhere in the files, function bodies included, followed
transitively) and dynamically (the project modules in sys.modules after importing the stage
in a fresh interpreter). Both must equal the stage's .py deps in dvc.yaml.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("ffdi", "stages")


def module_file(name: str) -> Path:
    path = ROOT / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from ffdi.tracking import mlflow_run` imports the module ffdi.tracking.mlflow_run
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES and module_file(m).is_file()}


def static_closure(stage: str) -> set[str]:
    todo, seen = [f"stages.{stage}", "stages"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if module_file(".".join(parts[:i])).is_file()]
        todo += sorted(imported_modules(module_file(name)))
    return {str(module_file(m).relative_to(ROOT)) for m in seen}


def runtime_imports(stage: str) -> set[str]:
    code = (
        f"import importlib, json, sys; importlib.import_module('stages.{stage}'); "
        "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for n, m in sys.modules.items() "
        f"if n.split('.')[0] in {PACKAGES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {str(Path(f).resolve().relative_to(ROOT)) for f in json.loads(out) if f}


def declared(stage: str) -> set[str]:
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    return {d for d in deps if d.endswith(".py")}


STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.slow
def test_dvc_yaml_lists_exactly_the_code_each_stage_imports(stage):
    static = static_closure(stage)
    assert runtime_imports(stage) <= static  # the static walk misses nothing that really loads
    assert declared(stage) == static, (
        f"dvc.yaml stage {stage!r}: missing {sorted(static - declared(stage))}, "
        f"not imported {sorted(declared(stage) - static)}"
    )


def test_plots_are_not_a_dependency_of_training():
    # A change to a plot label must not retrain the model.
    assert "ffdi/evaluation/plots.py" not in static_closure("train")
    assert "ffdi/evaluation/plots.py" in static_closure("evaluate")
    # sample and prepare do not load the training stack.
    for stage in ("sample", "prepare"):
        assert not {"ffdi/engine/train.py", "ffdi/model/networks.py", "ffdi/tracking/mlflow_run.py"} & static_closure(
            stage
        )


def write_deps(path: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite each stage's .py deps in dvc.yaml to its import closure, in place (comments and the
    other deps stay as they are)."""
    lines, out, stage, in_deps = path.read_text().splitlines(), [], None, False
    for line in lines:
        if line.startswith("  ") and not line.startswith("   ") and line.strip().endswith(":"):
            stage, in_deps = line.strip()[:-1], False
        if line.strip() == "deps:" and stage in STAGES:
            in_deps = True
            out.append(line)
            out += [f"    - {m}" for m in sorted(static_closure(stage))]
            continue
        if in_deps and line.startswith("    - ") and line.strip().endswith(".py"):
            continue
        if in_deps and not line.startswith("    - "):
            in_deps = False
        out.append(line)
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":  # print the deps of each stage; --write puts them into dvc.yaml
    if sys.argv[1:] == ["--write"]:
        write_deps()
    for s in STAGES:
        print(s, sorted(static_closure(s)))
