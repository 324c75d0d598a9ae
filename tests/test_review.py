"""Reviewing a search: fronts per family, the parent run's artifacts, models loaded back, report filters, the UI in a browser."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import tiny_space

from mtl_search import load_model, predict
from mtl_search.cli import main
from mtl_search.errors import MtlSearchError
from mtl_search.record import Objective, TrialRecord
from mtl_search.registry import load_registry
from mtl_search.results.plots import (
    front_plotly,
    front_png,
    fronts_per_family,
    trials_by_family,
)
from mtl_search.results.records import SearchRecord, family_record, mark_front
from mtl_search.results.review import front_data, runs_table_view, summary_markdown
from mtl_search.results.saved_models import load_model_dir, read_numeric_csv, save_model

OBJECTIVES = [Objective("a", "val/a", "min"), Objective("b", "val/b", "min")]


def _record(points: list[tuple[str, float, float]], objectives=OBJECTIVES) -> SearchRecord:
    trials = [TrialRecord(k, f"run{k}", {"hard": "hard_sharing", "moe": "mmoe"}[family], {}, "finished",
                          val={"a": a, "b": b}, family=family) for k, (family, a, b) in enumerate(points)]
    record = SearchRecord("exp", "parent", objectives, trials)
    record.hypervolume, record.reference_point = mark_front(trials, objectives)
    return record


# trial 2 (moe) is dominated by trial 0 (hard) globally, yet it is the best moe trial
POINTS = [("hard", 1.0, 1.0), ("hard", 3.0, 3.0), ("moe", 2.0, 2.5), ("moe", 2.5, 2.6), ("hard", 0.5, 4.0)]


def test_family_fronts_differ_from_the_global_front():
    data = front_data(_record(POINTS))
    assert data.on_front == [True, False, False, False, True]
    assert data.on_family_front == [True, False, True, False, True]
    series = {s.name: s.indices for s in fronts_per_family(data)}
    assert series == {"dominated in its family": [1, 3], "hard front": [0, 4], "moe front": [2], "global front": [0, 4]}
    coloured = {s.name: s.indices for s in trials_by_family(data)}
    assert coloured == {"hard": [0, 1, 4], "moe": [2, 3], "Pareto front": [0, 4]}
    assert data.labels[2] == "trial-002-mmoe"


def test_many_objectives_give_one_parallel_coordinates_panel_scaled_to_the_best():
    names = "abcdef"
    objectives = [Objective(n, f"val/{n}", "min" if i % 2 == 0 else "max") for i, n in enumerate(names)]
    trials = [TrialRecord(k, f"run{k}", "mmoe", {}, "finished", val={n: float((k + i) % 5) for i, n in enumerate(names)}, family="moe")
              for k in range(5)]
    record = SearchRecord("exp", "parent", objectives, trials)
    record.hypervolume, record.reference_point = mark_front(trials, objectives)
    data = front_data(record)
    figure = front_png(data, trials_by_family(data), "t")
    assert len([ax for ax in figure.axes if ax.lines]) == 1  # one panel, not the 15 pairwise projections
    lines = figure.axes[0].lines
    assert all(0.0 <= y <= 1.0 for line in lines for y in line.get_ydata())
    best = {i: min(t.val[n] for t in trials) if o.direction == "min" else max(t.val[n] for t in trials)
            for i, (n, o) in enumerate(zip(names, objectives))}
    first = trials[0]
    scaled = [line for line in lines][0].get_ydata()  # trial 0 is the first trial of its family's series
    assert [y == 0.0 for y in scaled] == [first.val[n] == best[i] for i, n in enumerate(names)]
    interactive = front_plotly(data, trials_by_family(data), "t")
    assert all(len(trace.x) == len(names) for trace in interactive.data)


def test_more_than_two_objectives_give_a_pairwise_grid_with_labelled_front():
    objectives = OBJECTIVES + [Objective("c", "val/c", "max")]
    record = _record(POINTS, objectives)
    for t, c in zip(record.trials, [0.1, 0.2, 0.9, 0.3, 0.4]):
        t.val["c"] = c
    record.hypervolume, record.reference_point = mark_front(record.trials, objectives)
    data = front_data(record)
    figure = front_png(data, trials_by_family(data), "t")
    panels = [ax for ax in figure.axes if ax.collections]
    assert [(ax.get_xlabel().split()[0], ax.get_ylabel().split()[0]) for ax in panels] == [("a", "b"), ("a", "c"), ("b", "c")]
    interactive = front_plotly(data, trials_by_family(data), "t")
    rings = [trace for trace in interactive.data if trace.name == "Pareto front"]
    assert len(rings) == 3  # one per projection
    assert sorted(rings[0].text) == sorted(data.labels[k] for k, f in enumerate(data.on_front) if f)
    assert not any("lines" in trace.mode for trace in interactive.data)  # joining points is meaningless in a projection


def test_family_record_has_its_own_front():
    record = _record(POINTS)
    moe = family_record(record, "moe")
    assert [t.number for t in moe.trials] == [2, 3] and [t.pareto for t in moe.trials] == [True, False]
    assert not record.trials[2].pareto  # the whole search's flags are untouched
    assert 0 < moe.hypervolume < record.hypervolume
    with pytest.raises(MtlSearchError, match="families: hard, moe"):
        family_record(record, "attention")


def test_summary_names_best_trial_per_objective_and_family():
    record = _record(POINTS)
    record.trials.append(TrialRecord(5, "run5", "mmoe", {}, "failed", family="moe", error="boom"))
    text = summary_markdown(record)
    assert "6 trials: 1 failed, 5 finished" in text
    assert "| a (min) | 0.5 | trial-004-hard_sharing | hard_sharing |" in text
    assert "| moe | 3 | 0 | 2 (trial-002-mmoe) | 2.5 (trial-002-mmoe) |" in text


def test_runs_table_view_lists_the_searchs_trials_front_first_with_pareto_objectives_params_strategy_then_knobs():
    record = _record(POINTS)
    record.trials[0].params = {"strategy": "hard_sharing", "trial_number": 0, "hard_sharing.shared_depth": 1, "backbone.width": 32}
    view = runs_table_view(record)
    columns = view["selectedColumns"]
    assert columns[:5] == ["tags.`mtl_search.pareto`", "metrics.`val/a`", "metrics.`val/b`", "metrics.`params`", "tags.`mtl_search.strategy`"]
    assert columns[5:7] == ["params.`backbone.width`", "params.`hard_sharing.shared_depth`"]  # the searched knobs, not strategy/number
    assert {"metrics.`train_seconds`", "tags.`mtl_search.family`"} <= set(columns[7:])
    assert len(columns) == len(set(columns)) and view["columnOrder"] == columns
    # this search's trials only (a filter on their parent: MLflow lists them unnested), the front ("true") first
    assert view["searchFilter"] == "tags.`mlflow.parentRunId` = 'parent' and tags.`mtl_search.role` = 'trial'"
    assert (view["orderByKey"], view["orderByAsc"], view["groupBy"]) == ("tags.`mtl_search.pareto`", False, None)
    # more than four tasks: Δm, worst gain and params are the objectives; every task's val value follows them
    many = _record(POINTS, [Objective(n, n, d) for n, d in (("delta_m", "max"), ("worst_gain", "max"), ("params", "min"))])
    many.references = {"val": {"a": 1.0, "b": 1.0}, "test": {"a": 1.0, "b": 1.0}}
    assert runs_table_view(many)["selectedColumns"][:7] == [
        "tags.`mtl_search.pareto`", "metrics.`delta_m`", "metrics.`worst_gain`", "metrics.`params`", "metrics.`val/a`",
        "metrics.`val/b`", "tags.`mtl_search.strategy`"]
    widths = view["columnWidths"]  # each tag column as wide as its name needs (the browser test sees the headers whole)
    assert set(widths) == {c for c in columns if c.startswith("tags.")}
    assert widths["tags.`mtl_search.strategy`"] > widths["tags.`mtl_search.pareto`"]


def test_review_page_saves_the_latest_searchs_view_in_the_browser_and_opens_its_trials(searched, tmp_path, monkeypatch):
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR
    from mlflow.server import app as flask_app

    from mtl_search.results.review import REVIEW_PATH
    from mtl_search.results.ui_server import create_app

    _, uri, _, experiment, parent, _ = searched
    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, uri)  # as `mlflow ui --backend-store-uri` sets it for its server
    create_app()
    create_app()  # a second app in the process adds nothing
    page = flask_app.test_client().get(REVIEW_PATH)
    assert page.status_code == 200 and page.mimetype == "text/html"
    script = page.get_data(as_text=True)
    key, view = (json.loads(v) for v in re.search(r"const key = (.*), view = (.*);\n", script).groups())
    target = json.loads(re.search(r"location.replace\((.*)\);", script).group(1))
    assert key == f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment.experiment_id}"]-ReactComponentState'
    assert view == json.loads(experiment.tags["mlflow.sharedViewState.mtl_search"])
    assert target.startswith(f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&compareRunsMode=TABLE&")
    assert parent.info.run_id in urllib.parse.unquote(target)
    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, f"sqlite:///{tmp_path / 'empty.db'}")
    assert flask_app.test_client().get(REVIEW_PATH).headers["Location"] == "/"  # no search yet: MLflow's home page


def _tiny_model():
    from mtl_search.data.problem import Problem, Task

    registry = load_registry()
    problem = Problem((6,), (Task("r", "regression"), Task("c", "binary"), Task("k", "multiclass", classes=3)))
    config = {"strategy": "mmoe", "trial_number": 0, "backbone.depth": 1, "backbone.width": 8,
              "mmoe.experts": 2, "mmoe.expert_width": 4, "mmoe.expert_depth": 1, "mmoe.tower_width": 4}
    from mtl_search.config import TrialConfig
    from mtl_search.nn.create import create_model

    parts = TrialConfig.from_flat(config)
    return registry, problem, config, create_model(problem, registry.strategies["mmoe"], registry.backbones["mlp"], parts.knobs, parts.backbone)


def test_saved_model_rebuilds_with_identical_predictions(tmp_path):
    registry, problem, config, model = _tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # weights a fresh build would not have
    save_model(tmp_path, model, config, problem, "mlp")
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(model.state_dict())
    loaded = load_model_dir(tmp_path, registry)
    x = torch.randn(5, 6)
    expected, got = predict(model, x), predict(loaded, x)
    for name in ("r", "c", "k"):
        assert torch.allclose(expected[name], got[name])
    assert got["k"].shape == (5, 3) and torch.allclose(got["k"].sum(1), torch.ones(5))
    assert ((got["c"] > 0) & (got["c"] < 1)).all()


def test_read_features_with_and_without_header_and_bad_rows(tmp_path):
    (tmp_path / "h.csv").write_text("f1,f2\n1,2\n3,4.5\n")
    (tmp_path / "n.csv").write_text("1,2\n3,4.5\n")
    assert read_numeric_csv(tmp_path / "h.csv", 2).tolist() == read_numeric_csv(tmp_path / "n.csv", 2).tolist() == [[1, 2], [3, 4.5]]
    (tmp_path / "w.csv").write_text("1,2,3\n")
    with pytest.raises(MtlSearchError, match="line 1: 3 columns, the model takes 2"):
        read_numeric_csv(tmp_path / "w.csv", 2)
    (tmp_path / "x.csv").write_text("1,2\n1,abc\n")
    with pytest.raises(MtlSearchError, match="line 2"):
        read_numeric_csv(tmp_path / "x.csv", 2)


# --- one real search shared by the tests below ---------------------------------------------------

@pytest.fixture(scope="module")
def searched(ray_session, tmp_path_factory):
    """A tiny search over two families, run from a scratch directory (the default store lands there)."""
    root = tmp_path_factory.mktemp("review")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        space = tiny_space(root, trials=3, experiment="review")
        assert main(["run", str(space)]) == 0
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("review")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("mtl_search.role") == "search")
    children = [r for r in runs if r.data.tags.get("mtl_search.role") == "trial"]
    return root, uri, client, experiment, parent, children


def test_parent_run_carries_plots_tables_and_description(searched):
    _, _, client, experiment, parent, children = searched
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.mtl_search"])
    assert "metrics.`val/y1`" in view["selectedColumns"]
    front = {a.path for a in client.list_artifacts(parent.info.run_id, "front")}
    assert {"front/front.png", "front/front_by_family.png", "front/front.html", "front/hypervolume.png",
            "front/search.json", "front/front.json", "front/trials.csv", "front/front.csv"} <= front
    assert len(json.loads(parent.data.tags["mtl_search.reference_point"])) == 2 and not parent.data.params.get("reference_point")
    assert "### Best per family" in parent.data.tags["mlflow.note.content"]
    root = Path(client.download_artifacts(parent.info.run_id, "front", str(searched[0] / "dl")))
    rows = list(csv.DictReader(io.StringIO((root / "trials.csv").read_text())))
    assert len(rows) == 3 and {"family", "train_seconds", "latency", "status", "run_name", "config/training.lr"} <= set(rows[0])
    assert {r["family"] for r in rows} <= {"hard_sharing", "mixture_of_experts"}
    front_json = json.loads((root / "front.json").read_text())
    assert sorted(t["run_id"] for t in front_json) == sorted(c.info.run_id for c in children if c.data.tags["mtl_search.pareto"] == "true")
    assert "plotly" in (root / "front.html").read_text()[:2_000_000]
    for child in children:
        assert child.data.tags["mtl_search.family"] in ("hard_sharing", "mixture_of_experts")
        assert child.data.tags["mtl_search.device"] == "cpu" and child.data.metrics["latency"] > 0


def test_front_model_reproduces_its_recorded_val_metric_and_predicts_from_csv(searched, capfd):
    root, uri, _, _, _, children = searched
    child = next(c for c in children if c.data.tags["mtl_search.pareto"] == "true")
    model = load_model(child.info.run_id, uri)
    registry = load_registry()
    from mtl_search.search.prepare import build_dataset
    from mtl_search.search.space import load_space

    dataset = build_dataset(load_space(root / "space.yaml"), registry)
    val = dataset.val
    predictions = predict(model, val.x)
    for task in ("y1", "y2"):
        mse = float(((predictions[task] - val.y[task].view(-1)) ** 2).mean())
        assert math.isclose(mse, child.data.metrics[f"val/{task}"], rel_tol=1e-4)
    features = root / "features.csv"
    features.write_text("\n".join(",".join(f"{v:.9g}" for v in row) for row in val.x[:7].tolist()) + "\n")
    out = root / "predictions.csv"
    capfd.readouterr()
    assert main(["predict", child.info.run_id, str(features), "--output", str(out), "--tracking-uri", uri]) == 0
    printed = capfd.readouterr()
    assert "Downloading artifacts" not in printed.err and "%|" not in printed.err, printed.err  # no tqdm bars
    assert printed.out.strip() == f"7 predictions written to {out}"
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 7 and math.isclose(float(rows[3]["y2"]), float(predictions["y2"][3]), rel_tol=1e-4, abs_tol=1e-6)
    dominated = next((c for c in children if c.data.tags["mtl_search.pareto"] == "false"), None)
    if dominated is not None:
        assert main(["predict", dominated.info.run_id, str(features), "--tracking-uri", uri]) == 2


def test_report_front_all_and_family(searched, capsys):
    _, uri, _, _, _, children = searched
    assert main(["report", "--tracking-uri", uri, "--format", "csv"]) == 0
    front_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(front_rows) == sum(c.data.tags["mtl_search.pareto"] == "true" for c in children)
    assert main(["report", "--tracking-uri", uri, "--format", "csv", "--all"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 3
    family = children[0].data.tags["mtl_search.family"]
    assert main(["report", "--tracking-uri", uri, "--format", "json", "--family", family]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trials"] and {t["family"] for t in report["trials"]} == {family}
    assert any(t["pareto"] for t in report["trials"])  # a family always has its own front
    assert main(["report", "--tracking-uri", uri, "--family", "no_such_family"]) == 2


# --- the MLflow UI, checked in a real browser ----------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


# the browser test's screenshot is kept as an artifact of the test run (CI keeps the folder)
SCREENSHOTS = Path(os.environ.get("MTL_SEARCH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


# what the page shows of each trial row: its run name (pinned on the left) and its cells by column, with their right edges
ROWS_SCRIPT = """
const name = Object.fromEntries(Array.from(document.querySelectorAll('.ag-pinned-left-cols-container .ag-row'))
    .map(r => [r.getAttribute('row-index'), r.innerText]));
