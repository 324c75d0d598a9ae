"""The benchmark harnesses' quick forms, so they cannot rot: each writes its table and JSON of the right shape.

Structure only, never timings. The older harnesses (adashare_inference, lasem_cost,
table_loading) have their quick tests beside their features.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from benchmarks import common


def _written(tmp_path, name: str) -> tuple[dict, str]:
    return json.loads((tmp_path / f"{name}.json").read_text()), (tmp_path / f"{name}.md").read_text()


def test_median_seconds_is_the_median_of_the_timed_calls():
    ticks = iter([0.0, 1.0, 1.0, 4.0, 4.0, 6.0])  # calls of 1, 3 and 2 s after the untimed warm-up
    calls = []
    assert common.median_seconds(lambda: calls.append(1), repeats=3, clock=lambda: next(ticks)) == 2.0
    assert len(calls) == 4


def test_process_tree_finds_a_child_process_and_its_memory():
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 * 2**20); time.sleep(30)"])
    try:
        for _ in range(100):
            found = {p["pid"]: p for p in common.process_tree(os.getpid())}
            if child.pid in found and found[child.pid]["rss_mib"] > 60:
                break
            __import__("time").sleep(0.05)
        assert child.pid in found and os.getpid() in found
        assert found[child.pid]["peak_mib"] >= found[child.pid]["rss_mib"] > 60
        assert common.tree_rss_mib(os.getpid()) >= found[child.pid]["rss_mib"] + found[os.getpid()]["rss_mib"] - 1e-6
    finally:
        child.kill()
        child.wait()


def test_model_throughput_covers_every_registered_strategy(tmp_path):
    from benchmarks.model_throughput import main
    from mtl_search.registry import load_registry

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "model_throughput")
    assert sorted(r["strategy"] for r in result["rows"]) == sorted(load_registry().strategies)
    for row in result["rows"]:
        assert row["small"]["samples_per_s"] > 0 and row["large"]["samples_per_s"] > 0
        assert row["large"]["params"] > row["small"]["params"], f"{row['strategy']}: the large size is not larger"
        assert f"| {row['strategy']} |" in table
    assert next(r for r in result["rows"] if r["strategy"] == result["baseline"])["small"]["vs_baseline"] == 1.0
    images = {r["strategy"]: r for r in result["image_rows"]}
    assert {"mmoe (experts_on input)", "mmoe (experts_on backbone)", "cross_stitch", "mtan"} <= set(images)
    for row in images.values():
        assert row["small"]["samples_per_s"] > 0 and f"| {row['strategy']} |" in table
    # backbone experts are n copies of the conv backbone: more parameters than one MLP expert layer over the pixels
    assert images["mmoe (experts_on backbone)"]["small"]["params"] != images["mmoe (experts_on input)"]["small"]["params"]


def test_search_efficiency_curves(tmp_path):
    from benchmarks.search_efficiency import SAMPLERS, main, trials_to_reach

    assert trials_to_reach([0.2, 0.96, 0.99], 0.95) == 2 and trials_to_reach([0.2, 0.5], 0.95) is None
    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "search_efficiency")
    assert [r["sampler"] for r in result["rows"]] == list(SAMPLERS)
    assert result["reference_hypervolume"] > 0
    for row in result["rows"]:
        for curve in row["fraction_of_reference"]:
            assert len(curve) == result["budget"]
            assert all(b >= a for a, b in zip(curve, curve[1:])), "hypervolume must not fall as trials are added"
    assert "| tpe |" in table and "| random |" in table


@pytest.mark.slow  # three small searches (about 23 s); LossCurve, the sign test and the findings are unit-tested here on constructed values
def test_mmoe_reproduction_chooses_rates_by_search_and_averages_curves(tmp_path, ray_session):
    from benchmarks.mmoe_reproduction import CORRELATIONS, LEARNING_RATES, main

    main(["--quick", "--out", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    result, table = _written(tmp_path, "mmoe_reproduction")
    assert (tmp_path / "mmoe_reproduction.png").stat().st_size > 0
    labels = {"shared-bottom", "OMoE", "MMoE"}
    assert set(result["lr_search"]) == labels
    for by_p in result["lr_search"].values():
        assert [float(p) for p in by_p] == list(CORRELATIONS)
        for found in by_p.values():  # every rate of the grid tried; the chosen one has the lowest validation MSE
            val = {float(r): v for r, v in found["val_mse"].items()}
            assert sorted(val) == sorted(LEARNING_RATES) and found["lr"] == min(val, key=val.get)
    # one search per correlation, recorded in MLflow, choosing the three models' rates
    searches = {p: {by_p[p]["search_run_id"] for by_p in result["lr_search"].values()} for p in map(str, CORRELATIONS)}
    assert all(len(ids) == 1 for ids in searches.values()) and len({ids.pop() for ids in searches.values()}) == len(CORRELATIONS)
    steps = result["curve_steps"]
    assert steps and all(b - a == result["window"] for a, b in zip(steps, steps[1:]))
    for label, by_p in result["curves"].items():
        for p, runs in by_p.items():
            assert len(runs) == 2 and all(len(curve) == len(steps) for curve in runs)
            assert result["curve_summary"][label][p]["mean"] == pytest.approx([statistics.fmean(c) for c in zip(*runs)])
            assert result["final_training_loss"]["per_run"][label][p] == [curve[-1] for curve in runs]
            assert all(math.isfinite(v) and v > 0 for v in result["test_mse"]["per_run"][label][p])
    for name in ("final_training_loss", "test_mse"):
        assert len(result[name]["findings"]) == 5
        assert all(isinstance(f["means"], bool) and f["paired"] in ("yes", "no", "not significant", None) for f in result[name]["findings"])
    # 8 experts x 100 x 16 + 2 towers x 16 x 8: the paper's 13,056 for MMoE and OMoE (the gates come on top)
    assert result["params"]["MMoE"]["weights_without_gates_and_outputs"] == 13_056
    assert result["params"]["MMoE"]["all"] - result["params"]["OMoE"]["all"] == 800  # one more gate of 100 x 8
    assert "| MMoE |" in table and "| paper finding |" in table


def test_loss_curve_averages_the_tasks_then_windows_of_steps():
    from benchmarks.mmoe_reproduction import LossCurve

    curve = LossCurve(window=2)
    for step, (a, b) in enumerate([(1.0, 3.0), (2.0, 2.0), (0.0, 1.0), (1.0, 0.0), (9.0, 9.0)], start=1):
        curve(step, {"y1": a, "y2": b})
    assert curve.points == [2.0, 0.5]  # the fifth step starts a window that never fills


def test_sign_test_is_the_exact_two_sided_binomial_tail():
    from benchmarks.mmoe_reproduction import sign_test

    assert sign_test(5, 5) == pytest.approx(2 / 32) and sign_test(0, 5) == pytest.approx(2 / 32)
    assert sign_test(8, 10) == pytest.approx(2 * (45 + 10 + 1) / 1024)
    assert sign_test(5, 10) == 1.0


def _values(sb, omoe, mmoe):
    from benchmarks.mmoe_reproduction import CORRELATIONS

    return {label: {p: [run[i] for run in runs] for i, p in enumerate(CORRELATIONS)}  # runs: one tuple by correlation per run
            for label, runs in (("shared-bottom", sb), ("OMoE", omoe), ("MMoE", mmoe))}


def test_paired_comparisons_count_runs_on_the_same_draw():
    from benchmarks.mmoe_reproduction import paired

    # three runs (draws); at p = 0.5 MMoE beats shared-bottom on one draw only, though its mean is lower
    values = _values(sb=[(0.2, 0.1, 0.1), (0.02, 0.1, 0.1), (0.10, 0.1, 0.1)],
                     omoe=[(0.3, 0.2, 0.05), (0.03, 0.2, 0.05), (0.09, 0.2, 0.05)],
                     mmoe=[(0.05, 0.05, 0.1), (0.03, 0.05, 0.1), (0.11, 0.05, 0.1)])
    found = paired(values)
    assert [found["MMoE < shared-bottom"][p]["wins"] for p in (0.5, 0.9, 1.0)] == [1, 3, 0]
    assert [found["MMoE < OMoE"][p]["wins"] for p in (0.5, 0.9, 1.0)] == [1, 3, 0]  # a tie is not a win
    assert found["MMoE < shared-bottom"][0.5]["mean_difference"] == pytest.approx((-0.15 + 0.01 + 0.01) / 3)
    assert found["MMoE < OMoE"][0.9]["sign_test_p"] == pytest.approx(0.25)


def test_findings_hold_on_means_and_run_by_run_only_where_the_sign_test_says_so():
    from benchmarks.mmoe_reproduction import measure

    def findings(values):
        return measure(values)["findings"]

    # by correlation 0.5, 0.9, 1.0 per run: every finding true in every run, 4 x 3 = 12 runs (sign test 2 / 2^12)
    sb = [(0.9, 0.5, 0.3), (0.4, 0.3, 0.1), (0.8, 0.4, 0.2)] * 4
    omoe = [(0.6, 0.3, 0.1), (0.3, 0.2, 0.09), (0.5, 0.25, 0.11)] * 4
    mmoe = [(0.2, 0.15, 0.1), (0.12, 0.11, 0.08), (0.15, 0.12, 0.1)] * 4
    verdicts = [(f["means"], f["paired"]) for f in findings(_values(sb, omoe, mmoe))]
    assert verdicts == [(True, "yes")] * 4 + [(True, None)]
    # the same runs, only three: every run agrees, but three runs cannot make a sign test significant
    assert [f["paired"] for f in findings(_values(sb[:3], omoe[:3], mmoe[:3]))][:4] == ["not significant"] * 4
    # one draw so hard that shared-bottom's mean is the worst at p = 1, but OMoE loses on the other draws
    sb = [(0.9, 0.5, 5.0)] + [(0.4, 0.3, 0.1), (0.8, 0.4, 0.2)] * 6
    omoe = [(0.6, 0.3, 0.1)] + [(0.5, 0.4, 0.3), (0.9, 0.5, 0.3)] * 6
    mmoe = [mmoe[0]] + mmoe[1:3] * 6
    verdicts = findings(_values(sb, omoe, mmoe))
    assert verdicts[2]["finding"].startswith("both MoE") and (verdicts[2]["means"], verdicts[2]["paired"]) == (False, "no")
    assert "OMoE at 0.5 1/13 (sign test 0.0034)" in verdicts[2]["evidence"]


def test_a_comparison_won_in_28_of_50_runs_is_not_significant():
    from benchmarks.mmoe_reproduction import measure

    # the mixtures beat shared-bottom in every run, except OMoE at p = 0.5 in only 28 of 50 (sign test 0.48)
    sb = [(0.5, 0.5, 0.5)] * 50
    omoe = [(0.4 if i < 28 else 0.6, 0.4, 0.4) for i in range(50)]
    mmoe = [(0.3, 0.3, 0.3)] * 50
    found = measure(_values(sb, omoe, mmoe))["findings"][2]
    assert found["finding"].startswith("both MoE") and found["paired"] == "not significant"
    assert "OMoE at 0.5 28/50 (sign test 0.48)" in found["evidence"]


def test_the_committed_study_is_judged_by_its_per_run_values(tmp_path):
    from benchmarks.mmoe_reproduction import main

    committed = Path(__file__).parents[1] / "benchmarks" / "results" / "mmoe_reproduction.json"
    main(["--from-json", str(committed), "--out", str(tmp_path)])
    assert (tmp_path / "mmoe_reproduction.md").read_text() == committed.with_suffix(".md").read_text()
    assert json.loads((tmp_path / "mmoe_reproduction.json").read_text()) == json.loads(committed.read_text())


def test_ple_reproduction_gains(tmp_path):
    from benchmarks.ple_reproduction import CORRELATIONS, MODELS, main
    from mtl_search.registry import load_registry

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "ple_reproduction")
    registered = load_registry().strategies
    assert result["missing"] == [m.strategy for m in MODELS if m.strategy not in registered]
    assert set(result["gain_percent"]) == {m.label for m in MODELS if m.strategy in registered}
    single = result["test_mse"]["single-task"]
    for label, by_p in result["gain_percent"].items():
        for p in CORRELATIONS:
            runs = zip(single[str(p)], result["test_mse"][label][str(p)])
            per_run = [{t: 100 * (s[t] - m[t]) / s[t] for t in s} for s, m in runs]  # relative improvement over single-task
            for task, gain in by_p[str(p)].items():
                assert gain["median"] == pytest.approx(statistics.median(r[task] for r in per_run))
                assert gain["mean"] == pytest.approx(statistics.fmean(r[task] for r in per_run))
            medians = [g["median"] for g in by_p[str(p)].values()]
            assert result["seesaw"][label][str(p)] == (min(medians) < 0 < max(medians))
    assert "| hard sharing |" in table


def test_one_failed_run_does_not_decide_the_seesaw():
    from benchmarks.ple_reproduction import summarise

    single = [{"y1": 1.0, "y2": 1.0}] * 3
    mtl = [{"y1": 0.9, "y2": 0.95}, {"y1": 0.8, "y2": 0.9}, {"y1": 0.9, "y2": 6.0}]  # the last run did not train on y2
    result = summarise({"single-task": {0.5: single}, "MMoE": {0.5: mtl}})
    gain = result["gain_percent"]["MMoE"][0.5]
    assert gain["y2"]["median"] == pytest.approx(5.0) and gain["y2"]["mean"] < 0
    assert result["seesaw"]["MMoE"][0.5] is False


@pytest.mark.slow  # fresh interpreters and two searches; run_search's own tests and the MMoE study's quick run cover the search in CI
def test_search_overhead_quick(tmp_path, ray_session, workdir):
    from benchmarks.search_overhead import main

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "search_overhead")
    assert [r["concurrency"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert len(row["finished_at_s"]) == result["trials"] and row["overhead"] > 0
        assert row["ideal_s"] == pytest.approx(sum(result["trial_compute_s"]) / row["concurrency"])
    assert result["side_by_side_speed_up"] == pytest.approx(sum(result["trial_compute_s"]) / result["side_by_side_wall_s"])
    assert "| 2 |" in table
    import ray

    assert ray.is_initialized(), "the benchmark must leave a Ray it did not start running"


def test_memory_sampling_sees_the_trial_worker(ray_session, workdir):
    from benchmarks.memory import markdown, measure

    peaks = measure("quickstart", "1", quick=True)
    assert peaks["trials"] == 1
    assert peaks["trial_worker_mib"] > 50, "no Ray worker running a trial was found in the process tree"
    assert peaks["tree_mib"] > peaks["trial_worker_mib"]
    text = markdown({"machine_before": "m", "results": {"quickstart": peaks, "table": {**peaks, "rows": 10, "file_mib": 1.0}}})
    assert "| quickstart.yaml, 1 trials |" in text


@pytest.mark.slow
def test_memory_quick_in_fresh_processes(tmp_path):
    from benchmarks.memory import main

    main(["--quick", "--out", str(tmp_path)])
    result, _ = _written(tmp_path, "memory")
    assert set(result["results"]) == {"quickstart", "table"}
    assert all(r["driver_mib"] > 0 and r["trial_worker_mib"] > 0 for r in result["results"].values())


@pytest.mark.slow  # eight fresh interpreters; what the commands import is checked in CI by tests/test_commands.py
def test_command_latency_quick(tmp_path):
    from benchmarks.command_latency import main

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "command_latency")
    rows = result["this"]
    assert set(rows) == {"--help", "validate", "report", "plugins"}
    for name, row in rows.items():
        assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["import_s"] > 0, name
        assert f"| `{name}` |" in table
    assert rows["--help"]["heavy"] == []  # the figures' point: --help imports nothing heavy
    assert "torch" not in rows["report"]["heavy"] and "ray" not in rows["report"]["heavy"]


def test_bookkeeping_quick(tmp_path):
    from benchmarks.bookkeeping import QUICK, main

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "bookkeeping")
    assert [(r["objectives"], r["trials"]) for r in result["rows"]] == [(m, n) for m in QUICK["objectives"] for n in QUICK["trials"]]
    for row in result["rows"]:
        assert 1 <= row["front"] <= row["trials"] and row["ms_per_trial"] > 0
        assert row["history_last"] == pytest.approx(row["hypervolume"])  # the history ends at the search's hypervolume
    assert [(r["trials"], r["objectives"]) for r in result["old"]] == QUICK["old_cells"]
    assert "| 30 | 4 |" in table


def test_many_tasks_quick(tmp_path, ray_session, workdir):
    from benchmarks.many_tasks import main

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "many_tasks")
    assert result["tasks"] == 6 and result["trials"] == 2 and result["objectives"] == ["delta_m", "worst_gain", "params"]
    assert result["best"]["delta_m"] == max(t["delta_m"] for t in result["front"])  # the best Δm is never dominated
    assert math.isfinite(result["full_depth_hard_sharing"]["delta_m"])
    assert "hard sharing at full depth" in table


@pytest.mark.slow
def test_startup_quick_in_a_fresh_process(tmp_path):
    from benchmarks.startup import PHASES, main

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "startup")
    for run in (result["fresh_store"], result["existing_store"]):
        assert list(run["phases"]) == [key for key, _ in PHASES] and all(v >= 0 for v in run["phases"].values())
        assert sum(run["phases"].values()) == pytest.approx(run["to_training_s"])
    assert "command to first trial training" in table


@pytest.mark.slow
def test_kill_soak_quick(tmp_path):
    """One kill and a resume on a Ray head of its own (about a minute; the resume tests cover the moments exactly)."""
    from benchmarks.kill_soak import main as benchmark

    benchmark(["--quick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "kill_soak.json").read_text())
    assert report["trials_lost"] == 0 and report["trials_repeated"] == 0 and report["optuna_matches_mlflow"]
    assert report["search_finished"] and report["kills_survived"] == report["kills"]


def test_structure_search_curves_and_affinity_cost(tmp_path):
    from benchmarks.structure_search import ARMS, main

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "structure_search")
    assert [r["arm"] for r in result["rows"]] == list(ARMS)
    for row in result["rows"]:
        for curve in row["best_so_far"]:
            assert len(curve) == result["budget"] and all(b <= a for a, b in zip(curve, curve[1:]))
    groups = next(r for r in result["rows"] if r["arm"] == "groups")["groups"][0]
    assert [len(p) for p in groups["partitions"]] == [1, 2, 3, 4]  # the best partition for each number of groups
    assert result["affinity_step_cost"]["4"]["affinity"] > 0 and "| 4 | groups |" in table


@pytest.mark.slow
def test_driver_cpu_quick(tmp_path):
    """Two 4-trial searches in fresh processes (about half a minute)."""
    from benchmarks.driver_cpu import main as benchmark

    benchmark(["--quick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "driver_cpu.json").read_text())
    assert [r["objectives"] for r in report["rows"]] == [2, 12] and all(r["trials"] == 4 for r in report["rows"])
    assert report["ratio"] == pytest.approx(report["rows"][1]["driver_cpu_s"] / report["rows"][0]["driver_cpu_s"])


def test_pareto_early_stopping_replays_a_search_on_workers_and_frees_a_worker_at_a_stop():
    from benchmarks.pareto_early_stopping import Stream, replay

    streams = [Stream(n, [{"epoch": e} for e in (1, 2, 3, 4)], [1.0, 2.0, 3.0, 4.0], {"final": True}, 5.0) for n in range(3)]
    outcomes, epochs = replay(streams, None, workers=2)
    assert [(o.number, o.finished, o.end) for o in sorted(outcomes, key=lambda o: o.number)] == [(0, True, 5.0), (1, True, 5.0), (2, True, 10.0)]
    assert len(epochs) == 12

    class StopTrialOneAtEpochTwo:
        def on_trial_add(self, controller, trial):
            pass

        def on_trial_result(self, controller, trial, result):
            return "STOP" if trial.trial_id == "1" and result["epoch"] == 2 else "CONTINUE"

        def on_trial_complete(self, controller, trial, result):
            pass

    outcomes, epochs = replay(streams, StopTrialOneAtEpochTwo(), workers=2)
    ends = {o.number: (o.finished, o.epochs, o.end) for o in outcomes}
    assert ends == {0: (True, 4, 5.0), 1: (False, 2, 2.0), 2: (True, 4, 7.0)}  # trial 2 starts when trial 1 is stopped
    assert len(epochs) == 10


def test_pareto_early_stopping_counts_the_front_members_a_rule_stopped():
    from benchmarks.pareto_early_stopping import Stream, measure
    from mtl_search.record import Objective

    def stream(number: int, a: float, b: float) -> Stream:
        # epochs 1..8 at 1 s each; the trainer's score: 1 at epoch 1, then the mean val loss over its first-epoch value
        reports = [{"epoch": e, "score": 1.0 if e == 1 else (2 - a - b) / 1.8, "val/a": a, "val/b": b} for e in range(1, 9)]
        return Stream(number, reports, [float(e) for e in range(1, 9)], {"final": True, "val/a": a, "val/b": b}, 9.0)

    # the specialist (best a, worst mean) reaches the epoch-2 rung last
    streams = [stream(0, 0.8, 0.8), stream(1, 0.75, 0.75), stream(2, 0.7, 0.7), stream(3, 0.95, 0.2)]
    result = measure(streams, [Objective("a", "val/a", "max"), Objective("b", "val/b", "max")], epochs=8, workers=1)
    assert result["front"] == [0, 3]
    rules = result["rules"]
    assert rules["none"]["hv_final"] == 1.0 and rules["none"]["epochs"] == 1.0 and rules["none"]["front_lost"] == []
    assert rules["asha"]["front_lost"] == [3] and rules["asha"]["hv_final"] < 1.0
    assert rules["pareto"]["front_lost"] == [] and rules["pareto"]["hv_final"] == 1.0
    assert rules["pareto"]["stopped"] >= 1 and rules["pareto"]["epochs"] < 1.0  # it still stops the dominated trials


@pytest.mark.slow  # trains 8 trials; replay and measure above are tested on constructed streams in CI
def test_pareto_early_stopping_quick(tmp_path):
    from benchmarks.pareto_early_stopping import DATASETS, RULES, main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    result, table = _written(tmp_path, "pareto_early_stopping")
    for name in DATASETS:
        for repeat in result["results"][name]:
            none = repeat["rules"]["none"]
            assert none["hv_final"] == pytest.approx(1.0) and none["epochs"] == 1.0 and none["front_lost"] == []
            for rule in RULES:
                row = repeat["rules"][rule]
                assert 0 < row["epochs"] <= 1.0 and set(row["front_lost"]) <= set(repeat["front"])
            assert f"| {name} | pareto |" in table


def test_real_tables_scores_a_baseline_with_the_searchs_own_metrics():
    """A baseline's outputs (units, P(y=1), class probabilities) go through Task.evaluate: equal to scikit-learn's metrics."""
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, roc_auc_score

    from benchmarks.real_tables import model_scale
    from mtl_search.data.problem import Task

    rng = np.random.default_rng(0)
    regression = Task("price", "regression", "mae", target_mean=150.0, target_std=40.0)
    y, pred = rng.normal(150, 40, 50), rng.normal(150, 40, 50)
    assert regression.evaluate(model_scale(regression, pred), regression.standardise(torch.tensor(y))) == \
        pytest.approx(mean_absolute_error(y, pred), rel=1e-5)
    labels, p = rng.integers(0, 2, 50), rng.uniform(0.05, 0.95, 50)
    assert Task("b", "binary", "auc").evaluate(model_scale(Task("b", "binary"), p), torch.tensor(labels)) == pytest.approx(roc_auc_score(labels, p))
    assert Task("b", "binary", "logloss").evaluate(model_scale(Task("b", "binary"), p), torch.tensor(labels)) == \
        pytest.approx(log_loss(labels, p), rel=1e-5)
    classes, proba = rng.integers(0, 3, 50), rng.dirichlet(np.ones(3), 50)
    multiclass = Task("c", "multiclass", "accuracy", 3)
    assert multiclass.evaluate(model_scale(multiclass, proba), torch.tensor(classes)) == pytest.approx(accuracy_score(classes, proba.argmax(1)))


@pytest.mark.slow  # two small searches in this process
def test_real_tables_quick(tmp_path):
    from benchmarks.real_tables import BASELINES, TABLES, main

    main(["--quick", "--out", str(tmp_path)])
    result, table = _written(tmp_path, "real_tables")
    assert set(result["tables"]) == set(TABLES)
    for name, data in result["tables"].items():
        assert data["finished"] == data["trials"] == data["raw_finished"] == 2
        for task, row in data["tasks"].items():
            assert all(math.isfinite(row[p]) for p in (*BASELINES, "reference", "search_best", "search_median", "search_worst", "one_model",
                                                      "one_model_gain", "raw_median", "raw_worst"))
            assert f"| {name} | {task} ({row['metric']}) |" in table
        assert data["reference_trials"] == {task: 1 for task in data["tasks"]}  # ⌈2 trials / 5 strategies⌉ per task
        assert math.isfinite(data["one_model_test_delta_m"])
    progression = result["tables"]["diabetes"]["tasks"]["progression"]
    assert 40 < progression["mean"] < 80  # the MAE of predicting the training mean, in the target's units (std ≈ 77)


def test_serving_quick(tmp_path):
    from benchmarks.serving import main

    main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "serving.json").read_text())
    timed = {(r["strategy"], r["runtime"], r["batch"]) for r in result["results"] if "refused" not in r}
    assert timed == {("hard_sharing", runtime, batch) for runtime in ("eager predict", "TorchScript", "onnxruntime") for batch in (1, 256)} | {
        ("topk_moe", "eager predict", 1), ("topk_moe", "eager predict", 256)}
    assert all(r["rows_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in result["results"] if "refused" not in r)
    assert "export refused" in (tmp_path / "serving.md").read_text()
