"""The user's own table: loading, feature types, training-only statistics, masks, splits, the input layer, bad data."""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from mtl_search_plugins.hard_sharing import HardSharing

from mtl_search import Split, TrainConfig, Trainer
from mtl_search.cli import main
from mtl_search.config import TrialConfig
from mtl_search.data.features import TableFeatures
from mtl_search.data.tables import TableSpec, load_table
from mtl_search.nn.inputs import TabularInput
from mtl_search.registry import load_registry
from mtl_search.search.prepare import prepare
from mtl_search.search.setup import build_model
from mtl_search.search.space import load_space
from mtl_search.search.trial import TrialPlan
from mtl_search.training.weighting import Equal

REPO = Path(__file__).resolve().parents[1]
TASKS = {"price": {"kind": "regression"}, "bought": {"kind": "binary"}, "kind": {"kind": "multiclass"}}


def _table(rows: int = 60, seed: int = 0) -> dict[str, list]:
    """A small table: numeric a (some empty), b; categorical colour (text) and level (integer); three targets."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=rows)
    return {
        "id": list(range(rows)),
        "a": [None if i % 7 == 3 else float(v) for i, v in enumerate(a)],
        "b": list(rng.normal(10.0, 3.0, rows)),
        "colour": [["red", "green", "blue"][i % 3] for i in range(rows)],
        "level": [int(i % 4) for i in range(rows)],
        "user": [i // 3 for i in range(rows)],
        "price": [None if i % 5 == 0 else float(v) for i, v in enumerate(2 * a + 1)],
        "bought": [int(v > 0) for v in a],
        "kind": [["x", "y", "z"][i % 3] for i in range(rows)],
    }


def _write(tmp_path: Path, columns: dict[str, list], name: str = "t.csv") -> Path:
    path = tmp_path / name
    table = pa.table(columns)
    if name.endswith(".parquet"):
        pq.write_table(table, path)
    else:
        pcsv.write_csv(table, path)
    return path


def _spec(path: Path, **kwargs) -> TableSpec:
    return TableSpec(format="parquet" if path.suffix == ".parquet" else "csv", path=path, exclude=kwargs.pop("exclude", ["id"]), **kwargs)


def test_feature_types_labels_masks_and_counts(tmp_path):
    data = load_table(_spec(_write(tmp_path, _table()), exclude=["id", "user"]), TASKS)
    features = data.problem.features
    assert [f.name for f in features.numeric] == ["a", "b"]
    assert [f.name for f in features.categorical] == ["colour", "level"]  # text, and an integer with few levels
    assert features.categorical[0].categories == ("blue", "green", "red")
    assert [f.indicator for f in features.numeric] == [True, False]  # only a has missing values
    kinds = {t.name: (t.kind, t.classes) for t in data.problem.tasks}
    assert kinds == {"price": ("regression", 0), "bought": ("binary", 0), "kind": ("multiclass", 3)}
    # empty price cells are masked; the fully labelled targets carry no mask
    assert set(data.train.mask) == {"price"}
    counts = data.labelled_counts()
    assert sum(counts[s]["price"] for s in counts) == 48 and sum(counts[s]["bought"] for s in counts) == 60
    # x holds raw numerics with NaN where missing, then category codes (1-based; 0 is unknown)
    all_x = torch.cat([data.train.x, data.val.x, data.test.x])
    assert int(torch.isnan(all_x[:, 0]).sum()) == sum(i % 7 == 3 for i in range(60))
    assert set(all_x[:, 2].tolist()) == {1.0, 2.0, 3.0}


def test_parquet_loads_like_csv_and_projects_columns(tmp_path):
    columns = _table()
    csv_data = load_table(_spec(_write(tmp_path, columns), exclude=["id", "user"]), TASKS)
    pq_data = load_table(_spec(_write(tmp_path, columns, "t.parquet"), features=["a", "b", "colour", "level"]), TASKS)
    assert torch.equal(torch.nan_to_num(csv_data.train.x, 99.0), torch.nan_to_num(pq_data.train.x, 99.0))
    assert pq_data.problem.features.names == ["a", "b", "colour", "level"]


def test_standardisation_uses_training_statistics_only(tmp_path):
    columns = _table()
    columns["fold"] = ["train"] * 40 + ["val"] * 10 + ["test"] * 10
    first = load_table(_spec(_write(tmp_path, columns, "one.csv"), exclude=["id", "user"], split_column="fold"), TASKS)
    altered = copy.deepcopy(columns)
    for i in range(40, 60):  # change every val/test row's features, and add a category never seen in training
        altered["b"][i] *= 1000.0
        altered["a"][i] = None
        altered["colour"][i] = "purple"
    second = load_table(_spec(_write(tmp_path, altered, "two.csv"), exclude=["id", "user"], split_column="fold"), TASKS)
    assert first.problem.features == second.problem.features
    b = first.problem.features.numeric[1]
    assert b.mean == pytest.approx(float(np.mean(columns["b"][:40])))  # the training rows' mean, not the table's
    assert b.std == pytest.approx(float(np.std(columns["b"][:40])))
    layer = TabularInput(first.problem.features)
    assert torch.allclose(layer(first.train.x), layer(second.train.x))
    encoded = layer(first.train.x)
    assert encoded[:, 1].mean().abs() < 1e-5 and (encoded[:, 1].std(unbiased=False) - 1).abs() < 1e-4
    # the unseen category is the unknown code 0 at prediction, not an error
    assert set(second.test.x[:, 2].tolist()) == {0.0}


def test_input_layer_imputes_indicates_and_encodes(tmp_path):
    data = load_table(_spec(_write(tmp_path, _table()), exclude=["id", "user"]), TASKS)
    features = data.problem.features
    mean_a = features.numeric[0].mean
    x = torch.tensor([[float("nan"), features.numeric[1].mean, 3.0, 0.0], [mean_a + features.numeric[0].std, 0.0, 0.0, 2.0]])
    onehot = TabularInput(features, "onehot")(x)
    # a (imputed 0, indicator 1), b, indicator of a, colour one-hot (4 codes), level one-hot (5 codes)
    assert onehot.shape == (2, 2 + 1 + 4 + 5)
    assert onehot[0, :3].tolist() == [0.0, 0.0, 1.0] and onehot[1, 0].item() == pytest.approx(1.0) and onehot[1, 2] == 0
    assert onehot[0, 3:7].tolist() == [0, 0, 0, 1] and onehot[1, 3:7].tolist() == [1, 0, 0, 0]  # red; unknown
    assert onehot[0, 7:].tolist() == [1, 0, 0, 0, 0] and onehot[1, 7:].tolist() == [0, 0, 1, 0, 0]
    embedded = TabularInput(features, "embedding", embedding_dim=3)
    out = embedded(x)
    assert out.shape == (2, 3 + 2 * 3)
    offsets = embedded.offsets.tolist()
    assert torch.equal(out[0, 3:6], embedded.embedding.weight[offsets[0] + 3]) and torch.equal(out[1, 6:9], embedded.embedding.weight[offsets[1] + 2])
    # the statistics and vocabularies are saved with the model and come back from a weights-only load
    buffer = io.BytesIO()
    torch.save(embedded.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert {"mean", "std"} <= set(state)
    restored = TabularInput(TableFeatures((), ()), "embedding", embedding_dim=3)
    restored.set_extra_state(state["_extra_state"])
    assert restored.features == features
    new_row = restored.features.encode(pa.table({"a": [None], "b": [1.0], "colour": ["red"], "level": [7]}))
    assert torch.isnan(new_row[0, 0]) and new_row[0, 1:].tolist() == [1.0, 3.0, 0.0]  # level 7 was never seen: unknown


@pytest.mark.parametrize("name", ["hard_sharing", "mmoe"])
@pytest.mark.parametrize("encoding", ["onehot", "embedding"])
def test_every_strategy_trains_on_a_table(tmp_path, name, encoding):
    """The input layer sits in front of any strategy's model: it trains, predicts, and keeps its statistics fixed."""
    strategy = load_registry().strategies[name]
    knobs = {k: knob.suggest(_Lowest(), k, {"depth": 2}) for k, knob in strategy.knobs.items()}
    data = load_table(_spec(_write(tmp_path, _table()), exclude=["id", "user"]), TASKS)
    parts = TrialConfig(name, knobs=knobs, backbone={"depth": 2, "width": 8}, inputs={"encoding": encoding, "embedding_dim": 3})
    model = build_model(data.problem, strategy, _mlp_kind(), parts)
    assert type(model).__module__.startswith("mtl_search_plugins")  # the strategy's own model, no wrapper
    input_layer = next(m for m in model.modules() if isinstance(m, TabularInput))
    trainer = Trainer(data, TrainConfig(epochs=1, batch_size=16), Equal(data.problem.task_names))
    before = copy.deepcopy(input_layer.state_dict())
    losses = trainer.train_epoch(model, trainer.make_optimizer(model), 1)
    assert all(np.isfinite(v) for v in losses.values())
    predictions = trainer.predict(model, data.val)
    assert predictions["kind"].shape == (len(data.val), 3) and predictions["price"].shape[0] == len(data.val)
    if encoding == "embedding":  # the embeddings are trained with the model
        assert not torch.equal(before["embedding.weight"], input_layer.embedding.weight)
    assert torch.equal(before["mean"], input_layer.mean)  # statistics stay fixed
    copied = copy.deepcopy(model)  # the model copies (early stopping, checkpoints) like any module
    assert torch.equal(copied(data.val.x[:4])["price"], model(data.val.x[:4])["price"])


