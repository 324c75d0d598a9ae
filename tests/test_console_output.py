"""What a search prints: values named by their metric with fixed significant digits, the run ids, the best trial
per strategy below the front, a failed trial's last error line, and the libraries' notices in a log file."""
from __future__ import annotations

import logging

from mtl_search.record import Objective, TrialRecord
from mtl_search.results.records import (
    SearchRecord,
    best_per_strategy,
    error_summary,
    final_summary,
    format_table,
    format_value,
    mark_front,
    trial_line,
)

OBJECTIVES = [Objective("y1", "val/y1", "min"), Objective("y2", "val/y2", "max")]
METRICS = {"y1": "mse", "y2": "auc"}


def _trial(number: int, strategy: str, y1: float, y2: float, status: str = "finished", error: str | None = None) -> TrialRecord:
    finished = status == "finished"
    return TrialRecord(number, f"run{number:02d}" + "0" * 26, strategy, {"strategy": strategy}, status,
                       val={"y1": y1, "y2": y2} if finished else {}, test={"y1": y1 * 2, "y2": y2 / 2} if finished else {},
                       error=error, family=strategy)


def _record() -> SearchRecord:
    trials = [_trial(0, "hard_sharing", 0.5, 0.7), _trial(1, "mmoe", 0.25, 0.6), _trial(2, "mmoe", 0.4, 0.95),
              _trial(3, "hard_sharing", 0.45, 0.8), _trial(4, "mmoe", 0, 0, status="failed", error="Traceback\nValueError: boom")]
    record = SearchRecord("demo", "parent", OBJECTIVES, trials, task_metrics=METRICS)
    record.hypervolume, record.reference_point = mark_front(trials, OBJECTIVES)
    return record


def test_values_have_four_significant_digits():
    assert [format_value(v) for v in (0.5, 0.46751, 12.0, 1234.0, 123456.0, 3, None)] == \
        ["0.5000", "0.4675", "12.00", "1234", "1.235e+05", "3", ""]


def test_table_headers_name_each_task_metric():
    table = format_table([{"number": 1, "val/y1": 0.25, "test/y2": 0.5, "params": 1200.0}], task_metrics=METRICS)
    header = table.splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == ["number", "val y1 mse", "test y2 auc", "params"]
    assert "0.2500" in table and "1200" in table


def test_best_per_strategy_takes_each_objective_in_its_direction():
    rows = {r["strategy"]: r for r in best_per_strategy(_record())}
    assert rows["mmoe"]["trials"] == 3 and rows["mmoe"]["finished"] == 2 and rows["mmoe"]["on front"] == 2
    assert rows["mmoe"]["best y1 mse"] == "0.2500 (trial 1)"  # min
    assert rows["mmoe"]["best y2 auc"] == "0.9500 (trial 2)"  # max
    assert rows["hard_sharing"]["best y1 mse"] == "0.4500 (trial 3)" and rows["hard_sharing"]["best y2 auc"] == "0.8000 (trial 3)"


def test_a_strategy_of_the_space_with_no_trials_is_listed_with_0_trials():
    record = _record()
    record.strategies = ["branching", "hard_sharing", "mmoe"]
    rows = {r["strategy"]: r for r in best_per_strategy(record)}
    assert rows["branching"]["trials"] == 0 and rows["branching"]["best y1 mse"] == "n/a" and rows["mmoe"]["trials"] == 3


def test_final_summary_has_the_front_with_run_ids_the_best_per_strategy_and_the_counts():
    record = _record()
    text = final_summary(record)
    front, best = text.split("Best per strategy (validation):")
    assert "Pareto front (validation):" in front
    for column in ("run_id", "val y1 mse", "val y2 auc", "test y1 mse", "test y2 auc"):
        assert column in front
    for trial in record.trials:
        assert (trial.run_id in front) == trial.pareto
    assert "hard_sharing" in best and "0.2500 (trial 1)" in best
    assert "5 trials (1 failed, 0 stopped early), front size 2, hypervolume " in text


def test_a_finished_trial_line_names_its_metrics():
    line = trial_line(_trial(3, "mmoe", 0.46751, 0.347), 4, 8, 2, METRICS)
    assert line == "[4/8] trial 3 mmoe: finished (y1 mse 0.4675, y2 auc 0.3470) | front size 2"


def test_a_failed_trial_line_shows_the_last_error_line_without_colour_codes_and_where_the_traceback_is():
    coloured = ("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1, ip=127.0.0.1)\n  File \"x.py\", line 3, in f\n"
                "    raise RuntimeError('x')\n\x1b[31mRuntimeError: injected fault: build failed\x1b[0m\n\n")
    assert error_summary(coloured) == "RuntimeError: injected fault: build failed"
    line = trial_line(_trial(5, "faulty", 0, 0, status="failed", error=coloured), 6, 8, 1, METRICS, "error.txt of MLflow run abc")
    assert line == ("[6/8] trial 5 faulty: failed: RuntimeError: injected fault: build failed "
                    "(full traceback: error.txt of MLflow run abc) | front size 1")
    assert "\x1b" not in line


def test_mlflow_database_setup_lines_go_to_the_log_file_not_the_console(tmp_path, capfd):
    from mtl_search.console import QUIET_LOGGERS, send_library_logs_to_file
    from mtl_search.results.search_run import Tracker

    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate, list(logging.getLogger(name).handlers))
             for name in QUIET_LOGGERS}
    try:
        log = send_library_logs_to_file(tmp_path / "mlflow")
        assert not log.exists()  # created on the first record only
        Tracker(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", "demo")
        captured = capfd.readouterr()
        assert "Creating initial MLflow database tables" not in captured.err + captured.out
        assert "Creating initial MLflow database tables" in log.read_text()
    finally:
        for name, (level, propagate, handlers) in saved.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    logger.removeHandler(handler)
                    handler.close()
            logger.setLevel(level)
            logger.propagate = propagate


def test_a_local_ray_instance_gets_an_explicit_auth_mode_and_a_cluster_keeps_its_own(monkeypatch):
    from mtl_search.console import quiet_ray_auth_notice

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    quiet_ray_auth_notice(connecting=True)
    import os

    assert "RAY_AUTH_MODE" not in os.environ
    quiet_ray_auth_notice(connecting=False)
    assert os.environ["RAY_AUTH_MODE"] == "token"  # Ray's default for a new local instance, set explicitly: no notice
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    quiet_ray_auth_notice(connecting=False)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_plot_axes_and_hover_text_name_the_metric():
    from mtl_search.results.plots import front_png, trials_by_family
    from mtl_search.results.review import front_data

    data = front_data(_record())
    assert data.names == ["y1 mse", "y2 auc"]
    figure = front_png(data, trials_by_family(data), "t")
    (panel,) = [ax for ax in figure.axes if ax.collections]
    assert panel.get_xlabel() == "y1 mse (lower is better)" and panel.get_ylabel() == "y2 auc (higher is better)"
    assert "y1 mse = 0.2500" in data.hover[1]
