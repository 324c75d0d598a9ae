"""The one way from a configuration to a model: used by the trial, ``load_model``, ``predict`` and the contract check.

:func:`smallest_configuration` is the one smallest configuration of a strategy's ranges
(the preflight and the contract check build it).

``create_model`` builds the backbone recipe for the problem — a table's input layer becomes
its input stage, so every strategy reads raw rows without a wrapper — and hands it to the
strategy's ``build``. The model it returns is the strategy's own class.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..data.problem import Problem
from ..knobs import Knob, smallest_values
from .backbones import Backbone, BackboneKind
from .inputs import INPUT_DEFAULTS, TabularInput
from .model import MultiTaskModel

if TYPE_CHECKING:
    from ..strategy import Strategy


def build_backbone(kind: BackboneKind, problem: Problem, params: dict[str, Any], inputs: dict[str, Any] | None = None) -> Backbone:
    """The backbone recipe of ``kind`` with knob values ``params`` for ``problem``'s inputs.

    A table's features (``problem.features``) get an input layer (:class:`TabularInput`, knobs
    ``inputs``: encoding, embedding_dim) in front of the kind's stem; the kind is built for
    the layer's output width.
    """
    if problem.features is None:
        return kind.build(tuple(problem.input_shape), **params)
    settings = {**INPUT_DEFAULTS, **(inputs or {})}
    features = problem.features
    width = TabularInput(features, **settings).out_features
    backbone = kind.build((width,), **params)
    return replace(backbone, make_input=lambda: TabularInput(features, **settings))


def create_model(problem: Problem, strategy: "Strategy", kind: BackboneKind, knobs: dict[str, Any],
                 backbone: dict[str, Any], inputs: dict[str, Any] | None = None) -> MultiTaskModel:
    """A fresh, untrained model of ``strategy`` (knob values ``knobs``) on a ``kind`` backbone (values ``backbone``)."""
    return strategy.build(problem, build_backbone(kind, problem, backbone, inputs), knobs)


def smallest_configuration(problem: Problem, strategy_knobs: dict[str, Knob], kind: BackboneKind,
                           backbone_knobs: dict[str, Knob] | None = None,
                           inputs_knobs: dict[str, Knob] | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(strategy knob values, backbone values, input-layer values) of the smallest configuration of the ranges.

    Every knob at :meth:`Knob.smallest` (``backbone_knobs`` default to the kind's own); a
    strategy bound naming a backbone knob or ``depth`` reads it from the backbone built for
    ``problem`` at those values, as a search's trial space does.
    """
    backbone_values = smallest_values(kind.knobs if backbone_knobs is None else backbone_knobs)
    inputs = smallest_values(inputs_knobs or {})
    backbone = build_backbone(kind, problem, backbone_values, inputs)
    knobs = smallest_values(strategy_knobs, {**backbone_values, **backbone.params, "depth": backbone.depth})
    return knobs, backbone_values, inputs
