"""Resume after the driver is killed (or Ctrl-C'd) at chosen moments: every requested trial runs, each number once, nothing left RUNNING.

The kill comes from the driver itself (``MTL_SEARCH_KILL_AT``, mtl_search.search.faults), so each
moment is hit exactly: before the first trial, as a trial starts, while it trains, as its result
arrives, between MLflow recording it and Optuna being told, and after Optuna was told. With
``MTL_SEARCH_KILL_SIGNAL=INT`` the driver sends SIGINT to its process group instead, as Ctrl-C
in a terminal does: the search drains, ends KILLED with exit status 130, and ``--resume`` finishes it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import tiny_space
from mlflow.tracking import MlflowClient

from mtl_search.cli import main
from mtl_search.results.store import default_tracking_uri

TRIALS = 4


def _killed_run(space: Path, workdir: Path, point: str, concurrency: int, ctrl_c: bool = False) -> subprocess.CompletedProcess:
    import ray

    address = ray.get_runtime_context().gcs_address  # the killed driver joins this session's Ray, which outlives it
    command = [sys.executable, "-m", "mtl_search.cli", "run", str(space), "--address", address, "--concurrency", str(concurrency)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MTL_SEARCH_KILL_AT": point, "MTL_SEARCH_KILL_SIGNAL": "INT" if ctrl_c else ""}
    # a process group of its own, as a terminal gives a command: the SIGINT reaches the driver and nothing of the test's
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env, timeout=600, start_new_session=True)
    expected = 130 if ctrl_c else -signal.SIGKILL
    assert result.returncode == expected, f"the driver was not stopped at {point}: {result.returncode}\n{result.stderr[-2000:]}"
    return result


@pytest.mark.parametrize("point,concurrency", [
    # before any trial: test_resume_after_ctrl_c_runs_every_trial_once[search_started] (the suite's time budget)
    ("trial_started:2", 2), ("trial_training:3", 1),
    ("trial_ended:2", 2), ("trial_recorded:1", 1), ("trial_told:2", 2),
])
def test_resume_after_a_kill_runs_every_trial_once(ray_session, workdir, capsys, point, concurrency):
    space = tiny_space(workdir, trials=TRIALS)
    _killed_run(space, workdir, point, concurrency)

    _assert_resumed_once(workdir, capsys, concurrency)


@pytest.mark.parametrize("point,concurrency,started", [("search_started", 1, 0), ("trial_started:1", 2, 1), ("trial_ended:2", 1, 2)])
def test_resume_after_ctrl_c_runs_every_trial_once(ray_session, workdir, capsys, point, concurrency, started):
    space = tiny_space(workdir, trials=TRIALS)
    result = _killed_run(space, workdir, point, concurrency, ctrl_c=True)
    assert "Traceback" not in result.stderr and not result.stderr.strip(), result.stderr[-2000:]
    assert "Last result" not in result.stdout  # no Tune line for a trial stopped before it ran
    client = MlflowClient(default_tracking_uri())
    parent = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`mtl_search.role` = 'search'")[0]
    assert parent.info.status == "KILLED" and parent.data.tags["mtl_search.interrupted"] == "true"
    # after the Ctrl-C no new trial started, not even one Tune had already waiting for a slot
    assert result.stdout.count(": started") == started, result.stdout
    _assert_resumed_once(workdir, capsys, 2)


def _assert_resumed_once(workdir: Path, capsys, concurrency: int) -> None:
    """``--resume`` finishes the search: each trial once in MLflow and Optuna alike, nothing RUNNING."""
    space = workdir / "space.yaml"
    assert main(["run", str(space), "--resume", "--concurrency", str(concurrency)]) == 0
    capsys.readouterr()
    assert main(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    numbers = [t["number"] for t in report["trials"]]
    assert len(numbers) == TRIALS and len(set(numbers)) == TRIALS, numbers  # each trial once, none lost
    assert all(t["status"] == "finished" for t in report["trials"])

    client = MlflowClient(default_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags["mtl_search.role"] == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = [r for r in runs if r.data.tags["mtl_search.role"] == "trial" and r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["mtl_search.trial_number"]) for r in finished) == sorted(numbers)  # none trained twice
    killed = [r for r in runs if r.data.tags["mtl_search.role"] == "trial" and r.info.status == "KILLED"]
    assert {int(r.data.tags["mtl_search.trial_number"]) for r in killed} <= set(numbers)  # a killed trial's re-run is the one shown

    # the resumed search, when it finishes, gives each front trial with a model folder its pyfunc model, once
    import mlflow.artifacts

    front = [r for r in finished if r.data.tags.get("mtl_search.pareto") == "true"]
    with_folder = {r.info.run_id for r in front if mlflow.artifacts.list_artifacts(artifact_uri=f"{r.info.artifact_uri}/model")}
    logged = [m.source_run_id for m in client.search_logged_models([parents[0].info.experiment_id], filter_string="name = 'model'")]
    assert with_folder and sorted(logged) == sorted(with_folder)

    storage = f"sqlite:///{workdir / 'mlflow' / 'optuna.db'}"
    study = optuna.load_study(study_name=parents[0].data.tags["mtl_search.study"], storage=storage)
    # a re-run keeps the number of the trial it runs again (its configuration on the study trial says which)
    complete = sorted(t.user_attrs["mtl_search.config"]["trial_number"] for t in study.get_trials()
                      if t.state == optuna.trial.TrialState.COMPLETE)
    assert complete == sorted(numbers)  # Optuna holds the same trials as MLflow
    assert not [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]


def test_resume_without_the_study_says_what_was_kept_and_exits_2(ray_session, workdir, capsys):
    space = tiny_space(workdir, trials=2)
    _killed_run(space, workdir, "trial_recorded:1", 1)
    (workdir / "mlflow" / "optuna.db").unlink()
    assert main(["run", str(space), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot be continued" in err and "trial runs stay in MLflow" in err