def test_masked_rows_give_no_gradient_in_a_training_step(tmp_path):
    """One training step on a table whose labels cover half the rows equals one step on that half alone."""
    columns = _table(rows=40)
    columns["price"] = [0.1 * i for i in range(40)]  # every task labelled on exactly the even rows
    labelled = [i % 2 == 0 for i in range(40)]
    for task in TASKS:
        columns[task] = [v if keep else None for v, keep in zip(columns[task], labelled)]
    columns["fold"] = ["train"] * 30 + ["val"] * 5 + ["test"] * 5
    full = load_table(_spec(_write(tmp_path, columns), exclude=["id", "user"], split_column="fold"), TASKS)
    train = full.train
    for task in TASKS:  # the unlabelled rows carry garbage; a leak of them would change the step
        train.y[task][~train.mask[task]] = 1
    labelled_rows = torch.nonzero(train.mask["price"]).view(-1)
    half = Split(train.x[labelled_rows], {t: y[labelled_rows] for t, y in train.y.items()})

    def one_step(split: Split) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(full.problem, HardSharing(), _mlp_kind(), TrialConfig(
            "hard_sharing", knobs={"shared_depth": 1, "tower_width": 4}, backbone={"depth": 2, "width": 8},
            inputs={"encoding": "embedding", "embedding_dim": 2}))
        trainer = Trainer(full, TrainConfig(epochs=1, batch_size=1000, lr=0.05), Equal(full.problem.task_names))
        # plain SGD: Adam's first step is lr * sign(gradient), which turns rounding noise on zero gradients into full steps
        trainer.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.5), 1, split)
        return {name: p.detach() for name, p in model.named_parameters()}

    half_step = one_step(half)
    for name, value in one_step(train).items():
        assert torch.allclose(value, half_step[name], atol=1e-6), name
    # control: the same rows without masks (the garbage labels used) give a different step
    leaked = one_step(Split(train.x, train.y))
    assert not torch.allclose(leaked["towers.price.2.weight"], half_step["towers.price.2.weight"])


