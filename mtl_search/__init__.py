"""mtl-search: search over how tasks share parameters in multi-task deep learning.

This module is the public API that plugins import; everything else is internal. The
package's folders follow the pipeline: ``data`` (problem, dataset, table features, tables)
-> ``nn`` (models, backbones, layers, the table input layer, the model factory) ->
``training`` (trainer, weighting) -> ``search`` (space, trial, Tune glue, run) ->
``results`` (records, fronts, tracking, review, plots, saved models).
"""
from .data.dataset import Dataset, Split, make_dataset, split_rows
from .data.features import CategoricalFeature, NumericFeature, TableFeatures
from .data.problem import Problem, Task
from .errors import MtlSearchError, PluginError, SpaceError
from .hookspecs import hookimpl
from .knobs import Choice, Default, Fixed, Float, Int, IntList, Knob, knob_bounds
from .nn.backbones import Backbone, BackboneKind
from .nn.experts import BackboneExperts, RoutedExperts, expert_slots
from .nn.layers import (
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
from .nn.model import (
    MultiTaskModel,
    SharingMap,
    copy_state,
    count_parameters,
    task_losses,
)
from .results.metrics import Objective
from .results.records import SearchRecord, TrialRecord
from .results.saved_models import load_model, predict
from .strategy import Strategy
from .training.trainer import Evaluation, TrainConfig, Trainer
from .training.weighting import Weighting

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Backbone", "BackboneExperts", "BackboneKind", "CategoricalFeature", "Choice", "conv_layer", "copy_state", "count_parameters",
    "Dataset", "Default", "Evaluation", "expert_slots", "Fixed", "Float", "forward_with_intermediate", "hookimpl", "Int", "IntList",
    "Knob", "knob_bounds", "load_model", "make_dataset", "make_norm", "make_tower", "mlp_layer", "MtlSearchError",
    "MultiTaskModel", "NumericFeature", "Objective", "PluginError", "predict", "Problem", "ResidualBlock", "ResidualConvBlock",
    "ResidualMLPBlock", "RoutedExperts", "SearchRecord", "SharingMap", "SpaceError", "Split", "split_rows", "StackedLinear",
    "StackedMLP", "Strategy", "TableFeatures", "Task", "task_losses", "TrainConfig", "Trainer", "TrialRecord",
    "Weighting",
]
