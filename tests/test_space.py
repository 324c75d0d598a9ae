"""Malformed spaces: each gives exit status 2 and a message naming the key path; good ones pass."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import tiny_space

from mtl_search.cli import main


def _validate(path, capsys):
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.err


BAD_SPACES = [
    # (description, space text, expected fragment of the message)
    ("bad YAML", "experiment: x\ndata: {dataset: [unclosed\n", "not valid YAML"),
    ("duplicate key", "data: {dataset: synthetic_correlated}\nstrategies:\n  mmoe: {}\n  mmoe: {experts: 2}\n",
     "not valid YAML at line 4, column 3: key 'mmoe' is given twice in one mapping (first at line 3); keep one"),
    ("not a mapping", "- just\n- a list\n", "must be a mapping"),
    ("unknown top-level key", "experiment: x\ndata: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nsearh: {}\n", "searh: unknown key"),
    ("missing data", "experiment: x\nstrategies: {hard_sharing: {}}\n", "data: missing"),
    ("unknown dataset", "data: {dataset: nope}\nstrategies: {hard_sharing: {}}\n", "data.dataset: unknown dataset 'nope'; valid names: multi_digits, synthetic_correlated"),
    ("unknown dataset option", "data: {dataset: synthetic_correlated, options: {colour: red}}\nstrategies: {hard_sharing: {}}\n", "data.options.colour: unknown option"),
    ("bad dataset option value", "data: {dataset: synthetic_correlated, options: {correlation: 3}}\nstrategies: {hard_sharing: {}}\n", "data.options: data set 'synthetic_correlated' rejected its options: correlation must lie"),
    ("empty strategies", "data: {dataset: synthetic_correlated}\nstrategies: {}\n", "strategies: expected a non-empty mapping"),
    ("unknown strategy", "data: {dataset: synthetic_correlated}\nstrategies: {mmoee: {}}\n", "strategies.mmoee: unknown strategy 'mmoee'; valid names: "),
    ("unknown knob", "data: {dataset: synthetic_correlated}\nstrategies: {mmoe: {expertz: 4}}\n", "strategies.mmoe.expertz: unknown knob 'expertz'"),
    ("wrong knob type", "data: {dataset: synthetic_correlated}\nstrategies: {mmoe: {experts: many}}\n", "strategies.mmoe.experts: expected an integer, got 'many'"),
    ("inverted range", "data: {dataset: synthetic_correlated}\nstrategies: {mmoe: {experts: {int: [8, 2]}}}\n", "strategies.mmoe.experts.int: lower bound 8 is above upper bound 2"),
    ("below a knob's minimum", "data: {dataset: synthetic_correlated}\nstrategies: {mmoe: {experts: 0}}\n", "strategies.mmoe.experts: 0 is below the smallest allowed value 1"),
    ("unknown range form", "data: {dataset: synthetic_correlated}\nstrategies: {mmoe: {experts: {between: [1, 2]}}}\n", "strategies.mmoe.experts: expected a constant or one of"),
    ("negative epochs", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\ntraining: {epochs: -1}\n", "training.epochs: expected an integer >= 1, got -1"),
    ("non-positive loguniform", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\ntraining: {lr: {loguniform: [0, 1]}}\n", "training.lr.loguniform: bounds must be positive"),
    ("unknown objective", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nsearch: {objectives: [y1, y9]}\n", "search.objectives[1]: unknown objective 'y9'; valid names: delta_m, latency, params, worst_gain, y1, y2"),
    ("group of an unknown task", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nsearch: {objectives: [{group: {name: g, tasks: [y1, y7]}}]}\n",
     "search.objectives[0].group: unknown task 'y7' in group 'g'"),
    ("a one-task group", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nsearch: {objectives: [y1+y1]}\n",
     "search.objectives[0]: a group needs at least two distinct task names"),
    ("delta_m without references", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nbaseline: false\nsearch: {objectives: [y1, delta_m]}\n",
     "search.objectives[1]: delta_m is measured against single-task references"),
    ("baseline knob unknown", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nbaseline: {backbone: {widht: 8}}\n",
     "baseline.backbone.widht: not a backbone knob of this space"),
    ("baseline range", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nbaseline: {training: {lr: {loguniform: [0.001, 0.01]}}}\n",
     "baseline.training.lr: expected one value"),
    ("unknown sampler", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nsearch: {sampler: cmaes}\n", "search.sampler: unknown sampler 'cmaes'"),
    ("unknown metric", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\ntasks: {y1: {metric: auc}}\n", "tasks.y1.metric: unknown metric 'auc' for a regression task; valid names: mae, mse"),
    ("unknown task", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\ntasks: {y7: {metric: mse}}\n", "tasks.y7: unknown task 'y7'; valid names: y1, y2"),
    ("unknown weighting", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\ntraining: {weighting: {choice: [equal, magic]}}\n", "training.weighting: unknown weighting 'magic'"),
    ("unknown backbone kind", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nbackbone: {kind: transformer}\n", "backbone.kind: unknown backbone 'transformer'; valid names: conv, mlp, residual_conv, residual_mlp"),
    ("choice outside a knob's choices", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nbackbone: {activation: {choice: [relu, swish]}}\n", "backbone.activation: 'swish' is not allowed"),
    ("zero concurrency", "data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\nsearch: {concurrency: 0}\n", "search.concurrency: expected an integer >= 1, got 0"),
    ("plugin that cannot be imported", "plugins: [no_such_module_xyz]\ndata: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\n", "plugins: plugin 'no_such_module_xyz' could not be loaded: ModuleNotFoundError"),
]


@pytest.mark.parametrize("description,text,fragment", BAD_SPACES, ids=[b[0] for b in BAD_SPACES])
def test_bad_space_exits_2_naming_the_key(tmp_path, capsys, description, text, fragment):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    code, err = _validate(path, capsys)
    assert code == 2, err
    assert fragment in err, err
    assert "Traceback" not in err


def test_missing_file_exits_2(tmp_path, capsys):
    code, err = _validate(tmp_path / "absent.yaml", capsys)
    assert code == 2 and "cannot read space file" in err


def test_good_space_validates(tmp_path, capsys):
    code = main(["validate", str(tiny_space(tmp_path))])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ok" in captured.out and "tasks y1, y2" in captured.out and "strategies hard_sharing, mmoe" in captured.out


def test_command_line_prints_no_traceback(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("data: {dataset: synthetic_correlated}\nstrategies: {mmoe: {experts: {int: [8, 2]}}}\n")
    done = subprocess.run([sys.executable, "-m", "mtl_search.cli", "validate", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "strategies.mmoe.experts.int" in done.stderr and "Traceback" not in done.stderr


def test_bad_arguments_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", str(tiny_space(tmp_path)), "--trials", "0"])
    assert info.value.code == 2
    assert "--trials" in capsys.readouterr().err


def test_defaults_fill_everything_optional(tmp_path):
    from mtl_search.search.space import load_space

    path = tmp_path / "minimal.yaml"
    path.write_text("data: {dataset: synthetic_correlated}\nstrategies: {hard_sharing: {}}\n")
    space = load_space(path)
    assert space.experiment == "minimal"
    assert space.search.trials > 0 and space.search.sampler == "tpe" and space.search.concurrency == 1
    assert space.backbone_kind == "mlp" and space.epochs > 0 and space.ray.cpus_per_trial == 1.0
