"""Test helpers for plugin authors: check a Strategy against the contract on a tiny problem.

::

    from mtl_search.testing import check_strategy

    def test_my_strategy_meets_the_contract():
        check_strategy(MyStrategy())

``check_strategy`` raises ``AssertionError`` naming the broken promise.
"""
from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from .data.dataset import Dataset, make_dataset
from .data.problem import Problem, Task
from .nn.backbones import Backbone, BackboneKind
from .nn.model import MultiTaskModel, SharingMap
from .strategy import Strategy
from .training.trainer import TrainConfig, Trainer, seed_everything
from .training.weighting import Weighting

ROWS = 384


def contract_problem(input_shape: tuple[int, ...]) -> Problem:
    """Three tasks, one of each kind, on inputs of ``input_shape``."""
    return Problem(tuple(input_shape), (Task("reg", "regression"), Task("bin", "binary"), Task("cls", "multiclass", "accuracy", 3)))


def contract_dataset(input_shape: tuple[int, ...], seed: int = 0) -> Dataset:
    """A learnable data set: every task is a simple function of the inputs."""
    x, z = _inputs_and_scores(input_shape, seed)
    y = {"reg": z[:, 0], "bin": (z[:, 1] > 0).float(), "cls": torch.bucketize(z[:, 2].contiguous(), torch.tensor([-0.4, 0.4]))}
    return make_dataset(contract_problem(input_shape), x, y, val=0.25, test=0.25, seed=seed)


