"""Training registered strategies on the MMoE synthetic data set, as the MMoE and PLE reproductions need.

A model is a registered strategy with given knobs on an MLP backbone, built and trained by
the project's own Trainer (equal weighting, AdamW, early stopping on validation), on a
fresh draw of ``synthetic_correlated`` whose seed also seeds the initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mtl_search.registry import Registry


@dataclass(frozen=True)
class Model:
    """A strategy, its knobs and its backbone (an MLP of ``depth`` x ``width``)."""

    label: str
    strategy: str
    knobs: dict[str, Any]
    width: int = 16
    depth: int = 1


@dataclass(frozen=True)
class Training:
    samples: int = 10000
    epochs: int = 40
    patience: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    input_dim: int = 100
    options: dict[str, Any] = field(default_factory=dict)


def build(registry: Registry, model: Model, problem: Any) -> Any:
    """The untrained MultiTaskModel; knobs the model does not set take their small value."""
    strategy = registry.strategies[model.strategy]
    backbone_params = {"depth": model.depth, "width": model.width}
    backbone = registry.backbones["mlp"].build(problem.input_shape, **backbone_params)
    knobs = {name: model.knobs.get(name, knob.smallest(backbone_params)) for name, knob in strategy.knobs.items()}
    return strategy.build(problem, backbone, knobs)


def draw_options(training: Training, correlation: float, seed: int) -> dict[str, Any]:
    """The ``synthetic_correlated`` options of one draw of the data (the data set's defaults under ``training``'s)."""
    return {**training.options, "correlation": correlation, "samples": training.samples, "input_dim": training.input_dim, "seed": seed}


def test_losses(registry: Registry, model: Model, correlation: float, seed: int, training: Training,
                on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` on a fresh draw (data and init from ``seed``); its test MSE per task and its parameter count.

    ``on_step`` is the Trainer's: it sees every optimiser step's loss per task.
    """
    from mtl_search import TrainConfig, Trainer
    from mtl_search.training.trainer import seed_everything

    dataset = registry.datasets["synthetic_correlated"]
    data = dataset.factory(**{**dataset.options, **draw_options(training, correlation, seed)})
    seed_everything(seed)
    net = build(registry, model, data.problem)
    trainer = Trainer(data, TrainConfig(epochs=training.epochs, patience=training.patience, batch_size=training.batch_size,
                                        lr=training.lr, seed=seed), registry.weightings["equal"](data.problem.task_names),
                      on_step=on_step)
    net = registry.strategies[model.strategy].fit(net, trainer)
    return {"test": trainer.evaluate(net, data.test).metrics, "params": net.inference_parameters()}
