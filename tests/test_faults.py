"""Faults, early stopping, interrupts and reproducibility of a search (issue 7), with an injected-fault plugin."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
from conftest import tiny_space
from mlflow.tracking import MlflowClient

from mtl_search.cli import main
from mtl_search.knobs import Choice
from mtl_search.results.store import default_tracking_uri
from mtl_search.search.run import RunOptions, run_search
from mtl_search.search.space import load_space

FAULT_PLUGIN = Path(__file__).with_name("fault_plugin.py")


def edit_space(path: Path, search: dict | None = None, training: dict | None = None) -> Path:
    """Set keys of the ``search:`` and ``training:`` sections of a tiny space file."""
    text = path.read_text()
    for section, values in (("search", search or {}), ("training", training or {})):
        for key, value in values.items():
            lines = text.split("\n")
            start = lines.index(f"{section}:")
            end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
            block = [line for line in lines[start + 1:end] if not line.startswith(f"  {key}:")] + [f"  {key}: {value}"]
            text = "\n".join(lines[:start + 1] + block + lines[end:])
    path.write_text(text)
    return path


def fault_space(workdir: Path, faults: list[str], trials: int, search: dict | None = None, training: dict | None = None) -> Path:
    """A tiny space searching only the ``faulty`` strategy over ``faults``."""
    path = tiny_space(workdir, strategies=f"  faulty: {{fault: {{choice: [{', '.join(faults)}]}}}}", trials=trials)
    # every backbone knob fixed: the grid sampler takes discrete knobs only
    text = path.read_text().replace("width: 16}", "width: 16, activation: relu, norm: none, dropout: 0.0}")
    path.write_text(f"plugins: [{FAULT_PLUGIN}]\n" + text)
    return edit_space(path, search, training)


def report_json(capsys) -> dict:
    capsys.readouterr()
    assert main(["report", "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def optuna_states() -> list[str]:
    storage = f"sqlite:///{Path.cwd() / 'mlflow' / 'optuna.db'}"
    (name,) = optuna.study.get_all_study_names(storage)
    return [t.state.name for t in optuna.load_study(study_name=name, storage=storage).get_trials()]


def mlflow_trials() -> list:
    client = MlflowClient(default_tracking_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if r.data.tags.get("mtl_search.role") == "trial"]


def test_raise_nan_and_timeout_fail_the_trial_and_the_search_goes_on(ray_session, workdir, capsys):
    space = fault_space(workdir, ["none", "raise", "nan", "slow"], trials=4, search={"sampler": "grid"}, training={"max_trial_seconds": 12})
    assert main(["run", str(space)]) == 0
    report = report_json(capsys)
    by_fault = {t["params"]["faulty.fault"]: t for t in report["trials"]}
    assert set(by_fault) == {"none", "raise", "nan", "slow"}  # the grid visits each value once
    assert by_fault["none"]["status"] == "finished" and by_fault["none"]["pareto"]
    for fault in ("raise", "nan", "slow"):
        assert by_fault[fault]["status"] == "failed" and not by_fault[fault]["pareto"]

    client = MlflowClient(default_tracking_uri())
    runs = {r.data.params["faulty.fault"]: r for r in mlflow_trials()}
    expected = {"raise": "injected fault: build failed", "nan": "FloatingPointError: non-finite training loss",
                "slow": "TrialTimeout: trial exceeded training.max_trial_seconds=12"}
    for fault, text in expected.items():
        run = runs[fault]
        assert run.info.status == "FAILED"
        error = Path(client.download_artifacts(run.info.run_id, "error.txt", str(workdir))).read_text()
        assert text in error
    assert runs["none"].info.status == "FINISHED"
    assert sorted(optuna_states()) == ["COMPLETE", "FAIL", "FAIL", "FAIL"]


def test_max_failures_aborts_cleanly_with_the_front_of_what_finished(ray_session, workdir, capsys):
    space = fault_space(workdir, ["none", "raise"], trials=8, search={"max_failures": 1, "sampler": "random", "concurrency": 1})
    assert main(["run", str(space)]) == 1
    out = capsys.readouterr().out
    assert "more than search.max_failures=1; search aborted" in out
    report = report_json(capsys)
    statuses = [t["status"] for t in report["trials"]]
    assert statuses.count("failed") == 2 and len(statuses) < 8  # aborted at the second failure
    client = MlflowClient(default_tracking_uri())
    parent = client.get_run(report["search_run_id"])
    assert parent.info.status == "FAILED"
    assert "front/search.json" in {a.path for a in client.list_artifacts(parent.info.run_id, "front")}
    assert all(r.info.status != "RUNNING" for r in mlflow_trials())


def test_trials_stopped_early_stay_out_of_the_front(ray_session, workdir, capsys):
    space = fault_space(workdir, ["none", "stall"], trials=5, search={"early_stopping": "asha", "sampler": "random", "concurrency": 1},
                        training={"epochs": 5})
    assert main(["run", str(space)]) == 0
    report = report_json(capsys)
    stopped = [t for t in report["trials"] if t["status"] == "stopped"]
    finished = [t for t in report["trials"] if t["status"] == "finished"]
    assert stopped and finished and len(stopped) + len(finished) == 5
    assert not any(t["pareto"] or t["val"] for t in stopped)
    runs = {int(r.data.tags["mtl_search.trial_number"]): r for r in mlflow_trials()}
    for trial in stopped:
        run = runs[trial["number"]]
        assert run.info.status == "KILLED" and run.data.tags["mtl_search.status"] == "stopped"
        assert len(MlflowClient(default_tracking_uri()).get_metric_history(run.info.run_id, "score")) < 5
    states = optuna_states()
    assert states.count("PRUNED") == len(stopped) and states.count("COMPLETE") == len(finished)


def _interrupting_echo(lines: list[str], on: str, times: int):
    """An echo that sends this process SIGINT ``times`` times when a line containing ``on`` is printed."""
    def echo(line: str) -> None:
        lines.append(line)
        if on in line:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
    return echo


def test_first_ctrl_c_lets_running_trials_finish_and_schedules_no_more(ray_session, workdir):
    lines: list[str] = []
    space = load_space(tiny_space(workdir, trials=8))
    record = run_search(space, RunOptions(), progress=_interrupting_echo(lines, "[1/8]", 1))
    assert any("no new trials" in line for line in lines)
    assert 1 <= len(record.trials) < 8
    assert all(t.status == "finished" for t in record.trials)
    assert record.front and record.hypervolume is not None
    parent = MlflowClient(default_tracking_uri()).get_run(record.search_run_id)
    assert parent.data.metrics["front_size"] == len(record.front)
    # an interrupted search is marked so, and --resume continues it
    assert record.interrupted and parent.info.status == "KILLED" and parent.data.tags["mtl_search.interrupted"] == "true"


def test_second_ctrl_c_cancels_running_trials(ray_session, workdir):
    lines: list[str] = []
    # both Ctrl-C come as the first (slow) trial starts: it is cancelled, and no other trial starts
    space = load_space(fault_space(workdir, ["slow", "none"], trials=3, search={"concurrency": 1, "sampler": "grid"}))
    space.strategies["faulty"]["fault"] = Choice("slow")
    record = run_search(space, RunOptions(), progress=_interrupting_echo(lines, ": started", 2))
    assert any("cancelling running trials" in line for line in lines)
    assert [t.status for t in record.trials] == ["stopped"]
    assert not record.front and record.hypervolume is None
    assert all(r.info.status != "RUNNING" for r in mlflow_trials())
    assert MlflowClient(default_tracking_uri()).get_run(record.search_run_id).info.status == "KILLED"


def test_same_seed_same_configurations_and_metrics(ray_session, workdir):
    space = load_space(tiny_space(workdir, trials=3))
    runs = [run_search(space, RunOptions(concurrency=1, experiment=name)) for name in ("first", "second")]
    first, second = ([(t.number, t.params, t.val, t.test) for t in sorted(r.trials, key=lambda t: t.number)] for r in runs)
    assert len(first) == 3 and first == second
    assert len({json.dumps(params, sort_keys=True) for _, params, _, _ in first}) > 1  # the sampler did vary them


def test_a_failing_tracking_write_is_reported_and_the_later_writes_still_run_in_order():
    from mtl_search.results.trial_runs import BackgroundWriter

    done, warnings = [], []
    release = threading.Event()
    writer = BackgroundWriter(warnings.append)

    def slow(tag: str) -> None:
        release.wait(5)
        done.append(tag)

    def log_epoch(run_id: str) -> None:
        raise ConnectionError(f"store unreachable for {run_id}")

    writer.submit(slow, "first")
    writer.submit(log_epoch, "run-1")
    writer.submit(done.append, "after the failure")
    assert done == [], "submit must not wait for the write (Tune's loop would stall)"
    release.set()
    writer.close()  # waits for every queued call
    assert done == ["first", "after the failure"]
    assert len(warnings) == 1 and "log_epoch" in warnings[0] and "store unreachable for run-1" in warnings[0]


def test_two_searches_started_together_in_one_folder_both_run(ray_session, workdir):
    """Both create the folder's MLflow and Optuna stores at once: one waits for the other, neither fails."""
    import ray

    space = tiny_space(workdir, trials=2)
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    runs = [subprocess.Popen([sys.executable, "-m", "mtl_search.cli", "run", str(space), "--experiment", name, "--address", address,
                              "--concurrency", "1"], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            for name in ("first", "second")]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    assert [code for code, _ in results] == [0, 0], [err[-1500:] for _, err in results]
    client = MlflowClient(default_tracking_uri())
    for name in ("first", "second"):
        trials = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.`mtl_search.role` = 'trial'")
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)


def test_epoch_progress_lines_name_the_epoch_and_the_metrics(ray_session, workdir):
    lines: list[str] = []
    record = run_search(load_space(tiny_space(workdir, trials=1)), RunOptions(epoch_progress=True), progress=lines.append)
    trial = record.trials[0]
    epochs = [line for line in lines if f"trial {trial.number} {trial.strategy}: epoch " in line]
    assert epochs and epochs[0].startswith(f"trial {trial.number} {trial.strategy}: epoch 1 of 2 (y1 mse ")
    quiet: list[str] = []
    run_search(load_space(tiny_space(workdir, trials=1, experiment="quiet")), RunOptions(), progress=quiet.append)
    assert not any(": epoch " in line for line in quiet)  # off unless asked (the command line asks on a terminal)
