"""Kill soak: a search killed (SIGKILL of the driver) at random moments and resumed each time loses and repeats no trial.

``python -m benchmarks.kill_soak [--quick]``: a search of 12 trials at concurrency 2 on a
Ray head started for it (the cluster outlives the driver, as in production); the driver is
killed after a random delay, then ``mtl-search run --resume`` continues it, 10 times; a
last resume runs to the end. Then the record is read back from MLflow and Optuna:

- kills survived: resumes that continued the search (exit 0, or killed again later);
- trials lost: requested trials without a finished record;
- trials repeated: finished MLflow trial runs beyond one per trial number (trained twice);
- training time lost: the wall time of trial runs a kill ended (KILLED), which were re-run.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from .common import machine, parser, write

SPACE = """\
experiment: soak
data: {{dataset: synthetic_correlated, options: {{samples: {samples}, seed: 0}}}}
backbone: {{kind: mlp, depth: 2, width: 16}}
strategies:
  hard_sharing: {{}}
  mmoe: {{experts: {{int: [2, 3]}}, expert_width: 8}}
training: {{epochs: {epochs}, patience: {epochs}, batch_size: 128}}
search: {{trials: {trials}, concurrency: 2, seed: 0}}
"""


def _cli(*args: str, cwd: Path, address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "mtl_search.cli", *args, "--address", address], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_search(db: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until the search (parent) run is in the sqlite store, read straight from the file."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as connection:
                    if connection.execute("SELECT COUNT(*) FROM tags WHERE key = 'mtl_search.role' AND value = 'search'").fetchone()[0]:
                        return
            except sqlite3.OperationalError:  # tables not created yet
                pass
        time.sleep(0.2)


def soak(kills: int, trials: int, epochs: int, samples: int, delays: tuple[float, float], seed: int) -> dict[str, Any]:
    """Run the soak in a scratch folder; returns its figures."""
    import optuna
    from mlflow.tracking import MlflowClient

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "space.yaml").write_text(SPACE.format(samples=samples, epochs=epochs, trials=trials))
        port = 6400 + rng.randrange(500)
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        subprocess.run(["ray", "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"],
                       check=True, capture_output=True, env=env)
        address = f"127.0.0.1:{port}"
        log, start = [], time.perf_counter()
        try:
            for run in range(kills + 1):
                process = _cli("run", "space.yaml", *(["--resume"] if run else []), cwd=work, address=address)
                if run == 0:  # a search killed before it recorded itself has nothing to resume: the clock starts once it has
                    _wait_for_search(work / "mlflow" / "mlflow.db", process)
                delay = rng.uniform(*delays)
                try:  # the last run, or one that finishes before its kill, runs to the end
                    process.wait(timeout=None if run == kills else delay)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                err = process.stderr.read() if process.stderr else ""
                log.append({"run": run, "killed_after_s": round(delay, 2) if process.returncode == -signal.SIGKILL else None,
                            "exit": process.returncode, "stderr": err[-500:]})
                if process.returncode != -signal.SIGKILL:
                    break  # finished (0) or failed: nothing more to kill
            wall = time.perf_counter() - start
            client = MlflowClient(f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
            experiment = client.get_experiment_by_name("soak")
            runs = client.search_runs([experiment.experiment_id], max_results=50000)
            trial_runs = [r for r in runs if r.data.tags.get("mtl_search.role") == "trial"]
            finished = [r for r in trial_runs if r.info.status == "FINISHED"]
            numbers = [int(r.data.tags["mtl_search.trial_number"]) for r in finished]
            killed = [r for r in trial_runs if r.info.status == "KILLED" and r.data.tags.get("mtl_search.status") != "stopped"]
            lost_seconds = sum(((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000 for r in killed)
            parent = next(r for r in runs if r.data.tags.get("mtl_search.role") == "search")
            study = optuna.load_study(study_name=parent.data.tags["mtl_search.study"], storage=f"sqlite:///{work / 'mlflow' / 'optuna.db'}")
            complete = sorted(t.number for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE)
        finally:
            subprocess.run(["ray", "stop", "--force"], capture_output=True, env=env)
    return {
        "kills": sum(entry["exit"] == -signal.SIGKILL for entry in log),
        # a kill is survived when the resume after it continued the search (ran to the end, or was killed in turn)
        "kills_survived": sum(1 for before, after in zip(log, log[1:]) if before["exit"] == -signal.SIGKILL and after["exit"] in (0, -signal.SIGKILL)),
        "trials": trials, "finished": len(set(numbers)), "trials_lost": trials - len(set(numbers)),
        "trials_repeated": len(numbers) - len(set(numbers)), "killed_trial_runs": len(killed),
        "training_seconds_lost": round(lost_seconds, 1), "optuna_matches_mlflow": complete == sorted(set(numbers)),
        "search_finished": parent.info.status == "FINISHED", "wall_s": round(wall, 1), "delays_s": list(delays), "log": log,
    }


def main(argv: list[str] | None = None) -> str:
    args = parser(__doc__).parse_args(argv)
    if args.quick:
        figures = soak(kills=1, trials=3, epochs=2, samples=400, delays=(8.0, 12.0), seed=0)
    else:
        figures = soak(kills=10, trials=12, epochs=20, samples=6000, delays=(4.0, 40.0), seed=0)
    markdown = textwrap.dedent(f"""\
        Kill soak: {figures['trials']} trials at concurrency 2, the driver killed with SIGKILL at {figures['kills']} random moments
        (each {figures['delays_s'][0]:g}–{figures['delays_s'][1]:g} s into a run) and resumed after each (`python -m benchmarks.kill_soak`).
        Machine: {machine()}.

        | kills | survived | trials finished | lost | repeated | killed trial runs re-run | training time lost | Optuna = MLflow | search finished | wall |
        | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |
        | {figures['kills']} | {figures['kills_survived']} | {figures['finished']} | {figures['trials_lost']} | {figures['trials_repeated']} | {figures['killed_trial_runs']} | {figures['training_seconds_lost']} s | {'yes' if figures['optuna_matches_mlflow'] else 'no'} | {'yes' if figures['search_finished'] else 'no'} | {figures['wall_s']} s |
        """)
    return write("kill_soak", markdown, figures, args.out)


if __name__ == "__main__":
    print(main())
