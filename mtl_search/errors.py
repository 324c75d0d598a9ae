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


class PluginError(MtlSearchError):
    """A plugin could not be loaded, or two plugins registered the same name."""


def did_you_mean(name: str, valid: "list[str] | set[str]") -> str:
    """A short suffix listing the valid names, for 'unknown name' messages."""
    names = sorted(valid)
    return f"valid names: {', '.join(names)}" if names else "nothing is registered under this kind"
