"""Writing a plugin: the scaffold installs, passes the contract, is listed and sampled; broken plugins explain themselves."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import tomllib
from conftest import tiny_space

from mtl_search.cli import main
from mtl_search.testing import check_strategy


def _make_installed(root):
    """Install the scaffolded package the way pip would for discovery: a dist-info with the pyproject's entry points."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    dist = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = [f"{name} = {target}" for name, target in project["entry-points"]["mtl_search"].items()]
    (dist / "entry_points.txt").write_text("[mtl_search]\n" + "\n".join(lines) + "\n")


def _cli(args, env_path, cwd):
    env = {**os.environ, "PYTHONPATH": str(env_path)}
    return subprocess.run([sys.executable, "-m", "mtl_search.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_scaffolded_plugin_meets_the_contract_is_listed_and_sampled(tmp_path, monkeypatch):
    assert main(["new-plugin", "my_adapter", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "mtl-search-my-adapter"
    assert {p.name for p in root.iterdir()} >= {"pyproject.toml", "README.md", "mtl_search_my_adapter", "tests"}
    _make_installed(root)

    monkeypatch.syspath_prepend(str(root))
    module = importlib.import_module("mtl_search_my_adapter.strategy")
    check_strategy(module.MyAdapter())

    listed = _cli(["plugins"], root, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "my_adapter  [entry point of mtl-search-my-adapter 0.1.0]  register_strategies" in listed.stdout
    assert "strategies: my_adapter" in listed.stdout

    space = tiny_space(tmp_path, strategies="  my_adapter: {}", trials=2, experiment="scaffold")
    ran = _cli(["run", str(space)], root, tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = _cli(["report", "--format", "json"], root, tmp_path)
    trials = json.loads(report.stdout)["trials"]
    assert [t["strategy"] for t in trials] == ["my_adapter"] * 2 and all(t["status"] == "finished" for t in trials), trials


@pytest.mark.parametrize("name", ["My-Plugin", "1st", ""])
def test_bad_plugin_names_exit_2(tmp_path, capsys, name):
    assert main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
    assert "plugin name" in capsys.readouterr().err


def test_scaffold_refuses_to_overwrite(tmp_path, capsys):
    assert main(["new-plugin", "twice", "--dir", str(tmp_path)]) == 0
    assert main(["new-plugin", "twice", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_space_needing_a_broken_plugin_fails_validate_with_its_error(tmp_path):
    (tmp_path / "broken_family.py").write_text("import no_such_dependency_abc\n")
    dist = tmp_path / "broken_family-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-family\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mtl_search]\nbroken_family = broken_family\n")
    space = tiny_space(tmp_path, strategies="  fancy_strategy: {}")
    done = _cli(["validate", str(space)], tmp_path, tmp_path)
    assert done.returncode == 2
    assert "strategies.fancy_strategy: unknown strategy 'fancy_strategy'" in done.stderr
    assert "broken plugins: broken_family: ModuleNotFoundError: No module named 'no_such_dependency_abc'" in done.stderr
    assert "Traceback" not in done.stderr


def test_verbose_plugins_show_knob_ranges(capsys):
    assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "shared_depth: int [0, depth]" in out and "experts: int [2, 16]" in out


def test_the_documented_example_meets_the_contract(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    example = text.split("## 3.")[1].split("```python")[1].split("```")[0]
    assert len(example.strip().splitlines()) <= 45
    (tmp_path / "doc_example.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    strategy = importlib.import_module("doc_example").Adapters()
    check_strategy(strategy)
    from mtl_search.registry import load_registry

    assert load_registry().weightings["gradnorm"].incompatibility(strategy) is None  # it declares its shared parameters


def test_the_plugin_guide_covers_what_an_author_needs_without_the_source():
    from pathlib import Path

    import mtl_search
    from mtl_search.testing import check_strategy as checker

    text = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for term in ("declares_shared_parameters", "def check(self, knobs, backbone, path)", "Default(value, within)",
                 "Choice(*values)", "new_blocks(a, b)", "0 <= a <= b <= depth", "new_input()", "new_stem()", "`depth`",
                 "check_strategy(strategy, backbones=None, params=None, epochs=6)", "knob_bounds(knob, backbone)",
                 'Int(1, "experts")'):
        assert term in text, term
    # the documented signatures are the real ones
    import inspect

    assert {n: p.default for n, p in inspect.signature(checker).parameters.items()} == \
        {"strategy": inspect.Parameter.empty, "backbones": None, "params": None, "epochs": 6}
    assert list(inspect.signature(mtl_search.Strategy.check).parameters) == ["self", "knobs", "backbone", "path"]
    assert list(inspect.signature(mtl_search.Backbone.new_blocks).parameters) == ["self", "start", "stop"]
    assert mtl_search.Default(1, mtl_search.Int(0, 3)).within == mtl_search.Int(0, 3)


def test_scaffolded_strategy_declares_its_shared_parameters_so_gradient_weightings_accept_it(tmp_path, monkeypatch):
    from mtl_search.registry import load_registry

    assert main(["new-plugin", "shared_probe", "--dir", str(tmp_path)]) == 0
    monkeypatch.syspath_prepend(str(tmp_path / "mtl-search-shared-probe"))
    strategy = importlib.import_module("mtl_search_shared_probe.strategy").SharedProbe()
    assert strategy.declares_shared_parameters
    gradnorm = load_registry().weightings["gradnorm"]
    assert gradnorm.needs_shared_parameters and gradnorm.incompatibility(strategy) is None
