"""Fault injection for the resume tests and the kill soak: the driver kills itself at a named moment.

``MTL_SEARCH_KILL_AT=<point>[:<n>]`` makes the driver send itself SIGKILL the ``n``-th time
(default: the first) it passes ``point``, so a test can hit a moment exactly rather than by
timing. With ``MTL_SEARCH_KILL_SIGNAL=INT`` it sends SIGINT to its process group instead: a
Ctrl-C at that moment. Unset (always, outside those tests) it costs one dictionary look-up per point.

Points, in the order a trial passes them:

- ``search_started``: the study and the search run exist, no trial has started;
- ``trial_started``: a trial's MLflow run was just created;
- ``trial_training``: a trial reported an epoch;
- ``trial_ended``: a trial's final result reached the driver, nothing of it is recorded yet;
- ``trial_recorded``: MLflow holds the trial's end, Optuna not yet;
- ``trial_told``: Optuna was told the trial's end.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "MTL_SEARCH_KILL_AT"
SIGNAL_ENV = "MTL_SEARCH_KILL_SIGNAL"
POINTS = ("search_started", "trial_started", "trial_training", "trial_ended", "trial_recorded", "trial_told")
_passed: Counter[str] = Counter()


def kill_point(point: str) -> None:
    """SIGKILL this process (or SIGINT its group) if ``MTL_SEARCH_KILL_AT`` names ``point`` and this is its chosen occurrence."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != point:
        return
    _passed[point] += 1
    if _passed[point] == int(count or 1):
        if os.environ.get(SIGNAL_ENV) == "INT":
            os.killpg(os.getpgrp(), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGKILL)
