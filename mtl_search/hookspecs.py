"""The plugin contract of mtl-search: every hook a plugin may implement, in one place.

A plugin is a module (or object) with functions decorated by ``mtl_search.hookimpl`` and
named after the hooks below. Pluggy calls hooks with keyword arguments only, so an
implementation's parameter names must match the spec's; it may accept fewer of them.

Registration hooks receive a ``register`` callable (the pattern of simonw's llm and
datasette), so one plugin can add any number of things::

    from mtl_search import hookimpl

    @hookimpl
    def register_strategies(register):
        register(MyStrategy())

Packages make a plugin known through the entry-point group ``mtl_search``::

    [project.entry-points.mtl_search]
    my_family = "my_package.my_module"

A space can also name modules under ``plugins:`` (a dotted module name, or a ``.py`` path
relative to the space file) for quick experiments without packaging.
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "mtl_search"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_strategies(register: Callable[[Any], None]) -> None:
    """Register sharing strategies: call ``register(strategy)`` with ``mtl_search.Strategy`` instances.

    Each strategy has a unique ``name`` (the key used under ``strategies:`` in a space),
    a ``family``, its ``knobs`` and a ``build`` method; see ``mtl_search.Strategy``.
    """


@hookspec
def register_datasets(register: Callable[..., None]) -> None:
    """Register data sets: call ``register(name, factory, options=None, description="")``.

    ``factory(**options) -> mtl_search.Dataset`` builds the splits; ``options`` is a dict of
    default option values, used to reject unknown option names in a space.
    """


@hookspec
def register_weightings(register: Callable[[Any], None]) -> None:
    """Register loss weighting methods: call ``register(weighting_class)``.

    A weighting is a subclass of ``mtl_search.Weighting`` with a unique ``name``; the
    trainer builds one per trial and calls its ``backward(losses, regularization, model)``
    every step (its ``after_step`` after the optimiser step, its ``on_epoch_end`` after each
    epoch, and records ``weights()`` per epoch). A method that acts on the gradients of the
    shared parameters sets ``needs_shared_parameters = True``; ``validate`` then pairs it
    only with strategies whose ``declares_shared_parameters`` is True.
    """


@hookspec
def register_backbones(register: Callable[[Any], None]) -> None:
    """Register backbone kinds: call ``register(mtl_search.BackboneKind(...))``.

    A kind names its knobs and a ``build(input_shape, **params) -> Backbone`` function, and
    optionally the input ranks it can build on (``input_ranks``; a space pairing it with data
    of another rank is rejected by ``validate``).
    """


@hookspec
def trial_finished(trial: Any) -> None:
    """Observe a finished trial (``mtl_search.TrialRecord``), on the driver's tracking thread, after it is logged."""


@hookspec
def search_finished(search: Any) -> None:
    """Observe a finished search (``mtl_search.SearchRecord``), on the driver, after the front is logged."""