def _inputs_and_scores(input_shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ROWS`` random inputs and three linear scores of them, from which the tasks' labels are made."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, *input_shape, generator=g)
    flat = x.flatten(1)
    return x, flat @ (torch.randn(flat.shape[1], 3, generator=g) / math.sqrt(flat.shape[1]))


def funnel_contract_problem(input_shape: tuple[int, ...]) -> Problem:
    """A regression task and a click -> conversion funnel (``conv`` after ``bin``) on inputs of ``input_shape``."""
    return Problem(tuple(input_shape), (Task("reg", "regression"), Task("bin", "binary"), Task("conv", "binary", after="bin")))


def funnel_contract_dataset(input_shape: tuple[int, ...], seed: int = 0) -> Dataset:
    """Like :func:`contract_dataset`, with ``conv`` (a simple function of the inputs) observed only where ``bin`` is 1."""
    x, z = _inputs_and_scores(input_shape, seed)
    y = {"reg": z[:, 0], "bin": (z[:, 1] > 0).float(), "conv": (z[:, 2] > 0).float()}
    return make_dataset(funnel_contract_problem(input_shape), x, y, val=0.25, test=0.25, seed=seed)


def _declines_plain(strategy: Strategy) -> bool:
    """Whether ``strategy.check_problem`` rejects the plain contract problem (then the funnel one is used)."""
    from .errors import SpaceError

    try:
        strategy.check_problem(strategy.knobs, contract_problem((8,)), f"strategies.{strategy.name}")
    except SpaceError:
        return True
    return False


def contract_problem_for(strategy: Strategy, input_shape: tuple[int, ...]) -> Problem:
    """The contract problem ``strategy`` models: the plain one, or the funnel one for a strategy that declines it."""
    return funnel_contract_problem(input_shape) if _declines_plain(strategy) else contract_problem(input_shape)


def contract_dataset_for(strategy: Strategy, input_shape: tuple[int, ...], seed: int = 0) -> Dataset:
    """The contract data set ``strategy`` is checked on (see :func:`contract_problem_for`)."""
    from .errors import SpaceError

    if not _declines_plain(strategy):
        return contract_dataset(input_shape, seed)
    try:
        strategy.check_problem(strategy.knobs, funnel_contract_problem(input_shape), f"strategies.{strategy.name}")
    except SpaceError as funnel:
        raise AssertionError(f"{strategy.name}: check_problem rejects both contract problems (the funnel one: {funnel})") from None
    return funnel_contract_dataset(input_shape, seed)


def small_model(strategy: Strategy, backbones: dict[str, BackboneKind]) -> tuple[MultiTaskModel, Dataset]:
    """The strategy's smallest model (``nn.create.smallest_configuration``) on its first supported kind of ``backbones``, and the contract data set.

    Built by the one model factory; a funnel strategy (``check_problem`` refuses the plain
    contract problem) gets the funnel data set.
    """
    from .nn.create import create_model, smallest_configuration

    kind = next(k for k in backbones.values() if strategy.supports(k.name))
    seed_everything(0)
    data = contract_dataset_for(strategy, default_input_shape(kind))
    params, backbone_params, _ = smallest_configuration(data.problem, strategy.knobs, kind)
    return create_model(data.problem, strategy, kind, params, backbone_params), data


def default_input_shape(kind: BackboneKind) -> tuple[int, ...]:
    """Inputs a backbone kind accepts: images (1, 8, 8) for kinds with a ``channels`` knob, else vectors of 8."""
    return (1, 8, 8) if "channels" in kind.knobs else (8,)


def check_strategy(strategy: Strategy, backbones: dict[str, BackboneKind] | None = None,
                   params: dict[str, Any] | None = None, epochs: int = 6) -> None:
    """Check ``strategy`` on every registered backbone kind it supports.

    For each kind: it builds a MultiTaskModel; forward gives one prediction per task of the
    right shape; ``regularization()`` is a finite scalar; every sharing map has the tasks as
    rows and values in [0, 1]; training (through ``Strategy.fit``) lowers the training loss;
    the state dict survives ``torch.save`` / ``torch.load(weights_only=True)`` into a fresh
    build with identical predictions. ``params`` overrides the knob values used. A strategy
    whose ``check_problem`` declines the plain contract problem (three tasks, one per kind)
    is checked on a problem with a funnel (``conv`` after ``bin``) instead.

    Then the table pass, on the first vector kind it supports: a CSV table with numeric,
    categorical and missing feature values and a missing label is loaded as a user's table
    is (with a ``conv`` column after ``bin`` for a funnel strategy); the model is built by the
    one model factory, trained through ``Strategy.fit``, saved as a trial saves it, reloaded
    through the public loader, and predicts from the raw columns exactly what it predicted
    before saving.
    """
    assert isinstance(strategy, Strategy), f"{strategy!r} is not a mtl_search.Strategy"
    assert strategy.name and strategy.family, "a strategy needs a name and a family"
    if backbones is None:
        from .registry import load_registry

        backbones = load_registry().backbones
    kinds = [k for k in backbones.values() if strategy.supports(k.name)]
    assert kinds, f"strategy {strategy.name!r} supports none of the backbone kinds {sorted(backbones)}"
    for kind in kinds:
        _check_on(strategy, kind, params or {}, epochs)
    vector_kinds = [k for k in kinds if k.input_ranks is None or 1 in k.input_ranks]
    if vector_kinds:
        _check_table(strategy, vector_kinds[0], params or {}, min(epochs, 2))


def _check_on(strategy: Strategy, kind: BackboneKind, overrides: dict[str, Any], epochs: int) -> None:
    where = f"{strategy.name} on {kind.name}"
    from .nn.create import smallest_configuration

    seed_everything(0)
    input_shape = default_input_shape(kind)
    data = contract_dataset_for(strategy, input_shape)
    problem = data.problem
    params, backbone_params, _ = smallest_configuration(problem, strategy.knobs, kind)
    params |= overrides
    backbone = kind.build(input_shape, **backbone_params)

    model = _build(strategy, problem, backbone, params, where)
    out = model(data.train.x[:5])
    assert isinstance(out, dict) and sorted(out) == sorted(problem.task_names), f"{where}: forward must return one prediction per task, got {sorted(out) if isinstance(out, dict) else type(out)}"
    for task in problem.tasks:
        assert tuple(out[task.name].shape) == (5, task.output_dim), f"{where}: prediction of {task.name} has shape {tuple(out[task.name].shape)}, expected (5, {task.output_dim})"
    reg = model.regularization()
    assert isinstance(reg, torch.Tensor) and reg.dim() == 0 and torch.isfinite(reg), f"{where}: regularization() must be a finite scalar tensor, got {reg!r}"

    _check_sharing_maps(model, data.val.x, problem, where)

    trainer = Trainer(data, TrainConfig(epochs=epochs, batch_size=32, lr=5e-3, patience=epochs), _SumOfLosses(problem.task_names))
    before = _train_loss(trainer, model)
    model = strategy.fit(model, trainer)
    after = _train_loss(trainer, model)
    assert after < before, f"{where}: training did not lower the loss ({before:.4f} -> {after:.4f})"
    _check_sharing_maps(model, data.val.x, problem, where)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = _build(strategy, problem, backbone, params, where)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval()
    fresh.eval()
    with torch.no_grad():
        a, b = model(data.test.x), fresh(data.test.x)
    for task in problem.task_names:
        assert torch.allclose(a[task], b[task], atol=1e-5), f"{where}: predictions of {task} differ after a save/load round trip"


TABLE_TASKS = {"reg": {"kind": "regression"}, "bin": {"kind": "binary"}, "cls": {"kind": "multiclass"}}


FUNNEL_TABLE_TASKS = {**TABLE_TASKS, "conv": {"kind": "binary", "after": "bin"}}


def contract_table(directory: Path, rows: int = 160, seed: int = 0, funnel: bool = False) -> Path:
    """A CSV like a user's: two numeric columns (one with blanks), a text category (with blanks), three targets, a missing label.

    ``funnel``: a fourth target ``conv`` (binary, meaningful where ``bin`` is 1).
    """
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(rows, generator=g), torch.randn(rows, generator=g)
    colours = ["red", "green", "blue"]
    colour = torch.randint(0, 3, (rows,), generator=g)
    z = a + 0.5 * b + colour.float() - 1
    lines = ["a,b,colour,reg,bin,cls" + (",conv" if funnel else "")]
    for i in range(rows):
        cells = [f"{a[i]:.4f}" if i % 7 else "", f"{b[i]:.4f}", colours[colour[i]] if i % 11 else "",
                 f"{z[i]:.4f}" if i % 5 else "", str(int(z[i] > 0)), "lmh"[int(torch.bucketize(z[i], torch.tensor([-0.5, 0.5])))]]
        if funnel:
            cells.append(str(int(b[i] > 0)))
        lines.append(",".join(cells))
    path = Path(directory) / "contract_table.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_table_model(strategy: Strategy, kind: BackboneKind, directory: Path, overrides: dict[str, Any] | None = None,
                      epochs: int = 1) -> tuple[MultiTaskModel, dict[str, Any], Path]:
    """A tiny model of ``strategy`` trained on :func:`contract_table` in ``directory``: (model in eval mode, its trial configuration, the CSV).

    The table has numeric, categorical and missing feature values (a ``conv`` funnel column for
    a funnel strategy); the model is built by the one model factory at the smallest values of
    its knobs and trained through ``Strategy.fit``, as a trial is.
    """
    from .data.tables import SplitSpec, TableSpec, load_table
    from .nn.create import create_model, smallest_configuration

    seed_everything(0)
    funnel = _declines_plain(strategy)
    path = contract_table(Path(directory), funnel=funnel)
    data = load_table(TableSpec("csv", path, split=SplitSpec(val=0.25, test=0.25)), FUNNEL_TABLE_TASKS if funnel else TABLE_TASKS)
    problem = data.problem
    params, backbone_params, _ = smallest_configuration(problem, strategy.knobs, kind)
    params |= overrides or {}
    config = {"strategy": strategy.name, **{f"{strategy.name}.{k}": v for k, v in params.items()},
              **{f"backbone.{k}": v for k, v in backbone_params.items()}}
    model = create_model(problem, strategy, kind, params, backbone_params)
    assert isinstance(model, MultiTaskModel), f"{strategy.name}: build() must return a MultiTaskModel, got {type(model).__name__}"
    trainer = Trainer(data, TrainConfig(epochs=epochs, batch_size=32, lr=5e-3, patience=epochs), _SumOfLosses(problem.task_names))
    return strategy.fit(model, trainer).eval(), config, path