class _Lowest:
    """Stands in for an Optuna trial: every knob takes its lowest value (first choice)."""

    def suggest_int(self, name, low, high, log=False):
        return low

    def suggest_float(self, name, low, high, log=False):
        return low

    def suggest_categorical(self, name, choices):
        return choices[0]


def _mlp_kind():
    from mtl_search.nn.backbones import MLP_KNOBS, BackboneKind, build_mlp

    return BackboneKind("mlp", MLP_KNOBS, build_mlp)


def test_group_split_keeps_each_group_in_one_split(tmp_path):
    # user is also a (numeric) feature here, so each split's users can be read back from x
    spec = _spec(_write(tmp_path, _table(rows=300)), exclude=["id"], features=["a", "b", "user"], numeric=["user"], group_column="user")
    data = load_table(spec, TASKS)
    index = [f.name for f in data.problem.features.numeric].index("user")
    users = [set(split.x[:, index].tolist()) for split in (data.train, data.val, data.test)]
    assert not (users[0] & users[1]) and not (users[0] & users[2]) and not (users[1] & users[2])
    assert 0.6 < len(data.train) / 300 < 0.8


def test_stratified_split_keeps_class_proportions(tmp_path):
    columns = _table(rows=200)
    columns["bought"] = [int(i % 10 == 0) for i in range(200)]  # 10% positives
    data = load_table(_spec(_write(tmp_path, columns), exclude=["id", "user"], split=_split(stratify="bought")), TASKS)
    for split, size in ((data.val, 30), (data.test, 30)):
        assert len(split) == size and int(split.y["bought"].sum()) == 3


