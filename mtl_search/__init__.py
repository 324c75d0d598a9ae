"""mtl-search: search over how tasks share parameters in multi-task deep learning.

This module is the public API that plugins import; everything else is internal.
"""
from .blocks import (
    ACTIVATIONS,
    Backbone,
    BackboneKind,
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
from .data import Dataset, Split, make_dataset, split_rows
from .errors import MtlSearchError, PluginError, SpaceError
from .hookspecs import hookimpl
from .knobs import Choice, Default, Fixed, Float, Int, IntList, Knob, knob_bounds
from .model import MultiTaskModel, SharingMap, count_parameters, task_losses
from .models import load_model, predict
from .problem import Problem, Task
from .results import SearchRecord, TrialRecord
from .strategy import Strategy
from .tables import CategoricalFeature, NumericFeature, TableFeatures
from .train import Evaluation, TrainConfig, Trainer
from .weighting import Weighting

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Backbone", "BackboneKind", "CategoricalFeature", "Choice", "conv_layer", "count_parameters",
    "Dataset", "Default", "Evaluation", "Fixed", "Float", "forward_with_intermediate", "hookimpl", "Int", "IntList",
    "Knob", "knob_bounds", "load_model", "make_dataset", "make_norm", "make_tower", "mlp_layer", "MtlSearchError",
    "MultiTaskModel", "NumericFeature", "PluginError", "predict", "Problem", "ResidualBlock", "ResidualConvBlock",
    "ResidualMLPBlock", "SearchRecord", "SharingMap", "SpaceError", "Split", "split_rows", "StackedLinear",
    "StackedMLP", "Strategy", "TableFeatures", "Task", "task_losses", "TrainConfig", "Trainer", "TrialRecord",
    "Weighting",
]
