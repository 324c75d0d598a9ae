"""What the benchmark harnesses share: timing by median of repeats, the machine line, writing results.

Each harness is ``python -m benchmarks.NAME [--quick] [--out DIR]`` and writes ``NAME.md``
(the table benchmarks/README.md quotes) and ``NAME.json`` (every figure) to DIR, by default
``benchmarks/results``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``fn`` over ``repeats`` calls, after one warm-up call.

    ``clock=time.process_time`` measures this process's CPU time instead of wall time: on a
    machine shared with other jobs, single-threaded work is then not inflated by their load.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def machine() -> str:
    """The machine and its load when measured: timings on a shared machine mean little without it."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}; load average (1/5/15 min) {load}"


def parser(doc: str) -> argparse.ArgumentParser:
    """The common command line: ``--quick`` (tiny sizes, for the test suite) and ``--out``."""
    parse = argparse.ArgumentParser(description=doc.splitlines()[0])
    parse.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run, for the tests)")
    parse.add_argument("--out", type=Path, default=RESULTS, help="folder for NAME.md and NAME.json")
    return parse


def write(name: str, markdown: str, data: dict[str, Any], out: Path) -> str:
    """Write ``NAME.md`` and ``NAME.json`` to ``out``; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(markdown)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return markdown


def describe(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for a single value) and median of repeated runs."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values)}


class TrialRun(NamedTuple):
    """One trial of :func:`run_trials_in_process`: its training seconds, its flat configuration and its final result."""

    seconds: float
    config: dict[str, Any]
    result: dict[str, Any]


def _quiet_optuna() -> None:
    """Optuna's per-trial log lines and its experimental-feature warnings off, as run_search does."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_trials_in_process(space: Any, sampler: Any = None, references: dict[str, dict[str, float]] | None = None) -> list[TrialRun]:
    """The space's trials run one after another in this process, with Optuna but without Ray or MLflow.

    Each configuration comes from the search's own define-by-run space and ``sampler``
    (default: the space's); each trial's objective values are told back to the study. Gains
    and Δm are measured against ``references``; when an objective is a gain and none are
    given, the space's own (:func:`run_references_in_process`) are trained first.
    Returns each trial's seconds, configuration (``training.lr``, ``mmoe.experts`` ...) and final result.
    """
    import optuna

    from mtl_search.record import is_gain_key
    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import TrialSpace, make_sampler
    from mtl_search.search.trial import make_trial_plan, train_trial

    _quiet_optuna()
    plan, dataset, _ = prepare(space)
    if references is None and any(is_gain_key(o.key) for o in plan.objectives):
        references = run_references_in_process(space)[0]
    trial_plan = make_trial_plan(plan, references)
    sampler = sampler or make_sampler(space.search.sampler, space.search.seed, 1, plan)
    study = optuna.create_study(sampler=sampler, directions=[f"{o.direction}imize" for o in plan.objectives])
    define = TrialSpace(plan)
    done = []
    for _ in range(space.search.trials):
        trial = study.ask()
        config = define(trial)
        start = time.perf_counter()
        result = train_trial(config, dataset, trial_plan, report=lambda metrics, checkpoint_dir=None: None)
        done.append(TrialRun(time.perf_counter() - start, config, result))
        study.tell(trial, [result[o.key] for o in plan.objectives])
    return done


def run_references_in_process(space: Any) -> tuple[dict[str, dict[str, float]], dict[str, list[TrialRun]]]:
    """Each task's single-task reference trials run one after another in this process, as the search's reference phase does, without Ray or MLflow.

    Per task, a study of its own (the search's sampler kind and seed rule, ``ReferenceSpace.sampler``)
    asks ``ReferenceSpace.budget(search.trials)`` configurations, each trained by ``train_trial``
    and told its validation metric. The reference is the trial best on validation, with that
    model's test metric. Returns the references ``{"val": {task: m}, "test": {task: m}}`` and each task's trials.
    """
    import optuna

    from mtl_search.record import TrialRecord, val_key
    from mtl_search.search.prepare import prepare
    from mtl_search.search.references import best_references
    from mtl_search.search.sampling import ReferenceSpace
    from mtl_search.search.trial import make_trial_plan, train_trial

    _quiet_optuna()
    plan, dataset, _ = prepare(space)
    trial_plan = make_trial_plan(plan)
    runs: dict[str, list[TrialRun]] = {}
    for task in plan.problem.tasks:
        task_space = ReferenceSpace(plan, task.name)
        study = optuna.create_study(sampler=task_space.sampler(), direction=f"{task.direction}imize")
        runs[task.name] = []
        for _ in range(task_space.budget(space.search.trials)):
            trial = study.ask()
            config = task_space(trial)
            start = time.perf_counter()
            result = train_trial(config, dataset, trial_plan, report=lambda metrics, checkpoint_dir=None: None)
            runs[task.name].append(TrialRun(time.perf_counter() - start, config, result))
            study.tell(trial, result[val_key(task.name)])
    records = [TrialRecord.from_result(r.config, "", "finished", r.result, "") for task_runs in runs.values() for r in task_runs]
    return best_references(records, plan.problem)[0], runs


def process_tree(pid: int) -> list[dict[str, Any]]:
    """A process and all its descendants (Linux /proc): pid, command line, resident and peak resident MiB."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{current}/status").read_text().splitlines() if ":" in line)
            command = Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            found.append({"pid": current, "command": command, "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
                          "peak_mib": int(status["VmHWM"].split()[0]) / 1024})
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, KeyError, ValueError):  # the process ended meanwhile
            continue
    return found


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants; shared pages count once per process."""
    return sum(p["rss_mib"] for p in process_tree(pid))