def _split(**kwargs):
    from mtl_search.data.tables import SplitSpec

    return SplitSpec(**kwargs)


def _space(tmp_path: Path, data: str, tasks: str = "price: {kind: regression}\n  bought: {kind: binary}") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"data:\n  {data}\ntasks:\n  {tasks}\nstrategies: {{hard_sharing: {{}}}}\n")
    return path


BAD_DATA = [
    # (description, table change, data lines, tasks, expected message)
    ("missing file", None, "csv: absent.csv", None, "data.csv: no such file:"),
    ("unknown feature column", {}, "csv: t.csv\n  features: [a, bb]", None, "data.features: unknown column 'bb'; columns of t.csv: id, a, b"),
    ("unknown excluded column", {}, "csv: t.csv\n  exclude: [idd]", None, "data.exclude: unknown column 'idd'"),
    ("unknown target column", {}, "csv: t.csv", "prize: {kind: regression}", "tasks.prize: unknown column 'prize'"),
    ("target with one class", {"bought": [1] * 60}, "csv: t.csv", None, "tasks.bought: target 'bought' has one class ('1'); a binary task needs at least two"),
    ("regression target with text", {"price": ["cheap"] + ["1.5"] * 59}, "csv: t.csv", None,
     "tasks.price: a regression target needs numbers; column 'price' holds 'cheap'"),
    ("task with no labels in a split", {"fold": ["train"] * 40 + ["val"] * 10 + ["test"] * 10, "bought": [1, 0] * 20 + [1, 0] * 5 + [None] * 10},
     "csv: t.csv\n  split_column: fold", None, "tasks.bought: no labelled rows in the test split"),
    ("bad split column value", {"fold": ["train"] * 50 + ["holdout"] * 10}, "csv: t.csv\n  split_column: fold", None,
     "data.split_column: column 'fold' must hold train, val or test; it holds holdout"),
    ("binary target with three classes", {}, "csv: t.csv", "kind: {kind: binary}", "tasks.kind: a binary target has two classes; 'kind' has 3"),
    ("task without kind", {}, "csv: t.csv", "price: {metric: mae}", "tasks.price.kind: missing; a task of a table needs a kind"),
    ("infinite target values", {"price": [float("inf"), 1.0, float("-inf")] + [1.0] * 57}, "csv: t.csv", None,
     "tasks.price: target column 'price' holds 2 non-finite values (inf or -inf; first in data row 1)"),
    ("infinite feature value", {"b": [1.0] * 9 + [float("inf")] + [1.0] * 50}, "csv: t.csv", None,
     "data.csv: feature column 'b' holds 1 non-finite value (inf or -inf; first in data row 10)"),
    ("feature with no values", {"a": [None] * 60}, "csv: t.csv", None,
     "data.csv: feature column 'a' has no values (all 60 rows are empty); leave it out with data.exclude: [a]"),
    ("inputs without categories", {}, "csv: t.csv\n  features: [a, b]\ninputs: {encoding: onehot}", None,
     "inputs: the data set has no categorical features"),
]


