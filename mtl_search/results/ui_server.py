"""The MLflow UI server of ``mtl-search ui``: MLflow's own app plus the page its printed link opens.

MLflow 3.17's UI applies a view stored on the experiment (``viewStateShareKey`` in the URL)
as a read-only "shared view" under a banner, and leaves out of it which runs are expanded;
the view it applies without a banner is the browser's own saved view (``localStorage``). So
the link goes to ``REVIEW_PATH`` on the same server: a page that saves the latest search's
view (``review.runs_table_view``, stored on its experiment) as the browser's view of that
experiment, then opens the experiment's runs table. The app is registered as the ``mlflow.app``
entry point ``mtl-search`` (``mlflow ui --app-name mtl-search``).
"""
from __future__ import annotations

import html
import json
import os
from typing import Any

APP_NAME = "mtl-search"

# MLflow 3.17's UI state stores (server/js: LocalStorageStore, useLocalStorage): the experiment
# page's saved view of experiment ID, and the flag that its assistant panel was opened on a first visit.
VIEW_STORAGE_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
ASSISTANT_OPENED_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>mtl-search: {experiment}</title></head>
<body><p>Opening the latest search of {experiment}…</p>
<script>
const key = {storage_key}, view = {view};
localStorage.setItem(key, JSON.stringify(Object.assign(JSON.parse(localStorage.getItem(key) || "{{}}"), view)));
if (localStorage.getItem({assistant_key}) === null) localStorage.setItem({assistant_key}, "true");
location.replace({target});
</script></body></html>
"""


def _script_value(value: Any) -> str:
    """``value`` as a JavaScript literal that cannot end the page's script element."""
    return json.dumps(value).replace("<", "\\u003c")


def review_page(uri: str) -> str | None:
    """The page that opens the store's latest search in the runs table; None when the store holds no search."""
    from mlflow.tracking import MlflowClient

    from ..record import VIEW
    from .load import latest_search_run
    from .review import runs_table_path

    run = latest_search_run(uri)
    if run is None:
        return None
    experiment = MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id)
    view = json.loads(experiment.tags.get(VIEW, "{}"))
    return PAGE.format(experiment=html.escape(experiment.name),
                       storage_key=_script_value(VIEW_STORAGE_KEY.format(experiment_id=experiment.experiment_id)),
                       view=_script_value(view), assistant_key=_script_value(ASSISTANT_OPENED_KEY),
                       target=_script_value(runs_table_path(experiment.experiment_id, view)))


def create_app() -> Any:
    """MLflow's server app (FastAPI over its Flask app) with ``REVIEW_PATH`` added; the store is the server's."""
    from flask import Response, redirect
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import app

    from .review import REVIEW_PATH

    def latest_search() -> Any:
        page = review_page(os.environ[BACKEND_STORE_URI_ENV_VAR])
        return redirect("/") if page is None else Response(page, mimetype="text/html")

    if "mtl_search_latest" not in flask_app.view_functions:  # one app per process: a second call adds nothing
        flask_app.add_url_rule(REVIEW_PATH, "mtl_search_latest", latest_search)
    return app