def _check_table(strategy: Strategy, kind: BackboneKind, overrides: dict[str, Any], epochs: int) -> None:
    from types import SimpleNamespace

    from .data.tables import read_feature_columns
    from .results.saved_models import load_model, save_model

    where = f"{strategy.name} on a table ({kind.name})"
    with tempfile.TemporaryDirectory() as tmp:
        model, config, path = train_table_model(strategy, kind, Path(tmp), overrides, epochs)
        problem = model.problem
        assert problem.features is not None and problem.features.categorical
        x = read_feature_columns(path, problem.features)
        with torch.no_grad():
            before = model(x)
        assert all(torch.isfinite(before[t]).all() for t in problem.task_names), f"{where}: predictions on raw rows with blanks are not finite"
        saved = Path(tmp) / "model"
        saved.mkdir()
        save_model(saved, model, config, problem, kind.name)
        registry = SimpleNamespace(strategies={strategy.name: strategy}, backbones={kind.name: kind})
        loaded = load_model(str(saved), registry=registry)
        with torch.no_grad():
            after = loaded(read_feature_columns(path, problem.features))
    for task in problem.task_names:
        assert torch.allclose(before[task], after[task], atol=1e-6), f"{where}: the reloaded model predicts {task} differently"


def _build(strategy: Strategy, problem: Problem, backbone: Backbone, params: dict[str, Any], where: str) -> MultiTaskModel:
    model = strategy.build(problem, backbone, dict(params))
    assert isinstance(model, MultiTaskModel), f"{where}: build() must return a MultiTaskModel, got {type(model).__name__}"
    return model


def _check_sharing_maps(model: MultiTaskModel, x: torch.Tensor, problem: Problem, where: str) -> None:
    model.eval()
    with torch.no_grad():
        maps = model.sharing_map(x)
    assert isinstance(maps, dict) and maps, f"{where}: sharing_map(x) must return at least one named SharingMap"
    for name, smap in maps.items():
        assert isinstance(smap, SharingMap), f"{where}: sharing map {name!r} is a {type(smap).__name__}, not a SharingMap"
        assert smap.rows == problem.task_names, f"{where}: sharing map {name!r} rows {smap.rows} are not the tasks {problem.task_names}"
        values = smap.values
        assert torch.isfinite(values).all() and values.min() >= 0 and values.max() <= 1, f"{where}: sharing map {name!r} has values outside [0, 1]"


def _train_loss(trainer: Trainer, model: MultiTaskModel) -> float:
    return sum(trainer.evaluate(model, trainer.dataset.train).losses.values())


class _SumOfLosses(Weighting):
    """The plain sum of the task losses (the core cannot rely on the built-in ``equal`` plugin)."""

    name = "sum_of_losses"

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(losses.values())
