"""Names written once: no string constant in two modules, no constant name with two meanings."""

import ast
from collections import defaultdict
from pathlib import Path

from ffdi import schema
from tests.conftest import ROOT


def module_constants() -> list[tuple[str, str, object]]:
    """(module file, NAME, value) of every module-level UPPER_CASE assignment in ffdi/."""
    found = []
    for path in sorted((ROOT / "ffdi").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id.isupper():
                        found.append((str(path.relative_to(ROOT)), t.id, ast.unparse(node.value)))
    return found


def test_no_string_constant_is_defined_in_two_modules():
    where = defaultdict(set)
    for module, name, value in module_constants():
        if value.startswith(("'", '"')):
            where[value].add(f"{module}:{name}")
    twice = {value: sorted(places) for value, places in where.items() if len(places) > 1}
    assert not twice, f"write each in ffdi/schema.py once: {twice}"


def test_no_constant_name_means_two_things():
    values = defaultdict(set)
    for module, name, value in module_constants():
        values[name].add((module, value))
    clashes = {name: sorted(v) for name, v in values.items() if len({value for _, value in v}) > 1}
    assert not clashes, clashes


def test_the_names_read_back_are_the_names_written():
    """What evaluate logs is what compare and generalisation read: the metric names are composed from
    the same prefixes."""
    from ffdi.tracking.evaluation import evaluation_metrics, group_aucs

    report = {
        "val": {"roc_auc": 0.9, "accuracy": 0.8},
        "val_no_tta": {"roc_auc": 0.85},
        "groups": {"splice": {"roc_auc": 0.7}},
        "heldout": {"roc_auc": 0.6},
    }
    m = evaluation_metrics(report)
    assert m[schema.EVAL_ROC_AUC] == 0.9 and m[schema.EVAL_ACCURACY] == 0.8 and m[schema.HELDOUT_ROC_AUC] == 0.6
    assert m[schema.EVAL_GROUP_AUC + "splice"] == 0.7 and group_aucs(m) == {"splice": 0.7}
    assert Path(schema.VAL_PREDICTIONS).suffix == ".csv"
