"""Every shipped space (search_spaces/*.yaml) runs end to end: one trial at the smallest budget, through run_search.

A shipped example that no longer parses, validates, builds its references or trains a trial
fails here. The budget is overridden from the test (one epoch, one trial, one at a time,
small data where the data set takes a size); the spaces themselves are run as shipped.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mtl_search.cli import main
from mtl_search.results.store import default_tracking_uri
from mtl_search.search.run import RunOptions, run_search
from mtl_search.search.space import load_space

REPO = Path(__file__).resolve().parents[1]
# run in full, with checks of their own, by test_branching_space_runs_and_records_trees_and_affinity and
# test_adashare_space_runs_against_hard_sharing: not run twice (the suite's time budget)
RUN_ELSEWHERE = {"branching": "test_branching.py", "adashare": "test_adashare.py"}
SPACES = sorted(p for p in (REPO / "search_spaces").glob("*.yaml") if p.stem not in RUN_ELSEWHERE)
SAMPLES = 300  # rows of a generated data set


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for every space (each its own experiment): creating a store costs seconds."""
    return tmp_path_factory.mktemp("shipped_spaces")


def smallest(path: Path):
    """The space at ``path`` with the smallest budget: one epoch, patience 1, one reference trial per task, a small generated data set."""
    space = load_space(path)
    space.epochs, space.patience, space.baseline.trials = 1, 1, 1
    if "samples" in space.dataset_options:
        space.dataset_options["samples"] = SAMPLES
    return space


def test_every_shipped_space_is_run_here_or_by_its_familys_test():
    assert {p.stem for p in SPACES} >= {"quickstart", "tabular_csv", "funnel", "digits", "moe"}
    for stem, test_file in RUN_ELSEWHERE.items():
        assert f'"search_spaces" / "{stem}.yaml"' in (REPO / "tests" / test_file).read_text()


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_runs_one_trial(path, ray_session, store, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(store)
    space = smallest(path)
    record = run_search(space, RunOptions(trials=1, concurrency=2))
    (trial,) = record.trials
    assert trial.status == "finished", trial.error
    assert set(trial.val) == set(record.task_metrics) and all(math.isfinite(v) for v in trial.val.values()), trial.val
    if space.baseline.enabled:
        assert set(record.references["val"]) == set(record.task_metrics) and math.isfinite(trial.metrics["delta_m"])

    capsys.readouterr()
    assert main(["report", "--format", "json", "--experiment", space.experiment]) == 0  # as MLflow recorded it
    report = json.loads(capsys.readouterr().out)
    assert [t["run_id"] for t in report["trials"]] == [trial.run_id] and report["trials"][0]["val"] == pytest.approx(trial.val)
    if space.baseline.gbdt:  # the comparison row: on the search run in MLflow, with the trial's gain over it
        assert set(record.gbdt["val"]) == set(record.task_metrics) and all(math.isfinite(v) for v in record.gbdt["test"].values())
        metrics = MlflowClient(default_tracking_uri()).get_run(record.search_run_id).data.metrics
        assert {t: metrics[f"gbdt/val/{t}"] for t in record.task_metrics} == pytest.approx(record.gbdt["val"])
        assert report["gbdt"]["test"] == pytest.approx(record.gbdt["test"])
        assert set(report["trials"][0]["gbdt_gains"]) == set(record.task_metrics)
