"""Resume after a crash (issue 7): SIGKILL a search in a subprocess after two trials finished, then --resume it."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import tiny_space
from mlflow.tracking import MlflowClient

from mtl_search.cli import main
from mtl_search.results.tracking import default_store_dir, default_tracking_uri

TRIALS = 6


def finished_trials(db: str, status: str = "FINISHED") -> int:
    """Trial runs MLflow holds with ``status`` (read straight from the sqlite store, as the killed process left it)."""
    if not os.path.exists(db):
        return 0
    with sqlite3.connect(db) as connection:
        try:
            return connection.execute(
                "SELECT COUNT(*) FROM runs JOIN tags ON runs.run_uuid = tags.run_uuid "
                "WHERE tags.key = 'mtl_search.role' AND tags.value = 'trial' AND runs.status = ?", (status,)).fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def test_resume_after_sigkill_runs_each_trial_once(ray_session, workdir, capsys):
    import ray

    space = tiny_space(workdir, trials=TRIALS)
    space.write_text(space.read_text().replace("epochs: 2", "epochs: 6"))
    # the killed driver joins this session's Ray instance, so the cluster outlives it as it would in production
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "mtl_search.cli", "run", str(space), "--address", address, "--concurrency", "1"]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    db = str(default_store_dir() / "mlflow.db")
    try:
        deadline = time.monotonic() + 300
        # killed while the third trial trains: right after a trial ends, Tune copies its own state
        # files non-atomically, and a kill inside that copy leaves a state Tune cannot restore
        while (finished_trials(db) < 2 or finished_trials(db, "RUNNING") == 0) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        assert process.poll() is None, "the search ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    finished_before = finished_trials(db)
    assert 2 <= finished_before < TRIALS

    client = MlflowClient(default_tracking_uri())
    runs_before = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert any(r.info.status == "RUNNING" for r in runs_before.values())  # the crash left the parent (and maybe a trial) running

    assert main(["run", str(space), "--resume", "--concurrency", "1"]) == 0
    capsys.readouterr()
    assert main(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    numbers = [t["number"] for t in report["trials"]]
    assert len(set(numbers)) == len(numbers)  # no trial number twice
    assert sum(t["status"] == "finished" for t in report["trials"]) == TRIALS
    # A trial that was only starting when the process died, before Tune saved its state, cannot be
    # restarted by Tune: it stays recorded as killed and Tune samples a replacement.
    assert all(t["status"] in ("finished", "killed") for t in report["trials"])

    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if r.data.tags["mtl_search.role"] == "search"]
    assert len(parents) == 1 and parents[0].info.run_id == report["search_run_id"]  # the parent run was reused
    assert parents[0].info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = [r for r in runs if r.data.tags["mtl_search.role"] == "trial" and r.info.status == "FINISHED"]
    assert len(finished) == TRIALS  # trials finished before the crash were not run again
    assert {r.info.run_id for r in runs_before.values() if r.info.status == "FINISHED"} <= {r.info.run_id for r in finished}