@pytest.mark.parametrize("description,change,data,tasks,fragment", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_exits_2_before_any_trial(tmp_path, capsys, description, change, data, tasks, fragment):
    if change is not None:
        _write(tmp_path, {**_table(), **change})
    path = _space(tmp_path, data, tasks) if tasks else _space(tmp_path, data)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err, err
    assert "Traceback" not in err


def test_a_class_with_few_rows_in_a_split_is_warned_about(tmp_path, capsys):
    _write(tmp_path, {**_table(), "bought": [1] * 57 + [0] * 3})
    path = _space(tmp_path, "csv: t.csv", "price: {kind: regression}\n  bought: {kind: binary, metric: logloss}")
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: tasks.bought: fewer than 5 labelled rows of a class in a split (class 0: 2 in train, 0 in val, 1 in test)" in err, err
    _write(tmp_path, _table(rows=200))  # about 15 rows of each class in each of val and test
    assert main(["validate", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_csv_starting_with_a_byte_order_mark_loads_its_first_column_by_name(tmp_path):
    plain = _write(tmp_path, _table(), "plain.csv")
    marked = tmp_path / "marked.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())  # as spreadsheet programs save "CSV UTF-8"
    dataset = load_table(_spec(marked, exclude=[], features=["id", "a"]), TASKS)
    assert dataset.problem.features.names == load_table(_spec(plain, exclude=[], features=["id", "a"]), TASKS).problem.features.names


def test_the_positive_class_is_the_last_value_or_the_one_the_space_names_and_validate_shows_it(tmp_path, capsys):
    path = _write(tmp_path, {**_table(), "b": [3.5] * 60})
    default = load_table(_spec(path), TASKS)
    named = load_table(_spec(path), {**TASKS, "bought": {"kind": "binary", "positive": 0}})
    assert default.problem.task("bought").labels == ("0", "1") and named.problem.task("bought").labels == ("1", "0")
    assert torch.equal(named.train.y["bought"], 1 - default.train.y["bought"])  # class 1 is the named one
    assert main(["validate", str(_space(tmp_path, "csv: t.csv\n  exclude: [id]", "price: {kind: regression}\n  bought: {kind: binary, positive: 0}"))]) == 0
    out = capsys.readouterr().out
    assert "bought: target, binary (auc); positive class (1): '0', negative (0): '1'" in out
    assert "level: feature, categorical (4 values: '0', '1', '2', '3'); data.numeric: [level] reads it as a number" in out
    assert "b: feature, numeric; warning: constant in the training rows, it carries no information (data.exclude: [b] leaves it out)" in out
    assert "a: feature, numeric\n" in out and "colour: feature, categorical (3 values: 'blue', 'green', 'red')" in out
    assert main(["validate", str(_space(tmp_path, "csv: t.csv", "bought: {kind: binary, positive: maybe}"))]) == 2
    assert "tasks.bought.positive: 'maybe' is not a value of column 'bought'; its values: 0, 1" in capsys.readouterr().err


def test_shipped_space_validates_from_another_directory(tmp_path, monkeypatch, capsys):
    """Relative paths in a space are resolved against the space file, not the working directory."""
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(REPO / "search_spaces" / "tabular_csv.yaml")]) == 0
    out = capsys.readouterr().out
    assert "tasks revenue, clicked, segment" in out and "labelled rows per task: revenue" in out
    plan, data, _ = prepare(load_space(REPO / "search_spaces" / "tabular_csv.yaml"))
    assert set(plan.inputs) == {"encoding", "embedding_dim"}
    assert [f.name for f in data.problem.features.categorical] == ["region"]
    assert any(not bool(m.all()) for m in data.train.mask.values())  # some labels are missing


@pytest.mark.parametrize("script, table", [("make_tabular_csv", "tabular.csv"), ("make_funnel_csv", "funnel.csv")])
def test_shipped_csv_is_what_its_script_writes(tmp_path, script, table):
    import importlib.util

    spec = importlib.util.spec_from_file_location(script, REPO / "search_spaces" / "data" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pcsv.write_csv(module.make_table(), tmp_path / "fresh.csv")
    assert (tmp_path / "fresh.csv").read_bytes() == (REPO / "search_spaces" / "data" / table).read_bytes()


def test_a_trial_on_the_shipped_table_samples_the_encoding():
    """Optuna's define-by-run space holds the input layer's knobs; a trial decodes them and trains behind that layer."""
    import optuna

    from mtl_search.search.sampling import TrialSpace
    from mtl_search.search.trial import train_trial

    space = load_space(REPO / "search_spaces" / "tabular_csv.yaml")
    space.epochs = 1
    plan, data, _ = prepare(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    configs = [TrialSpace(plan)(study.ask()) for _ in range(6)]
    assert {c["inputs.encoding"] for c in configs} == {"onehot", "embedding"}
    config = next(c for c in configs if c["inputs.encoding"] == "embedding")
    trial_plan = TrialPlan(plan.problem, {n: s for n, (s, _) in plan.strategies.items()}, plan.backbone_kind,
                           {n: cls for n, (cls, _) in plan.weightings.items()}, 1, 0, 0, 1, 0)
    reports = []
    result = train_trial(config, data, trial_plan, lambda metrics, checkpoint_dir=None: reports.append(metrics))
    assert all(np.isfinite(result[f"val/{t}"]) for t in ("revenue", "clicked", "segment"))
    assert result["params"] > 0 and reports[-1]["final"]


def test_loading_benchmark_quick_mode(tmp_path):
    from benchmarks.table_loading import main as benchmark

    benchmark(["--quick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "table_loading.json").read_text())
    assert [r["format"] for r in report["results"]] == ["csv", "parquet"]
    for row in report["results"]:
        assert row["rows"] == 20_000 and row["columns"] == 50
        assert row["load_s"] > 0 and row["peak_mib"] >= row["added_mib"] >= 0 and row["tensor_mib"] > 0
    assert "| csv | 20,000 x 50 |" in (tmp_path / "table_loading.md").read_text()


def test_readme_dataset_plugin_example_registers_and_builds():
    """The register_datasets example of docs/plugins.md, run as written: a space can name it and its options."""
    import types

    text = (REPO / "docs" / "plugins.md").read_text()
    section = text[text.index("## 7. Named data sets from a plugin"):]
    code = section[section.index("```python") + len("```python"): section.index("```", section.index("```python") + 3)]
    module = types.ModuleType("readme_dataset_plugin")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    registry = load_registry(extra=[("readme_dataset_plugin", module)])
    entry = registry.datasets["noisy_parity"]
    data = entry.factory(**{**entry.options, "samples": 200})
    assert [t.kind for t in data.problem.tasks] == ["binary", "regression"]
    assert torch.equal(data.train.y["ones"], data.train.x.sum(1))
    assert len(data.train) + len(data.val) + len(data.test) == 200


def test_a_table_model_reloads_and_predicts_from_the_raw_columns(ray_session, workdir, capsys):
    """`mtl-search run` on a table, then `predict` on the raw columns (text categories, blanks) of new rows."""
    from mtl_search import load_model, predict
    from mtl_search.data.tables import read_feature_columns
    from mtl_search.testing import contract_table

    path = contract_table(workdir, rows=120)
    (workdir / "space.yaml").write_text(
        "experiment: table\ndata: {csv: contract_table.csv}\n"
        "tasks: {reg: {kind: regression}, bin: {kind: binary}, cls: {kind: multiclass}}\n"
        "backbone: {kind: mlp, depth: 2, width: 8}\nstrategies: {hard_sharing: {shared_depth: 1}}\n"
        "training: {epochs: 1, batch_size: 32}\nsearch: {trials: 2, concurrency: 1}\nbaseline: {mode: fixed}\n")
    assert main(["run", "space.yaml"]) == 0
    capsys.readouterr()
    assert main(["report", "--format", "json"]) == 0
    front = [t for t in json.loads(capsys.readouterr().out)["trials"] if t["pareto"]]
    run_id = front[0]["run_id"]
    new_rows = workdir / "new.csv"
    new_rows.write_text("colour,b,a,unused\nred,0.5,,x\n,1.0,2.0,y\npurple,-1,0.1,z\n")  # columns reordered, blanks, an unseen category
    assert main(["predict", run_id, str(new_rows), "--output", "out.csv"]) == 0
    err = capsys.readouterr().err
    assert "warning: column 'colour': 1 blank and 1 unseen ('purple') of 3 rows get the unknown category" in err, err
    rows = pcsv.read_csv(workdir / "out.csv").to_pylist()
    assert set(rows[0]) == {"reg", "bin:1", "cls", "cls:h", "cls:l", "cls:m"}  # each probability names its class
    assert all(row["cls"] in ("h", "l", "m") for row in rows)
    model = load_model(run_id)
    expected = predict(model, read_feature_columns(new_rows, model.problem.features))
    assert len(rows) == 3
    for row, reg, p in zip(rows, expected["reg"], expected["bin"]):
        assert row["reg"] == pytest.approx(float(reg), abs=1e-5) and row["bin:1"] == pytest.approx(float(p), abs=1e-5)
    assert main(["predict", run_id, str(new_rows), "--output", "/proc/nope/out.csv"]) == 2  # a folder that cannot be written
    err = capsys.readouterr().err
    assert "--output /proc/nope/out.csv: cannot write the predictions there" in err and "Traceback" not in err
    (workdir / "bad.csv").write_text("a,colour\n1,red\n")
    assert main(["predict", run_id, str(workdir / "bad.csv")]) == 2
    assert "lacks" in capsys.readouterr().err and "b" in path.read_text().splitlines()[0]


def test_lasem_sequential_on_a_table_trains_one_task_at_a_time(tmp_path):
    """The strategy's own model, not a wrapper: sequential mode's active task reaches the E-step."""
    from mtl_search.nn.create import create_model
    from mtl_search.testing import TABLE_TASKS, contract_table

    data = load_table(TableSpec("csv", contract_table(tmp_path, rows=80)), TABLE_TASKS)
    registry = load_registry()
    model = create_model(data.problem, registry.strategies["lasem"], registry.backbones["mlp"],
                         {"groups": 2, "tower_width": 4, "prior": "running_mean", "mode": "sequential"}, {"depth": 2, "width": 8})
    seen = []

    class Spy(Trainer):
        def train_epoch(self, model, optimizer, epoch, split=None):
            seen.append(sorted(model.task_losses(self.dataset.train.subset(torch.arange(8)))))
            return super().train_epoch(model, optimizer, epoch, split)

    registry.strategies["lasem"].fit(model, Spy(data, TrainConfig(epochs=1, batch_size=32), Equal(data.problem.task_names)))
    assert seen == [["reg"], ["bin"], ["cls"]]
