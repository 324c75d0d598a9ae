"""The core's layout: no import cycles, every module importable, strategies' own models on a table, defaults in the core."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mtl_search

PACKAGE = Path(mtl_search.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every mtl_search module a module imports, TYPE_CHECKING and function-level imports included."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mtl_search"):
                found.add(target)
                for alias in node.names:  # `from . import pareto` names a module
                    if (PACKAGE.parent / (target.replace(".", "/") + "/" + alias.name + ".py")).exists():
                        found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mtl_search")}
    return {m for m in found if m != name}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    # a package's __init__ is only the public API's re-exports: an edge into a package goes to its modules, not its __init__
    return {name: {m for m in _imports(path) if m in modules and m != "mtl_search"} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_has_no_import_cycle():
    graph = _graph()
    assert "mtl_search.search.run" in graph and "mtl_search.nn.create" in graph["mtl_search.search.setup"]
    cycle = _cycle({k: v for k, v in graph.items() if k != "mtl_search"})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_first_in_a_fresh_interpreter_in_either_order():
    names = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))
    for order in (names, names[::-1]):
        code = "import importlib\nfor name in %r:\n    importlib.import_module(name)\n" % order
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        assert result.returncode == 0, result.stderr[-2000:]


def _run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtl_search.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}, timeout=300)


def _tiny(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("data: {dataset: synthetic_correlated, options: {samples: 200}}\nbackbone: {kind: mlp, depth: 1, width: 8}\n"
                    "strategies: {hard_sharing: {}}\ntraining: {epochs: 1}\nsearch: {trials: 1}\n" + extra)
    return path


def test_an_unusable_tracking_store_is_one_line_naming_the_option_before_ray_starts(tmp_path):
    space = _tiny(tmp_path)
    (tmp_path / "a_file").write_text("")
    for uri, option in [("foo://bar", "--tracking-uri"), ("http://127.0.0.1:1", "--tracking-uri"),
                        (f"sqlite:///{tmp_path}/a_file/mlflow.db", "--tracking-uri")]:
        result = _run_cli(["run", str(space), "--tracking-uri", uri], tmp_path)
        assert result.returncode == 2, (uri, result.stderr[-500:])
        assert result.stderr.strip().count("\n") == 0 and option in result.stderr and "Traceback" not in result.stderr, result.stderr
    (tmp_path / "space2.yaml").write_text(space.read_text() + f"tracking: {{uri: 'sqlite:///{tmp_path}/a_file/x/mlflow.db'}}\n")
    result = _run_cli(["run", str(tmp_path / "space2.yaml")], tmp_path)
    assert result.returncode == 2 and "tracking.uri" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "mlflow").exists() or not any((tmp_path / "mlflow").rglob("ray_results"))


def test_the_default_weighting_is_the_cores_own(tmp_path):
    """With the built-in weighting plugin switched off, a space that names no weighting still trains with `equal`."""
    from mtl_search.registry import load_registry

    assert load_registry().weightings["equal"].__module__ == "mtl_search.training.weighting"
    result = _run_cli(["validate", str(_tiny(tmp_path))], tmp_path, {"MTL_SEARCH_DISABLE_PLUGINS": "weighting"})
    assert result.returncode == 0, result.stderr
