"""mtl-search: search over how tasks share parameters in multi-task deep learning.

This module is the public API that plugins import; everything else is internal. The
package's folders follow the pipeline: ``data`` (problem, dataset, table features, tables)
-> ``nn`` (models, backbones, layers, the table input layer, the model factory) ->
``training`` (trainer, weighting) -> ``search`` (space, trial, Tune glue, run) ->
``results`` (records, fronts, tracking, review, plots, saved models).

The names are loaded on first use (PEP 562): ``import mtl_search`` (and so the command
line, whose ``--help`` needs none of them) does not import torch; ``from mtl_search import
Strategy`` imports what ``Strategy`` needs.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("Dataset", "Split", "make_dataset", "split_rows"), ".data.dataset"),
    **dict.fromkeys(("CategoricalFeature", "NumericFeature", "TableFeatures"), ".data.features"),
    **dict.fromkeys(("Problem", "Task"), ".data.problem"),
    **dict.fromkeys(("MtlSearchError", "PluginError", "SpaceError", "SpaceErrors"), ".errors"),
    "hookimpl": ".hookspecs",
    **dict.fromkeys(("Choice", "Default", "Fixed", "Float", "Int", "IntList", "Knob", "knob_bounds"), ".knobs"),
    **dict.fromkeys(("Backbone", "BackboneKind"), ".nn.backbones"),
    **dict.fromkeys(("BackboneExperts", "RoutedExperts", "expert_slots"), ".nn.experts"),
    **dict.fromkeys(("ACTIVATIONS", "ResidualBlock", "ResidualConvBlock", "ResidualMLPBlock", "StackedLinear", "StackedMLP",
                     "conv_layer", "forward_with_intermediate", "make_norm", "make_tower", "mlp_layer"), ".nn.layers"),
    **dict.fromkeys(("MultiTaskModel", "SharingMap", "copy_state", "count_parameters", "task_losses"), ".nn.model"),
    **dict.fromkeys(("Objective", "TrialRecord"), ".record"),
    **dict.fromkeys(("Pick", "pick"), ".results.pick"),
    "SearchRecord": ".results.records",
    **dict.fromkeys(("load_model", "predict"), ".results.saved_models"),
    "load_search": ".results.load",
    "Strategy": ".strategy",
    **dict.fromkeys(("Evaluation", "TrainConfig", "Trainer"), ".training.trainer"),
    "Weighting": ".training.weighting",
}

__all__ = sorted(_EXPORTS, key=str.lower)


def __getattr__(name: str) -> Any:
    """Import the module defining a public name on first use and keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .data.dataset import Dataset, Split, make_dataset, split_rows  # noqa: F401
    from .data.features import CategoricalFeature, NumericFeature, TableFeatures  # noqa: F401
    from .data.problem import Problem, Task  # noqa: F401
    from .errors import MtlSearchError, PluginError, SpaceError, SpaceErrors  # noqa: F401
    from .hookspecs import hookimpl  # noqa: F401
    from .knobs import Choice, Default, Fixed, Float, Int, IntList, Knob, knob_bounds  # noqa: F401
    from .nn.backbones import Backbone, BackboneKind  # noqa: F401
    from .nn.experts import BackboneExperts, RoutedExperts, expert_slots  # noqa: F401
    from .nn.layers import (  # noqa: F401
        ACTIVATIONS,
        ResidualBlock,
        ResidualConvBlock,
        ResidualMLPBlock,
        StackedLinear,
        StackedMLP,
        conv_layer,
        forward_with_intermediate,
        make_norm,
        make_tower,
        mlp_layer,
    )
    from .nn.model import (  # noqa: F401
        MultiTaskModel,
        SharingMap,
        copy_state,
        count_parameters,
        task_losses,
    )
    from .record import Objective, TrialRecord  # noqa: F401
    from .results.load import load_search  # noqa: F401
    from .results.pick import Pick, pick  # noqa: F401
    from .results.records import SearchRecord  # noqa: F401
    from .results.saved_models import load_model, predict  # noqa: F401
    from .strategy import Strategy  # noqa: F401
    from .training.trainer import Evaluation, TrainConfig, Trainer  # noqa: F401
    from .training.weighting import Weighting  # noqa: F401
