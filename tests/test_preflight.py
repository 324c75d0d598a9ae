"""What ``validate`` (and a search, before Ray starts) refuses: every independent error at once, an empty file,
a binary task whose val/test split holds one class, a strategy that cannot build at its smallest configuration."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mtl_search.cli import main
from mtl_search.errors import SpaceError, SpaceErrors

GOOD = "data: {dataset: synthetic_correlated, options: {samples: 200}}\nstrategies: {hard_sharing: {}}\n"


def _validate(path, capsys) -> tuple[int, str]:
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_says_it_is_empty(tmp_path, capsys, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    code, err = _validate(path, capsys)
    assert code == 2
    assert "the space file is empty" in err and "NoneType" not in err and "Traceback" not in err


def test_every_independent_structural_error_is_reported_with_its_key_path(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(
        "experiment: x\nsearh: {}\ncolour: red\n"
        "data: {dataset: synthetic_correlated}\n"
        "strategies: {mmoe: {experts: many, expert_width: {int: [8, 2]}}, hard_sharing: {}}\n"
        "training: {epochs: -1, lr: {loguniform: [0, 1]}}\n"
        "search: {sampler: cmaes, concurrency: 0}\n"
        "ray: {cpus_per_trial: 0}\n"
    )
    code, err = _validate(path, capsys)
    assert code == 2 and "Traceback" not in err
    for fragment in ("searh: unknown key", "colour: unknown key", "strategies.mmoe.expert_width.int: lower bound 8",
                     "training.epochs: expected an integer >= 1", "training.lr.loguniform: bounds must be positive",
                     "search.sampler: unknown sampler 'cmaes'", "search.concurrency: expected an integer >= 1",
                     "ray.cpus_per_trial: expected a number > 0"):
        assert fragment in err, (fragment, err)
    assert "8 errors in the space" in err  # experts: many is only found against the strategy's knob (resolve)


def test_every_independent_error_against_the_plugins_is_reported(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(
        "data: {dataset: synthetic_correlated, options: {samples: 200}}\n"
        "strategies: {mmoee: {}, mmoe: {expertz: 4, experts: 0}, hard_sharing: {}}\n"
        "training: {weighting: {choice: [equal, magic]}}\n"
        "search: {objectives: [y1, y9]}\n"
        "backbone: {activation: swish}\n"
    )
    code, err = _validate(path, capsys)
    assert code == 2 and "Traceback" not in err
    for fragment in ("strategies.mmoee: unknown strategy 'mmoee'", "strategies.mmoe.expertz: unknown knob 'expertz'",
                     "strategies.mmoe.experts: 0 is below the smallest allowed value 1",
                     "training.weighting: unknown weighting 'magic'", "search.objectives[1]: unknown objective 'y9'",
                     "backbone.activation: 'swish' is not allowed"):
        assert fragment in err, (fragment, err)


def test_several_errors_raise_one_exception_that_is_still_a_space_error(tmp_path):
    from mtl_search.search.space import parse_space

    with pytest.raises(SpaceErrors) as info:
        parse_space({"data": {"dataset": "x"}, "strategies": {}, "search": {"trials": 0}})
    assert isinstance(info.value, SpaceError)
    assert [e.path for e in info.value.errors] == ["strategies", "search.trials"]
    assert info.value.path == "strategies"
    with pytest.raises(SpaceError) as single:  # one error stays a plain SpaceError
        parse_space({"data": {"dataset": "x"}, "strategies": {}})
    assert not isinstance(single.value, SpaceErrors)


def _one_class_table(tmp_path, metric: str = "") -> str:
    """A table whose binary task ``flag`` has only class 0 in its val split (an explicit split column)."""
    rows = ["a,b,flag,split"]
    for i in range(30):
        split = "train" if i < 18 else ("val" if i < 24 else "test")
        flag = i % 2 if split != "val" else 0
        rows.append(f"{i * 0.1:.1f},{(i * 7) % 5},{flag},{split}")
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    tasks = f"tasks: {{flag: {{kind: binary{', metric: ' + metric if metric else ''}}}}}\n"
    return "data: {csv: rows.csv, features: [a, b], split_column: split}\n" + tasks + "strategies: {hard_sharing: {}}\n"


def test_a_binary_task_with_one_class_in_a_split_is_refused(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(_one_class_table(tmp_path))
    code, err = _validate(path, capsys)
    assert code == 2 and "Traceback" not in err
    assert "tasks.flag: binary task 'flag': its val split holds one class (class 0: 6;" in err
    assert "train 0: 9, 1: 9; val 0: 6; test 0: 3, 1: 3" in err
    assert "stratif" in err and "another metric" in err


def test_a_binary_task_with_one_class_is_accepted_under_a_metric_defined_for_one_class(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(_one_class_table(tmp_path, metric="logloss"))
    code, err = _validate(path, capsys)
    assert code == 0, err


BROKEN_PLUGIN = '''
from mtl_search import Int, Strategy, hookimpl
from mtl_search_plugins.hard_sharing import HardSharing


class NeedsWide(HardSharing):
    """Builds only for tower_width >= 6: at its smallest range value it cannot."""

    name = "needs_wide"
    knobs = {**HardSharing.knobs, "tower_width": Int(2, 16, minimum=1)}

    def build(self, problem, backbone, params):
        if params["tower_width"] < 6:
            raise ValueError(f"tower_width {params['tower_width']} is too narrow")
        return super().build(problem, backbone, params)


class Broken(Strategy):
    name = "broken"
    family = "broken"

    def build(self, problem, backbone, params):
        raise RuntimeError("not implemented yet")


@hookimpl
def register_strategies(register):
    register(NeedsWide())
    register(Broken())
'''


def _plugin_space(tmp_path, strategies: str):
    (tmp_path / "broken_plugin.py").write_text(BROKEN_PLUGIN)
    path = tmp_path / "space.yaml"
    path.write_text(f"plugins: [broken_plugin.py]\ndata: {{dataset: synthetic_correlated, options: {{samples: 200}}}}\nstrategies: {strategies}\n")
    return path


def test_a_strategy_whose_build_raises_is_refused_naming_it_and_the_values_tried(tmp_path, capsys):
    code, err = _validate(_plugin_space(tmp_path, "{hard_sharing: {}, needs_wide: {}, broken: {}}"), capsys)
    assert code == 2 and "Traceback" not in err
    assert "2 errors in the space" in err
    assert "strategies.needs_wide: strategy 'needs_wide' failed to build and run at the smallest configuration of its ranges" in err
    assert "tower_width=2" in err and "ValueError: tower_width 2 is too narrow" in err
    assert "strategies.broken: strategy 'broken' failed" in err and "RuntimeError: not implemented yet" in err
    assert "broken_plugin.py:" in err  # where it raised
    assert "hard_sharing" not in err.replace("mtl_search_plugins.hard_sharing", "")


def test_narrowing_the_range_to_buildable_values_passes(tmp_path, capsys):
    code, err = _validate(_plugin_space(tmp_path, "{needs_wide: {tower_width: {int: [6, 16]}}}"), capsys)
    assert code == 0, err


def test_the_command_line_prints_the_build_error_without_a_traceback(tmp_path):
    path = _plugin_space(tmp_path, "{broken: {}}")
    done = subprocess.run([sys.executable, "-m", "mtl_search.cli", "validate", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "strategies.broken" in done.stderr and "Traceback" not in done.stderr


def test_the_smallest_configuration_reads_a_bound_naming_the_depth(tmp_path):
    from mtl_search.search.prepare import prepare
    from mtl_search.search.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text("data: {dataset: synthetic_correlated, options: {samples: 200}}\nbackbone: {depth: {int: [3, 5]}}\n"
                    "strategies: {hard_sharing: {}}\n")  # shared_depth: Int(0, "depth")
    plan, _, _ = prepare(load_space(path))
    knobs, backbone, _ = plan.smallest_configuration("hard_sharing")
    assert backbone["depth"] == 3 and knobs["shared_depth"] == 2
