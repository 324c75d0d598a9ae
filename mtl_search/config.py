"""A trial's configuration: the flat mapping of sampled parameters and its parts.

Optuna samples, Ray Tune passes, MLflow records (as params) and a saved model keeps
(``config.json``) one flat mapping: ``strategy``, ``trial_number``, then one key per
sampled value named ``section.knob`` — ``mmoe.experts``, ``backbone.width``,
``inputs.encoding``, ``training.lr``, ``training.weighting``, ``weighting.gradnorm.alpha``;
a single-task reference trial adds ``reference_task``, a repeat with another seed ``repeat``.
:class:`TrialConfig` is its decoded form; this module is the only place that knows the naming.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STRATEGY_KEY = "strategy"
NUMBER_KEY = "trial_number"
REFERENCE_TASK_KEY = "reference_task"  # on a single-task reference trial: the one task it trains
REPEAT_KEY = "repeat"  # on a repeat of a trial (search.repeats): which seed, 1, 2, ... (0 or absent: the trial itself)
REPEAT_OF_KEY = "repeat_of"  # on a repeat: the MLflow run id of the trial it repeats
WEIGHTING_KEY = "training.weighting"
DEFAULT_WEIGHTING = "equal"  # registered by the core (mtl_search.training.weighting)


def param_name(section: str, knob: str) -> str:
    """The flat name of a sampled parameter: ``mmoe.experts``, ``backbone.width``, ``training.lr`` ..."""
    return f"{section}.{knob}"


@dataclass(frozen=True)
class TrialConfig:
    """The parts of a flat sampled configuration.

    ``knobs`` are the strategy's, ``backbone`` the backbone kind's, ``inputs`` the table input
    layer's, ``training`` the trainer's searched settings (batch size, lr, weight decay),
    ``weighting_params`` the chosen weighting's knobs.
    """

    strategy: str
    number: int = 0
    knobs: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    weighting: str = DEFAULT_WEIGHTING
    weighting_params: dict[str, Any] = field(default_factory=dict)
    reference_task: str | None = None  # a single-task reference trial's task (None: a multi-task trial)
    repeat: int = 0  # a repeat's seed index (search.repeats); 0: the trial as searched

    @classmethod
    def from_flat(cls, config: dict[str, Any]) -> "TrialConfig":
        """Decode the flat mapping (as sampled, or as read back from ``config.json``)."""
        strategy = config[STRATEGY_KEY]
        weighting = config.get(WEIGHTING_KEY, DEFAULT_WEIGHTING)
        knobs: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {"backbone": {}, "inputs": {}, "training": {}}
        weighting_params: dict[str, Any] = {}
        for key, value in config.items():
            section, _, knob = key.partition(".")
            if section == strategy:
                knobs[knob] = value
            elif section in ("backbone", "inputs"):
                sections[section][knob] = value
            elif section == "training" and key != WEIGHTING_KEY:
                sections["training"][knob] = value
            elif section == "weighting" and knob.startswith(weighting + "."):
                weighting_params[knob.split(".", 1)[1]] = value
        return cls(strategy, int(config.get(NUMBER_KEY, 0)), knobs, sections["backbone"], sections["inputs"],
                   sections["training"], weighting, weighting_params, config.get(REFERENCE_TASK_KEY), int(config.get(REPEAT_KEY, 0)))
