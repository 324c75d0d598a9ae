"""Errors a user can act on. The command line prints them and exits with status 2."""
from __future__ import annotations


class MtlSearchError(Exception):
    """Base class of every error caused by the user's input (space, data, plugins)."""


class SpaceError(MtlSearchError):
    """An invalid space. ``path`` names the offending key, e.g. ``strategies.mmoe.experts``."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class SpaceErrors(SpaceError):
    """Several independent errors in one space, reported together (as a compiler does).

    ``errors`` holds each :class:`SpaceError`; ``path`` and ``message`` are the first one's,
    so code that handles a single ``SpaceError`` still works.
    """

    def __init__(self, errors: "list[SpaceError]"):
        if not errors:
            raise ValueError("SpaceErrors needs at least one error")
        self.errors = list(errors)
        self.path, self.message = errors[0].path, errors[0].message
        lines = "\n".join(f"  {e}" for e in self.errors)
        Exception.__init__(self, f"{len(self.errors)} errors in the space:\n{lines}")


class ErrorCollector:
    """Gathers the SpaceErrors of independent checks instead of stopping at the first.

    ::

        errors = ErrorCollector()
        with errors.section():
            check_one_thing()        # a SpaceError here is kept and the next section runs
        errors.raise_if_any()        # one SpaceError, or SpaceErrors listing them all
    """

    def __init__(self) -> None:
        self.errors: list[SpaceError] = []

    def add(self, error: SpaceError) -> None:
        """Keep ``error`` (a SpaceErrors is unpacked into its parts)."""
        self.errors.extend(error.errors if isinstance(error, SpaceErrors) else [error])

    def section(self) -> "_Section":
        """A context manager that keeps a SpaceError raised in its block and suppresses it."""
        return _Section(self)

    def raise_if_any(self) -> None:
        """Raise what was collected: the error itself when there is one, else a SpaceErrors."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SpaceErrors(self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)


class _Section:
    def __init__(self, collector: ErrorCollector):
        self.collector = collector

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> bool:
        if isinstance(error, SpaceError):
            self.collector.add(error)
            return True
        return False


class PluginError(MtlSearchError):
    """A plugin could not be loaded, or two plugins registered the same name."""


def did_you_mean(name: str, valid: "list[str] | set[str]") -> str:
    """A short suffix listing the valid names, for 'unknown name' messages."""
    names = sorted(valid)
    return f"valid names: {', '.join(names)}" if names else "nothing is registered under this kind"
