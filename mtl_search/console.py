"""What a search prints to the console, and the log file next to the store that takes the rest.

A user needs the search's own lines (each trial's start and end, the front); the libraries'
notices are sent to ``<store>/mtl-search.log`` instead:

- MLflow's database set-up lines (``Creating initial MLflow database tables...``) and
  Alembic's migration lines;
- Ray Tune's per-trial error report (a long traceback with terminal colour codes): the
  trial's console line already gives the error's last line and where its full traceback
  is stored (the run's ``error.txt`` in MLflow), and Tune's closing "Trials did not
  complete" line repeats the failed trials the counts line reports;
- MLflow's notes while it logs the front's pyfunc models (validating the input example);
- MLflow's progress bars when it downloads artifacts (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``).

Ray's token-authentication notice for a local instance is avoided the way Ray documents:
by setting ``RAY_AUTH_MODE`` explicitly (``token``, Ray's own default for a new local
instance), so the same security applies without the notice. An explicit setting in the
environment is kept.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOG_NAME = "mtl-search.log"
# loggers whose records go to the log file only: MLflow's database set-up, Alembic's migrations, Tune's trial errors,
# MLflow's notes while it logs the front's pyfunc models
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "ray.tune.execution.tune_controller", "ray.tune.tune",
                 "ray.tune.analysis.experiment_analysis",  # "failed to fetch metrics" of trials stopped before they ran
                 "mlflow.pyfunc", "mlflow.models")


def warn(message: str) -> None:
    """Print ``warning: <message>`` on standard error: something a user should know that does not stop the command."""
    print(f"warning: {message}", file=sys.stderr)


def quiet_artifact_downloads() -> None:
    """No tqdm progress bars when MLflow downloads artifacts (``predict``, ``report``)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_ray_auth_notice(connecting: bool) -> None:
    """Set ``RAY_AUTH_MODE=token`` (Ray's default) for a local instance, so Ray does not warn that it chose it.

    ``connecting``: the search joins an existing cluster, whose own setting applies; nothing is set.
    """
    if not connecting:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def send_library_logs_to_file(store_dir: Path) -> Path:
    """Route the ``QUIET_LOGGERS`` to ``store_dir/mtl-search.log`` (created on the first record); returns its path."""
    path = Path(store_dir) / LOG_NAME
    handler = _LazyFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _LazyFileHandler)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return path


class _LazyFileHandler(logging.FileHandler):
    """A file handler that creates its folder and file only when a record arrives."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        super().emit(record)
