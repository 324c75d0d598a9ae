"""Knobs: the searchable parameters a strategy, backbone or the trainer declares.

A knob has a default range; a space may fix it to a constant or narrow it. The same
classes describe the ranges written in ``space.yaml`` (``{int: [2, 8]}`` is ``Int(2, 8)``),
so one piece of code validates overrides and one piece suggests values to Optuna.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import SpaceError


class Knob:
    """Base class: a range of values. ``suggest`` draws a value from an Optuna trial under ``name``.

    Each knob answers for itself which values its range holds: :meth:`values` (every value,
    when finitely many), :meth:`extremes`, :meth:`smallest`, :meth:`midpoint` and
    :meth:`bound_names`. The base class answers them from :meth:`values`, so a knob of
    finitely many values need only define that; a continuous range overrides them (as
    :class:`Int` and :class:`Float` do). A ``context`` maps the names a bound may give
    (another knob, a backbone knob, ``depth``) to the values chosen for them.
    """

    def values(self) -> list[Any] | None:
        """Every value the knob holds, as a space writes it (lists, not tuples), when finitely many; None for a range."""
        return None

    def extremes(self) -> list[Any]:
        """The boundary values: a range's ends (a bound may be a name), else every value."""
        values = self.values()
        if values is None:  # pragma: no cover - a continuous knob overrides this
            raise TypeError(f"{type(self).__name__} must define values() or extremes()")
        return values

    def smallest(self, context: dict[str, Any] | None = None) -> Any:
        """A small valid value (the contract check's and the preflight's): the first value, a range's low end."""
        return self.extremes()[0]

    def midpoint(self, context: dict[str, Any] | None = None) -> Any:
        """A representative value: the (geometric, for ``log``) middle of a range; the median of numeric values, else the first."""
        values = self.extremes()
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return sorted(values)[(len(values) - 1) // 2]
        return values[0]

    def bound_names(self) -> list[str]:
        """The names this knob's bounds refer to (``Int(1, "experts")`` -> ``["experts"]``); none by default."""
        return []

    def suggest(self, trial: Any, name: str, context: dict[str, Any] | None = None) -> Any:  # pragma: no cover - abstract
        """Draw a value; ``context`` holds the trial's sampled backbone values (for bounds that name one)."""
        raise NotImplementedError

    def narrow(self, override: "Knob", path: str) -> "Knob":
        """Check that ``override`` (from a space) is a valid restriction of this knob."""
        raise NotImplementedError  # pragma: no cover - abstract

    @property
    def is_fixed(self) -> bool:
        return False

    def grid(self, path: str, bounds: dict[str, tuple[int, int]] | None = None) -> list[Any] | None:
        """Every value ``suggest`` can hand Optuna (for the grid sampler), or None when it suggests nothing.

        ``bounds`` gives the smallest and largest value of backbone knobs that bound this one.
        """
        raise SpaceError(path, f"the grid sampler needs discrete values; got {self.describe()} (fix it or use {{choice: [...]}})")

    def describe(self) -> str:
        raise NotImplementedError  # pragma: no cover - abstract


@dataclass(frozen=True)
class Fixed(Knob):
    """A constant."""

    value: Any

    def suggest(self, trial: Any, name: str, context: dict[str, Any] | None = None) -> Any:
        return self.value

    def values(self) -> list[Any]:
        return [self.value]

    def grid(self, path: str, bounds: dict[str, tuple[int, int]] | None = None) -> list[Any] | None:
        return None

    @property
    def is_fixed(self) -> bool:
        return True

    def narrow(self, override: Knob, path: str) -> Knob:
        if isinstance(override, Fixed) and override.value == self.value:
            return override
        raise SpaceError(path, f"this value is fixed to {self.value!r} and cannot be changed")

    def describe(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Default(Fixed):
    """A constant by default (not searched) that a space may replace with anything ``within`` accepts.

    For settings a method's paper fixes (a temperature, a loss form) that a user may still
    set or search: ``Default(5.0, Float(0.5, 10.0, minimum=0.0))``.
    """

    within: Knob

    def narrow(self, override: Knob, path: str) -> Knob:
        return self.within.narrow(override, path)

    def describe(self) -> str:
        return f"{self.value!r} (may be set: {self.within.describe()})"


@dataclass(frozen=True)
class Int(Knob):
    """An integer in ``[low, high]`` (inclusive). ``minimum``/``maximum`` bound what a space may ask for.

    A bound may be a name, read from the values sampled for the same trial:

    - another knob of the same strategy (``"k": Int(1, "experts")``: k never exceeds the
      experts sampled with it), sampled first whatever the declaration order; a cycle of
      names is an error;
    - a backbone knob, or ``"depth"`` (``Int(0, "depth")``): the backbone's values (the
      depth from the built backbone, as some kinds derive it, e.g. conv from its channel list).

    A sibling knob of the same name takes precedence over a backbone knob. ``validate``
    refuses a name that is neither, and a range that is empty for some value of the knobs
    it names.
    """

    low: int | str
    high: int | str
    log: bool = False
    minimum: int | None = None
    maximum: int | None = None

    def suggest(self, trial: Any, name: str, context: dict[str, Any] | None = None) -> int:
        low, high = (context or {}).get(self.low, self.low), (context or {}).get(self.high, self.high)
        if not (isinstance(low, int) and isinstance(high, int)):
            raise ValueError(f"knob {name}: bounds {self.low!r}..{self.high!r} name no sampled value")
        if low >= high:
            return low
        return trial.suggest_int(name, low, high, log=self.log)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    def bound_names(self) -> list[str]:
        return [b for b in (self.low, self.high) if isinstance(b, str)]

    def _resolved(self, context: dict[str, Any] | None) -> tuple[int, int]:
        return tuple((context or {}).get(b, b) for b in (self.low, self.high))  # type: ignore[return-value]

    def smallest(self, context: dict[str, Any] | None = None) -> int:
        """The low end, but at least 2 where the range allows (1 expert, 1 group ... is a degenerate model)."""
        low, high = self._resolved(context)
        return min(max(low, 2), high)

    def midpoint(self, context: dict[str, Any] | None = None) -> int:
        low, high = self._resolved(context)
        middle = math.sqrt(low * high) if self.log and low > 0 else (low + high) / 2
        return min(high, max(low, int(round(middle))))

    def grid(self, path: str, bounds: dict[str, tuple[int, int]] | None = None) -> list[Any] | None:
        bounds = bounds or {}
        low = bounds[self.low][0] if isinstance(self.low, str) else self.low
        high = bounds[self.high][1] if isinstance(self.high, str) else self.high
        return list(range(low, high + 1)) if low < high else None

    def narrow(self, override: Knob, path: str) -> Knob:
        values = _override_values(override)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpaceError(path, f"expected an integer, got {value!r}")
            _check_bounds(value, self.minimum, self.maximum, path)
        if isinstance(override, Float):
            raise SpaceError(path, "expected an integer range ({int: [lo, hi]}), got a float range")
        return override

    def describe(self) -> str:
        return f"int [{self.low}, {self.high}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class Float(Knob):
    """A float in ``[low, high]``; ``log=True`` samples on a log scale (``loguniform`` in a space)."""

    low: float
    high: float
    log: bool = False
    minimum: float | None = None
    maximum: float | None = None

    def suggest(self, trial: Any, name: str, context: dict[str, Any] | None = None) -> float:
        if self.low == self.high:
            return self.low
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    def midpoint(self, context: dict[str, Any] | None = None) -> float:
        return math.sqrt(self.low * self.high) if self.log and self.low > 0 else (self.low + self.high) / 2

    def grid(self, path: str, bounds: dict[str, tuple[int, int]] | None = None) -> list[Any] | None:
        return None if self.low == self.high else super().grid(path, bounds)

    def narrow(self, override: Knob, path: str) -> Knob:
        values = _override_values(override)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpaceError(path, f"expected a number, got {value!r}")
            _check_bounds(value, self.minimum, self.maximum, path)
        if isinstance(override, Int):
            return Float(float(override.low), float(override.high), override.log)
        return override

    def describe(self) -> str:
        return f"{'loguniform' if self.log else 'float'} [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Choice(Knob):
    """One of a list of values (strings, numbers, booleans or lists)."""

    choices: tuple

    def __init__(self, *choices: Any):
        if len(choices) == 1 and isinstance(choices[0], (list, tuple)):
            choices = tuple(choices[0])
        object.__setattr__(self, "choices", tuple(_freeze(c) for c in choices))

    def suggest(self, trial: Any, name: str, context: dict[str, Any] | None = None) -> Any:
        if len(self.choices) == 1:
            return thaw(self.choices[0])
        labels = self._labels()
        picked = trial.suggest_categorical(name, labels)
        return thaw(self.choices[labels.index(picked)])

    def values(self) -> list[Any]:
        return [thaw(c) for c in self.choices]

    def _labels(self) -> list[Any]:
        # Optuna's categorical accepts only scalars: lists are offered by their text.
        if all(_is_scalar(c) for c in self.choices):
            return list(self.choices)
        return [str(list(c)) if isinstance(c, tuple) else str(c) for c in self.choices]

    def grid(self, path: str, bounds: dict[str, tuple[int, int]] | None = None) -> list[Any] | None:
        return self._labels() if len(self.choices) > 1 else None

    def narrow(self, override: Knob, path: str) -> Knob:
        for value in _override_values(override):
            if _freeze(value) not in self.choices:
                allowed = ", ".join(repr(thaw(c)) for c in self.choices)
                raise SpaceError(path, f"{value!r} is not allowed; choose from {allowed}")
        return override

    def describe(self) -> str:
        return "choice " + ", ".join(repr(thaw(c)) for c in self.choices)


@dataclass(frozen=True)
class IntList(Knob):
    """A list of integers (e.g. channels per conv block), sampled among ``choices``.

    A space may fix any list (``channels: [16, 32]``) or give its own ``{choice: [[...], ...]}``;
    every element must be an integer within ``minimum``/``maximum``.
    """

    choices: tuple
    minimum: int | None = None
    maximum: int | None = None

    def suggest(self, trial: Any, name: str, context: dict[str, Any] | None = None) -> list[int]:
        return Choice(*self.choices).suggest(trial, name, context)

    def values(self) -> list[Any]:
        return [thaw(c) for c in self.choices]

    def narrow(self, override: Knob, path: str) -> Knob:
        for value in _override_values(override):
            if not isinstance(value, list) or not value:
                raise SpaceError(path, f"expected a non-empty list of integers, got {value!r}")
            for item in value:
                if isinstance(item, bool) or not isinstance(item, int):
                    raise SpaceError(path, f"expected a list of integers, got {value!r}")
                _check_bounds(item, self.minimum, self.maximum, path)
        return override

    def describe(self) -> str:
        return "choice " + ", ".join(repr(list(c)) for c in self.choices)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def thaw(value: Any) -> Any:
    """A choice's value as a space wrote it: the tuples a knob stores (to hash them) back to lists, at every depth."""
    return [thaw(v) for v in value] if isinstance(value, tuple) else value


def _override_values(override: Knob) -> Sequence[Any]:
    """The values of a space's override to check against a knob: its values, or its range's ends (a named bound left out)."""
    values = override.values()
    return values if values is not None else [v for v in override.extremes() if not isinstance(v, str)]


def _check_bounds(value: float, minimum: float | None, maximum: float | None, path: str) -> None:
    if minimum is not None and value < minimum:
        raise SpaceError(path, f"{value!r} is below the smallest allowed value {minimum!r}")
    if maximum is not None and value > maximum:
        raise SpaceError(path, f"{value!r} is above the largest allowed value {maximum!r}")


def dependency_order(knobs: dict[str, Knob], path: str = "") -> list[str]:
    """The knobs' names in the order to sample them: each after the knobs of ``knobs`` its bounds name.

    Otherwise the declaration order is kept (so a strategy whose bounds name no sibling
    samples as it always did). Names that are not keys of ``knobs`` (backbone knobs,
    ``depth``) are left to the caller. A cycle is a SpaceError at ``path.<knob>``.
    """
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = chain[chain.index(name):] + [name]
            raise SpaceError(f"{path}.{name}" if path else name, f"knob bounds name each other in a cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for other in knobs[name].bound_names():
            if other in knobs and other != name:
                visit(other, chain + [name])
            elif other == name:
                raise SpaceError(f"{path}.{name}" if path else name, f"a bound of knob {name!r} names the knob itself")
        state[name] = "done"
        order.append(name)

    for name in knobs:
        visit(name, [])
    return order


def check_named_bounds(knobs: dict[str, Knob], backbone: dict[str, Knob], path: str) -> None:
    """Refuse bounds naming nothing, cycles of names, and ranges empty for some value of the knobs they name.

    ``knobs`` are a strategy's knobs after a space's overrides, ``backbone`` the backbone
    kind's; ``depth`` is always allowed (a kind may derive it). Errors are SpaceErrors at
    ``path.<knob>``.
    """
    dependency_order(knobs, path)
    scope = {**backbone, **knobs}
    for name, knob in knobs.items():
        names = knob.bound_names()
        for other in names:
            if other not in scope and other != "depth":
                raise SpaceError(f"{path}.{name}", f"a bound of knob {name!r} names {other!r}, which is no knob of this strategy "
                                                   f"({', '.join(sorted(knobs))}) and no backbone knob ({', '.join(sorted(backbone)) or 'none'})")
            if other in scope:
                try:
                    low, high = knob_bounds(scope[other], scope)
                except (TypeError, KeyError):  # a list-valued knob (IntList), or one naming something unresolved
                    low = high = None
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
                    raise SpaceError(f"{path}.{name}", f"a bound of knob {name!r} names {other!r}, which is not an integer knob")
        if not names or any(n not in scope for n in names):
            continue
        largest_low = knob_bounds(scope[knob.low], scope)[1] if isinstance(knob.low, str) else knob.low
        smallest_high = knob_bounds(scope[knob.high], scope)[0] if isinstance(knob.high, str) else knob.high
        if largest_low > smallest_high:
            raise SpaceError(f"{path}.{name}", f"its range [{knob.low}, {knob.high}] is empty when the low bound is {largest_low} "
                                               f"and the high bound {smallest_high}; narrow the knobs it names so the low bound "
                                               "never exceeds the high one")


def knob_bounds(knob: Knob, backbone: dict[str, Knob] | None = None) -> tuple[Any, Any]:
    """The smallest and largest value a knob's range allows (for checks across knobs, ``Strategy.check``).

    A bound naming another knob (``Int(0, "depth")``, ``Int(1, "experts")``) follows that
    knob's range in ``backbone``: pass the backbone's knobs, and for a bound naming a sibling
    knob the strategy's own as well (``{**backbone, **knobs}``).
    """
    names = set(knob.bound_names())
    resolved = [b for v in knob.extremes() for b in (knob_bounds((backbone or {})[v], backbone) if v in names else (v, v))]
    return min(resolved), max(resolved)


def _chosen(knobs: dict[str, Knob], pick: Callable[[Knob, dict[str, Any]], Any], context: dict[str, Any] | None) -> dict[str, Any]:
    scope = dict(context or {})
    for name in dependency_order(knobs):
        scope[name] = pick(knobs[name], scope)
    return {name: scope[name] for name in knobs}


def smallest_values(knobs: dict[str, Knob], context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each knob's :meth:`Knob.smallest`; a bound naming another of ``knobs`` reads the value chosen for it, else ``context``'s."""
    return _chosen(knobs, lambda knob, scope: knob.smallest(scope), context)


def midpoint_values(knobs: dict[str, Knob], context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each knob's :meth:`Knob.midpoint`; bounds naming other knobs read the values chosen for them, as in :func:`smallest_values`."""
    return _chosen(knobs, lambda knob, scope: knob.midpoint(scope), context)


RANGE_FORMS = ("int", "float", "loguniform", "choice")


def parse_range(raw: Any, path: str) -> Knob:
    """Parse a value written in a space: a constant or one of the range forms.

    ``{int: [lo, hi]}``, ``{float: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{choice: [...]}``.
    """
    if not isinstance(raw, dict):
        return Fixed(raw)
    if len(raw) != 1 or next(iter(raw)) not in RANGE_FORMS:
        raise SpaceError(
            path,
            f"expected a constant or one of {{int: [lo, hi]}}, {{float: [lo, hi]}}, "
            f"{{loguniform: [lo, hi]}}, {{choice: [...]}}; got {raw!r}",
        )
    form, args = next(iter(raw.items()))
    if form == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(path + ".choice", f"expected a non-empty list, got {args!r}")
        return Choice(*args)
    if not (isinstance(args, list) and len(args) == 2):
        raise SpaceError(path + f".{form}", f"expected a list [lo, hi], got {args!r}")
    low, high = args
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise SpaceError(path + f".{form}", f"expected numbers, got {args!r}")
    if low > high:
        raise SpaceError(path + f".{form}", f"lower bound {low!r} is above upper bound {high!r}")
    if form == "int":
        if not (isinstance(low, int) and isinstance(high, int)):
            raise SpaceError(path + ".int", f"expected integer bounds, got {args!r}")
        return Int(low, high)
    if form == "loguniform":
        if low <= 0:
            raise SpaceError(path + ".loguniform", f"bounds must be positive, got {args!r}")
        return Float(float(low), float(high), log=True)
    return Float(float(low), float(high))
