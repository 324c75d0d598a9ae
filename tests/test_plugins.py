"""Plugins that are not built in: listed, isolated when broken, and sampled by a search."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mtl_search.errors import PluginError
from mtl_search.registry import load_registry
from mtl_search.results.store import default_tracking_uri

PLUGIN_SOURCE = '''
import torch
from mtl_search import Choice, Int, MultiTaskModel, SharingMap, Strategy, hookimpl, make_tower

class ConstantModel(MultiTaskModel):
    """Per-task towers on the flattened input, nothing shared."""
    def __init__(self, problem, hidden, explode):
        super().__init__(problem)
        if explode:
            raise RuntimeError("this configuration explodes on purpose")
        d = 1
        for s in problem.input_shape:
            d *= s
        self.towers = torch.nn.ModuleDict({t.name: make_tower(d, t.output_dim, [hidden]) for t in problem.tasks})

    def forward(self, x):
        return {n: tower(x.flatten(1)) for n, tower in self.towers.items()}

    def sharing_map(self, x):
        return {"none": SharingMap(torch.zeros(len(self.towers), 1), list(self.towers), ["all"])}

class TestStrategy(Strategy):
    name = "test_private"
    family = "test_family"
    knobs = {"hidden": Int(2, 8), "explode": Choice(False, True)}

    def build(self, problem, backbone, params):
        return ConstantModel(problem, params["hidden"], params["explode"])

@hookimpl
def register_strategies(register):
    register(TestStrategy())

@hookimpl
def trial_finished(trial):
    import os
    from mlflow.tracking import MlflowClient
    logged = MlflowClient(os.environ["TEST_PLUGIN_STORE"]).get_run(trial.run_id).info.status  # "after it is logged"
    with open(os.environ["TEST_PLUGIN_LOG"], "a") as fh:
        fh.write(f"{trial.number} {trial.strategy} {trial.status} {logged}\\n")
'''


def _install_fake_distribution(root, module_name, source, entry_name):
    """Make ``module_name`` an installed distribution with an ``mtl_search`` entry point (a dist-info on sys.path)."""
    (root / f"{module_name}.py").write_text(source)
    dist = root / f"{module_name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mtl_search]\n{entry_name} = {module_name}\n")


def test_installed_third_party_plugin_is_listed_and_broken_ones_are_isolated(tmp_path):
    _install_fake_distribution(tmp_path, "good_plugin", PLUGIN_SOURCE, "good")
    _install_fake_distribution(tmp_path, "bad_import_plugin", "import no_such_dependency_xyz\n", "bad_import")
    _install_fake_distribution(tmp_path, "bad_hook_plugin",
                               "from mtl_search import hookimpl\n@hookimpl\ndef register_strategies(wrong_name):\n    pass\n", "bad_hook")
    _install_fake_distribution(tmp_path, "raising_plugin",
                               "from mtl_search import hookimpl\n@hookimpl\ndef register_strategies(register):\n    raise RuntimeError('boom')\n", "raising")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "mtl_search.cli", "plugins"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "good  [entry point of good_plugin 0.1]" in out and "strategies: test_private" in out
    assert "bad_import  [entry point of bad_import_plugin 0.1]  BROKEN: ModuleNotFoundError" in out
    assert "bad_hook" in out and "BROKEN: PluginValidationError" in out
    assert "raising" in out and "BROKEN: register_strategies raised: RuntimeError: boom" in out
    # the built-ins still load next to the broken ones
    assert "strategies: cgc, dselect_k, mmoe, omoe, ple, switch, topk_moe" in out and "strategies: hard_sharing" in out


def test_two_plugins_registering_one_name_is_an_error():
    import types

    from mtl_search_plugins.hard_sharing import HardSharing

    from mtl_search import hookimpl

    clash = types.SimpleNamespace(register_strategies=hookimpl(lambda register: register(HardSharing())))
    with pytest.raises(PluginError, match="strategy 'hard_sharing' is registered by two plugins: 'hard_sharing' and 'clash'"):
        load_registry(extra=[("clash", clash)])


def test_disabled_plugins_are_not_loaded(monkeypatch):
    monkeypatch.setenv("MTL_SEARCH_DISABLE_PLUGINS", "mixture_of_experts")
    registry = load_registry()
    assert "mmoe" not in registry.strategies and "hard_sharing" in registry.strategies


def test_plugin_named_in_a_space_is_sampled_and_a_failing_trial_does_not_stop_the_search(ray_session, workdir, monkeypatch, capsys):
    from conftest import tiny_space

    from mtl_search.cli import main

    (workdir / "my_plugin.py").write_text(PLUGIN_SOURCE)
    log = workdir / "observer.log"
    monkeypatch.setenv("TEST_PLUGIN_LOG", str(log))
    monkeypatch.setenv("TEST_PLUGIN_STORE", default_tracking_uri())
    space = tiny_space(workdir, strategies="  test_private: {}", trials=6, extra="plugins: [my_plugin.py]\n", experiment="plugin-test")
    space.write_text(space.read_text().replace("  seed: 0\n", "  seed: 0\n  sampler: random\n"))
    assert main(["run", str(space)]) == 0
    capsys.readouterr()
    assert main(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    trials = report["trials"]
    assert len(trials) == 6
    assert {t["strategy"] for t in trials} == {"test_private"}
    exploded = [t for t in trials if t["params"]["test_private.explode"]]
    assert exploded, "the random sampler with this seed must draw the exploding configuration at least once"
    assert all(t["status"] == "failed" for t in exploded)
    assert all(t["status"] == "finished" and t["val"] for t in trials if not t["params"]["test_private.explode"])
    # the observer hook saw every trial, each already ended in MLflow
    seen = [line.split() for line in log.read_text().splitlines()]
    assert len(seen) == 6
    assert all((status, logged) in {("finished", "FINISHED"), ("failed", "FAILED")} for _, _, status, logged in seen)
