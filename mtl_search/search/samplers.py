"""The samplers ``search.sampler`` names, in one table: the space's validation and the search's construction read it.

Each entry builds an Optuna sampler from the search's seed, its concurrency and, for
``grid``, the grid (every value of every parameter). Optuna is imported only when a sampler
is built. ``search.constraints`` reach tpe, nsga2 and gp as the values the searcher sets on
each trial (``Trial.set_constraint``).
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import SpaceError


def _tpe(seed: int, concurrency: int, grid: dict[str, list[Any]] | None) -> Any:
    import optuna

    return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=concurrency > 1, seed=seed)


def _nsga2(seed: int, concurrency: int, grid: dict[str, list[Any]] | None) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


def _random(seed: int, concurrency: int, grid: dict[str, list[Any]] | None) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _gp(seed: int, concurrency: int, grid: dict[str, list[Any]] | None) -> Any:
    import optuna

    try:
        import scipy  # noqa: F401  (Optuna's GPSampler imports it only when it first samples)
    except ImportError as exc:
        raise SpaceError("search.sampler", f"the gp sampler needs scipy (pip install scipy): {exc}") from None
    return optuna.samplers.GPSampler(seed=seed)


def _grid(seed: int, concurrency: int, grid: dict[str, list[Any]] | None) -> Any:
    import optuna

    class TuneGridSampler(optuna.samplers.GridSampler):
        """GridSampler without its ``study.stop()`` once the grid is covered.

        That call is only legal inside Optuna's own optimize loop; under Tune it raises before
        the trial's state is stored. Tune ends the search after ``search.trials`` trials (a
        covered grid is visited again in a random order).
        """

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    if grid is None:
        raise ValueError("the grid sampler needs the grid")
    return TuneGridSampler(grid, seed=seed)


SAMPLERS: dict[str, Callable[[int, int, dict[str, list[Any]] | None], Any]] = {
    "tpe": _tpe, "nsga2": _nsga2, "random": _random, "gp": _gp, "grid": _grid,
}