return Array.from(document.querySelectorAll('.ag-center-cols-container .ag-row'))
    .sort((a, b) => a.getAttribute('row-index') - b.getAttribute('row-index'))
    .map(r => ({name: name[r.getAttribute('row-index')] || '', cells: Object.fromEntries(Array.from(r.querySelectorAll('.ag-cell'))
        .map(c => [c.getAttribute('col-id'), [c.innerText, c.getBoundingClientRect().right]]))}));
"""
# each header's name as shown: the text, and whether the header cuts it short
HEADERS_SCRIPT = """
return Object.fromEntries(Array.from(document.querySelectorAll('.ag-header-cell[col-id]')).map(h => {
    const text = Array.from(h.querySelectorAll('span')).find(e => e.children.length === 0 && e.textContent);
    return [h.getAttribute('col-id'), [text ? text.textContent : '', text ? text.scrollWidth > text.clientWidth : false,
                                       h.getBoundingClientRect().left]];
}));
"""


def _listed(rows: list[dict]) -> set[str]:
    """The trial run names the rows show (a row's name cell also holds its colour and its age)."""
    return {line for r in rows for line in r["name"].splitlines() if line.startswith("trial-")}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@pytest.mark.browser
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
def test_mlflow_ui_link_opens_the_latest_searchs_trials_front_first_beside_a_groups_run(searched, tmp_path):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, uri, client, experiment, parent, children = searched
    # a `groups` run beside the search, in the same experiment: a run of its own at the top of the table
    assert main(["groups", str(root / "space.yaml"), "--tracking-uri", uri]) == 0
    assert len(client.search_runs([experiment.experiment_id])) == len(children) + 2
    port = _free_port()
    log = (tmp_path / "ui.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mtl_search.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1600,1000",
                 f"--user-data-dir={tmp_path / 'chromium'}"):  # a fresh profile: a first visit, nothing saved in the browser
        options.add_argument(flag)
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(base + "/health", 240)
        artifact = urllib.request.urlopen(f"{base}/get-artifact?path=front/front.png&run_uuid={parent.info.run_id}", timeout=30)
        assert artifact.status == 200 and artifact.read(8) == b"\x89PNG\r\n\x1a\n"
        deadline = time.monotonic() + 30  # the link is printed once the server answers (polled every half second)
        while "latest search: " not in (printed := (tmp_path / "ui.log").read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        url = next(line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("latest search: "))
        assert url == f"{base}/mtl-search/latest"

        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        browser.get(url)
        names = {c.info.run_name for c in children}
        try:  # every trial listed, no other run: the search's trials, unnested
            WebDriverWait(browser, 90).until(lambda b: _listed(b.execute_script(ROWS_SCRIPT)) == names)
            time.sleep(2)  # the grid settles its column widths
        except TimeoutException:
            pass  # judged below, on the screenshot's state
        browser.save_screenshot(str(SCREENSHOTS / "mlflow_runs_view.png"))
        rows, headers = browser.execute_script(ROWS_SCRIPT), browser.execute_script(HEADERS_SCRIPT)
        body = browser.find_element(By.TAG_NAME, "body").text
        width = browser.execute_script("return Math.min(window.innerWidth, "  # the right edge of the table's visible part
                                       "document.querySelector('.ag-center-cols-viewport').getBoundingClientRect().right)")

        assert _listed(rows) == names and len(rows) == len(children), rows
        assert f"{len(children)} matching runs" in body
        assert "shared view" not in body.lower()
        assert "Ask questions about your experiments" not in body  # MLflow's assistant panel stays closed
        # the per-task metrics, Δm and the worst gain: a number for every trial, on the first screen
        for metric in ("val/y1", "val/y2", "delta_m", "worst_gain"):
            cells = [r["cells"].get(f"metrics.`{metric}`") for r in rows]
            assert all(c is not None and _number(c[0]) is not None and c[1] <= width for c in cells), (metric, cells)
        # the front first
        front = [r["cells"]["tags.`mtl_search.pareto`"][0] for r in rows]
        assert "true" in front and front == sorted(front, reverse=True), front
        # the stored view's order (pareto, objectives, Δm, worst gain, parameter count, strategy, knobs) and whole header names
        view = ["tags.`mtl_search.pareto`", "metrics.`val/y1`", "metrics.`val/y2`", "metrics.`delta_m`", "metrics.`worst_gain`",
                "metrics.`params`", "tags.`mtl_search.strategy`", "params.`backbone.activation`"]
        assert [headers[c][2] for c in view] == sorted(headers[c][2] for c in view), headers
        for column in ("tags.`mtl_search.strategy`", "tags.`mtl_search.pareto`"):
            assert headers[column][0] == column[len("tags.`"):-1] and not headers[column][1], headers[column]
        # a front trial's pyfunc model: its page in the UI, its MLmodel with the signature
        front = next(c for c in children if c.data.tags["mtl_search.pareto"] == "true")
        model = next(m for m in client.search_logged_models([experiment.experiment_id]) if m.source_run_id == front.info.run_id)
        wait = WebDriverWait(browser, 90)
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/models/{model.model_id}")
        wait.until(lambda b: b.find_elements(By.XPATH, "//*[text()='Artifacts']"))[0].click()
        wait.until(lambda b: b.find_elements(By.XPATH, "//*[text()='MLmodel']"))[0].click()
        wait.until(lambda b: "signature" in b.find_element(By.TAG_NAME, "body").text)
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "tensor-spec" in text[text.index("signature"):] and "input_example.json" in text
        browser.save_screenshot(str(SCREENSHOTS / "mlflow_front_model_signature.png"))
    finally:
        if browser is not None:
            browser.save_screenshot(str(tmp_path / "last.png"))
            browser.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


def test_problem_json_keeps_a_tables_features():
    from mtl_search.data.features import (
        CategoricalFeature,
        NumericFeature,
        TableFeatures,
    )
    from mtl_search.data.problem import Problem, Task
    from mtl_search.results.saved_models import problem_from_json, problem_to_json

    features = TableFeatures((NumericFeature("age", 40.0, 12.0, False),), (CategoricalFeature("city", ("a", "b")),))
    problem = Problem((2,), (Task("y", "binary"),), features=features)
    back = problem_from_json(json.loads(json.dumps(problem_to_json(problem))))
    assert back == problem and back.features == features
