"""The tracking store: its URI, the checks before a search or a reading command opens it, and the lock that serialises its creation.

The default store is ``sqlite:///<cwd>/mlflow/mlflow.db`` with artifacts under
``<cwd>/mlflow/artifacts``; a server (``http(s)://``) is the other kind. :func:`sqlite_path`
and :func:`sqlite_uri` are the one place that reads and writes a sqlite URI.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ..errors import MtlSearchError

SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other URI."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def sqlite_uri(path: Path) -> str:
    """The ``sqlite:///`` URI of a database file."""
    return f"{SQLITE}{path}"


def store_folder(uri: str, cwd: Path | None = None) -> Path:
    """Where a search keeps its Optuna study and Tune's working files: next to a sqlite store, else ``<cwd>/mlflow``."""
    path = sqlite_path(uri)
    return path.parent if path is not None else default_store_dir(cwd)


def artifacts_folder(uri: str) -> Path | None:
    """Where a sqlite store's experiments keep their artifacts (``artifacts`` beside the database); None for a server."""
    path = sqlite_path(uri)
    return path.parent / "artifacts" if path is not None else None


def default_store_dir(cwd: Path | None = None) -> Path:
    return (cwd or Path.cwd()).resolve() / "mlflow"


def default_tracking_uri(cwd: Path | None = None) -> str:
    return sqlite_uri(default_store_dir(cwd) / "mlflow.db")


def resolve_tracking_uri(uri: str | None) -> str:
    """An absolute tracking URI: the default store, or ``uri`` with a relative sqlite path made absolute."""
    if not uri:
        return default_tracking_uri()
    path = sqlite_path(uri)
    if path is not None:
        return sqlite_uri(path.resolve())
    if "://" not in uri:
        raise MtlSearchError(f"tracking URI {uri!r}: expected sqlite:///path/to/mlflow.db or http(s)://server (MLflow's file store is not supported)")
    return uri


def require_store(uri: str) -> str:
    """``uri`` when it names a complete tracking store; else MtlSearchError (reading commands create nothing).

    For a sqlite store: the file must exist and hold every table MLflow needs, read without
    writing (a store a search is creating right now is not complete yet: the reader waits
    rather than racing it to create the tables). Servers (``http(s)://``) are the server's business.
    """
    path = sqlite_path(uri)
    if path is None:
        return uri
    if not path.is_file():
        raise MtlSearchError(f"no tracking store at {path}: no search has been run here; "
                             "run `mtl-search run SPACE` in this folder first, or give --tracking-uri")
    if not _store_complete(path):
        raise MtlSearchError(f"{path} is not a complete MLflow store (a search starting now may still be creating it); "
                             "try again in a moment")
    return uri


def _tables(path: Path) -> set[str] | None:
    """The tables of a sqlite file, read without writing; None when it is no sqlite database."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.Error:
        return None


@functools.lru_cache(maxsize=1)
def mlflow_tables() -> frozenset[str]:
    """The tables a complete store of the installed MLflow holds.

    Learnt once per MLflow version by letting MLflow's client create a store in a temporary
    folder (the public way to its schema), and kept in the user's cache folder.
    """
    from mlflow.tracking import MlflowClient

    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtl-search" / f"mlflow-{mlflow.__version__}-tables.json"
    try:
        return frozenset(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "mlflow.db"
        MlflowClient(tracking_uri=sqlite_uri(database)).search_experiments()
        tables = frozenset(_tables(database) or ())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(sorted(tables)))
    except OSError:  # no cache: learnt again next time
        pass
    return tables


def _store_complete(path: Path) -> bool:
    """Whether the sqlite file holds every table of MLflow's schema (read-only: nothing is created or migrated).

    MLflow's client creates or migrates the tables of a store that lacks any (as its own
    check does), so a reader opens only a store that holds them all.
    """
    tables = _tables(path)
    return tables is not None and "alembic_version" in tables and mlflow_tables() <= tables


@contextlib.contextmanager
def store_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively: searches started together in one folder create its stores one at a time.

    MLflow and Optuna each create their sqlite tables on first use; two processes doing it at
    once fail with "table ... already exists".
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_tracking_store(uri: str | None, source: str = "tracking.uri") -> str:
    """The absolute tracking URI, or an MtlSearchError naming ``source`` when the store is unusable.

    Checked before anything else starts: a scheme MLflow cannot use, a sqlite path whose
    folder cannot be created, a server that does not answer.
    """
    resolved = resolve_tracking_uri(uri)
    scheme = resolved.split("://", 1)[0]
    if scheme not in ("sqlite", "http", "https"):
        raise MtlSearchError(f"{source}: {resolved!r} is not a tracking store mtl-search can use; "
                             "expected sqlite:///path/to/mlflow.db or http(s)://host:port")
    path = sqlite_path(resolved)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MtlSearchError(f"{source}: cannot create the folder of {path}: {exc.strerror or exc}") from None
        if path.exists() and not path.is_file():
            raise MtlSearchError(f"{source}: {path} is not a file")
    else:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(resolved.rstrip("/") + "/health", timeout=10).close()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MtlSearchError(f"{source}: the MLflow server at {resolved} does not answer ({reason})") from None
    return resolved


def now_ms() -> int:
    """Milliseconds since the epoch: the timestamp MLflow's metrics carry."""
    return int(time.time() * 1000)
