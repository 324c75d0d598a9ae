"""Who owns what: the core names no built-in strategy or knob, and imports no private module of MLflow, Optuna or Ray."""
from __future__ import annotations

import ast
from pathlib import Path

import mtl_search
import mtl_search_plugins
from mtl_search.registry import load_registry
from mtl_search.search.references import SingleTask

PACKAGE = Path(mtl_search.__file__).parent
PLUGINS = Path(mtl_search_plugins.__file__).parent
LIBRARIES = ("mlflow", "optuna", "ray")
# modules without an underscore that their projects still keep out of the public API
INTERNAL = ("mlflow.store", "mlflow.utils", "mlflow.protos", "ray.util.client")
# words of the core's own vocabulary that a built-in knob also uses: `mtl-search groups` and group
# objectives, `baseline.mode`, a record's noise over repeats
CORE_WORDS = {"groups", "mode", "noise"}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant of a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def _library_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every MLflow, Optuna or Ray module or name a module imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in LIBRARIES]


def _private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split(".")) or any(name == m or name.startswith(m + ".") for m in INTERNAL)


def private_imports(root: Path) -> list[str]:
    return [f"{path.relative_to(root.parent)}:{line}: {name}" for path in sorted(root.rglob("*.py"))
            for line, name in _library_imports(path) if _private(name)]


def test_no_module_imports_a_private_module_of_mlflow_optuna_or_ray():
    assert private_imports(PACKAGE) + private_imports(PLUGINS) == []


def test_the_private_import_check_finds_one(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("from mlflow.store.db.base_sql_model import Base\nimport ray._private.utils\n"
                                           "from optuna.samplers import _tpe\nfrom mlflow.tracking import MlflowClient\n")
    assert private_imports(tmp_path / "pkg") == ["pkg/a.py:1: mlflow.store.db.base_sql_model",
                                                 "pkg/a.py:1: mlflow.store.db.base_sql_model.Base",
                                                 "pkg/a.py:2: ray._private.utils", "pkg/a.py:3: optuna.samplers._tpe"]


def _built_in_names() -> set[str]:
    """The built-in plugins' strategy names and those of their knobs the core does not declare itself."""
    registry = load_registry()
    builtin = {name: s for name, s in registry.strategies.items() if type(s).__module__.startswith("mtl_search_plugins.")}
    core_knobs = {k for kind in registry.backbones.values() for k in kind.knobs}
    core_knobs |= set(SingleTask.knobs) | CORE_WORDS
    knobs = {k for s in builtin.values() for k in s.knobs} - core_knobs
    return set(builtin) | knobs


def core_names(names: set[str]) -> list[str]:
    return [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}" for path in sorted(PACKAGE.rglob("*.py"))
            for line, text in _strings(path) if text in names]


def test_the_core_names_no_built_in_strategy_or_knob():
    names = _built_in_names()
    assert {"hard_sharing", "mmoe", "shared_depth", "experts"} <= names  # the check looks for what it should
    assert core_names(names) == []


def _record_vocabulary() -> tuple[set[str], tuple[str, ...]]:
    """The names the record module defines (keys, tags), and its key prefixes (those ending in ``/``).

    Checked: every tag (a dotted name), every prefix, every key with an underscore
    (``delta_m``, ``epochs_trained`` ...). Keys that are ordinary words (``params``, ``score``,
    ``epoch``) and the role values (``trial``, ``search``) are not: the core uses those words
    for other things too (an optimiser's parameter groups, a partition's score, a space's sections).
    """
    from mtl_search import record

    tree = ast.parse(Path(record.__file__).read_text())
    defined = {t.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
               for t in (target.elts if isinstance(target, ast.Tuple) else [target]) if isinstance(t, ast.Name)}
    names: set[str] = set()
    for attribute in defined:
        value = getattr(record, attribute)
        values = value if isinstance(value, (tuple, list)) else value.values() if isinstance(value, dict) else [value]
        names |= {v for v in values if isinstance(v, str) and ("." in v or "_" in v or v.endswith("/"))}
    return names, tuple(sorted(n for n in names if n.endswith("/")))


def record_literals(root: Path, skip: set[Path]) -> list[str]:
    """Every string constant outside ``skip`` that spells one of the record's names or starts with one of its prefixes."""
    names, prefixes = _record_vocabulary()
    return [f"{path.relative_to(root.parent)}:{line}: {text!r}" for path in sorted(root.rglob("*.py")) if path not in skip
            for line, text in _strings(path) if text in names or text.startswith(prefixes)]


def test_no_key_or_tag_of_a_trial_is_spelled_outside_the_record_module():
    names, prefixes = _record_vocabulary()
    assert {"val/", "delta_m", "mtl_search.role", "mlflow.parentRunId", "mtl_search.device"} <= names and "gain/" in prefixes
    assert record_literals(PACKAGE, {PACKAGE / "record.py"}) == []


def test_the_literal_check_finds_a_spelled_key(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text('"""val/ in a docstring is prose."""\nKEY = "mtl_search.pareto"\nrow = {f"val/{task}": 1}\n')
    assert record_literals(tmp_path / "pkg", set()) == ["pkg/a.py:2: 'mtl_search.pareto'", "pkg/a.py:3: 'val/'"]
