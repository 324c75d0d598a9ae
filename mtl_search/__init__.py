"""mtl-search: search over how tasks share parameters in multi-task deep learning.

This module is the public API that plugins import; everything else is internal.
"""
from .blocks import (
    ACTIVATIONS,
    Backbone,
    BackboneKind,
    ResidualMLPBlock,
    StackedLinear,
    StackedMLP,
    make_norm,
    make_tower,
    mlp_layer,
)
from .data import Dataset, Split, make_dataset, split_rows
from .errors import MtlSearchError, PluginError, SpaceError
from .hookspecs import hookimpl
from .knobs import Choice, Fixed, Float, Int, Knob
from .model import MultiTaskModel, SharingMap, count_parameters, task_losses
from .models import load_model, predict
from .problem import Problem, Task
from .results import SearchRecord, TrialRecord
from .strategy import Strategy
from .train import Evaluation, TrainConfig, Trainer
from .weighting import Weighting

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Backbone", "BackboneKind", "Choice", "Dataset", "Evaluation", "Fixed", "Float", "Int", "Knob",
    "MtlSearchError", "MultiTaskModel", "PluginError", "Problem", "ResidualMLPBlock", "SearchRecord", "SharingMap",
    "SpaceError", "Split", "StackedLinear", "StackedMLP", "Strategy", "Task", "TrainConfig", "Trainer", "TrialRecord",
    "Weighting", "count_parameters", "hookimpl", "load_model", "make_dataset", "make_norm", "make_tower", "mlp_layer", "predict", "split_rows",
    "task_losses",
]
