"""Gains over single-task references, Δm, negative transfer, the objectives built on them, and the references themselves."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from mtl_search import record
from mtl_search.data.problem import Problem, Task
from mtl_search.record import Objective, TrialRecord
from mtl_search.results.metrics import gain_metrics, relative_gain
from mtl_search.results.records import SearchRecord, format_table, trial_table
from mtl_search.search.space import parse_space, resolve_objectives

# a: mse (lower is better), b: accuracy (higher is better), c: auc (higher is better)
DIRECTIONS = {"a": "min", "b": "max", "c": "max"}
REFERENCES = {"val": {"a": 2.0, "b": 0.80, "c": 0.70}, "test": {"a": 4.0, "b": 0.50, "c": 0.70}}


def test_gains_and_delta_m_recomputed_from_raw_metrics_with_mixed_directions():
    val = {"a": 1.5, "b": 0.72, "c": 0.77}
    test = {"a": 5.0, "b": 0.60, "c": 0.70}
    out = gain_metrics(DIRECTIONS, val, test, REFERENCES, groups={"bc": ("b", "c")})
    # Maninis et al. / LibMTL: (-1)^{l_t} (M_t - M_ref,t) / M_ref,t * 100, l_t = 1 when lower is better
    expected = {t: (-1) ** (DIRECTIONS[t] == "min") * (val[t] - REFERENCES["val"][t]) / REFERENCES["val"][t] * 100 for t in val}
    assert expected == pytest.approx({"a": 25.0, "b": -10.0, "c": 10.0})
    assert {t: out[f"gain/{t}"] for t in val} == pytest.approx(expected)
    assert out["delta_m"] == pytest.approx(25.0 / 3)
    assert out["worst_gain"] == pytest.approx(-10.0)
    assert out["group/bc"] == pytest.approx(0.0)
    assert {t: out[f"test_gain/{t}"] for t in test} == pytest.approx({"a": -25.0, "b": 20.0, "c": 0.0})
    assert out["test_delta_m"] == pytest.approx(-5.0 / 3) and out["test_worst_gain"] == pytest.approx(-25.0)


def test_a_missing_metric_or_zero_reference_gives_no_gain_and_no_delta_m():
    assert math.isnan(relative_gain(1.0, 0.0, "min"))
    out = gain_metrics(DIRECTIONS, {"a": 1.0, "b": 0.9}, {}, REFERENCES)
    assert math.isnan(out["gain/c"]) and math.isnan(out["delta_m"]) and math.isnan(out["worst_gain"])


def _trial(number: int, val: dict[str, float]) -> TrialRecord:
    out = gain_metrics(DIRECTIONS, val, val, REFERENCES)
    gains = {k[len(record.GAIN):]: v for k, v in out.items() if k.startswith(record.GAIN)}
    figures = {k: v for k, v in out.items() if record.is_trial_figure(k)}
    return TrialRecord(number, f"r{number}", "hard_sharing", {}, "finished", val=val, metrics=figures, gains=gains)


def test_a_trial_worse_than_its_reference_on_one_task_is_flagged():
    better = _trial(0, {"a": 1.9, "b": 0.81, "c": 0.71})
    worse_on_b = _trial(1, {"a": 1.0, "b": 0.79, "c": 0.90})  # far better Δm, still negative transfer on b
    assert not better.negative_transfer
    assert worse_on_b.negative_transfer and worse_on_b.metrics["delta_m"] > better.metrics["delta_m"]
    record = SearchRecord("e", "p", [Objective("delta_m", "delta_m", "max")], [better, worse_on_b], references=REFERENCES)
    rows = trial_table(record)
    assert [r["neg_transfer"] for r in rows] == [False, True]
    assert rows[1]["worst_gain"] == pytest.approx(-1.25)
    assert "delta_m" in format_table(rows) and "neg_transfer" in format_table(rows)
    assert record.to_json()["trials"][1]["negative_transfer"] is True


def _problem(tasks: int) -> Problem:
    return Problem((4,), tuple(Task(f"t{i}", "regression", "mse") for i in range(tasks)))


def test_objectives_default_to_delta_m_and_worst_gain_past_four_tasks_and_keep_cost_objectives():
    assert [o.key for o in resolve_objectives([], _problem(4), references=True)] == ["val/t0", "val/t1", "val/t2", "val/t3"]
    assert resolve_objectives(["params"], _problem(12), references=True) == [
        Objective("delta_m", "delta_m", "max"), Objective("worst_gain", "worst_gain", "max"), Objective("params", "params", "min")]
    assert len(resolve_objectives([], _problem(12), references=False)) == 12  # no references: no gains to fall back on


def test_group_objectives_in_both_syntaxes_are_typed_mean_gains():
    raw = yaml.safe_load("""
data: {dataset: synthetic_correlated}
strategies: {hard_sharing: {}}
search: {objectives: [{group: {name: first, tasks: [t0, t1]}}, t2+t3, latency]}
""")
    listed = parse_space(raw).search.objectives
    objectives = resolve_objectives(listed, _problem(4), references=True)
    assert objectives == [Objective("first", "group/first", "max", ("t0", "t1")), Objective("t2+t3", "group/t2+t3", "max", ("t2", "t3")),
                          Objective("latency", "latency", "min")]
    assert Objective.from_json(objectives[0].to_json()) == objectives[0]


def test_searched_references_are_trials_of_their_own_and_every_gain_is_against_the_best_of_them(ray_session, workdir, capsys):
    from conftest import tiny_space
    from mlflow.tracking import MlflowClient

    from mtl_search.cli import main
    from mtl_search.results.store import default_tracking_uri

    space = tiny_space(workdir, strategies="  hard_sharing: {}", trials=2, experiment="gains",
                       extra="  objectives: [delta_m, worst_gain]\n  repeats: 2\nbaseline: {trials: 2, backbone: {width: 8}}\n")
    assert main(["run", str(space)]) == 0
    out = capsys.readouterr().out
    assert out.count("reference y1 ") >= 2 and out.count("reference y2 ") >= 2 and "Δm" in out
    assert "Single-task references" in out
    client = MlflowClient(default_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("gains").experiment_id])
    parent = next(r for r in runs if r.data.tags["mtl_search.role"] == "search")
    reference_runs = [r for r in runs if r.data.tags["mtl_search.role"] == "reference"]
    assert sorted(r.data.tags["mtl_search.reference_task"] for r in reference_runs) == ["y1", "y1", "y2", "y2"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in reference_runs)
    assert all(r.data.params["backbone.width"] == "8" for r in reference_runs)  # baseline: pins a knob
    chosen = json.loads(parent.data.tags["mtl_search.reference_runs"])
    references = {}
    for task in ("y1", "y2"):
        own = [r for r in reference_runs if r.data.tags["mtl_search.reference_task"] == task]
        best = min(own, key=lambda r: r.data.metrics[f"val/{task}"])  # mse: lower is better
        assert chosen[task] == best.info.run_id and best.data.tags["mtl_search.reference_best"] == "true"
        assert parent.data.metrics[f"reference/val/{task}"] == best.data.metrics[f"val/{task}"]
        assert parent.data.metrics[f"reference/test/{task}"] == best.data.metrics[f"test/{task}"]  # the same model's test metric
        references[task] = best.data.metrics[f"val/{task}"]
    trials = [r for r in runs if r.data.tags["mtl_search.role"] == "trial"]
    assert len(trials) == 2
    for run in trials:
        m = run.data.metrics
        gains = {t: relative_gain(m[f"val/{t}"], references[t], "min") for t in references}
        assert {t: m[f"gain/{t}"] for t in gains} == pytest.approx(gains)
        assert m["delta_m"] == pytest.approx(sum(gains.values()) / 2) and m["worst_gain"] == pytest.approx(min(gains.values()))
    assert main(["report", "--all"]) == 0
    table = capsys.readouterr().out
    assert "delta_m" in table and "worst_gain" in table and "neg_transfer" in table and "reference-y1-" in table
    assert main(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["trials"]) == 2 and len(report["reference_trials"]) == 4  # the references are not trials of the front
    # search.repeats: every front trial and each task's chosen reference trained again with a second seed
    front = [t for t in report["trials"] if t["pareto"]]
    assert sorted(r["repeat_of"] for r in report["repeats"]) == sorted([t["run_id"] for t in front] + list(chosen.values()))
    repeat_runs = [r for r in runs if r.data.tags["mtl_search.role"] == "repeat"]
    assert sorted(r.data.tags["mtl_search.repeat_of"] for r in repeat_runs) == sorted(r["repeat_of"] for r in report["repeats"])
    assert all(t["noise"]["delta_m"]["n"] == 2 for t in front)  # the trial and its repeat, each against its references' seed
    for run in trials:  # negative transfer: any negative gain of one run; on a repeated trial, only a gain beyond noise
        trial = next(t for t in report["trials"] if t["run_id"] == run.info.run_id)
        if "noise" in trial:
            below = any(s["significant"] and s["mean"] < 0 for key, s in trial["noise"].items() if key.startswith("gain/"))
        else:
            below = min(trial["gains"].values()) < 0
        assert run.data.tags[record.NEGATIVE_TRANSFER] == ("true" if below else "false") and trial["negative_transfer"] == below


def test_synthetic_groups_have_the_asked_relatedness_within_and_none_across_groups():
    import torch
    from mtl_search_plugins.datasets import group_task_weights, synthetic_groups

    w = group_task_weights([0.9, 0.0], 3, 10, 2.0, torch.Generator().manual_seed(0))
    cosine = (w @ w.T) / 4.0
    assert cosine[0, 1] == pytest.approx(0.9) and cosine[3, 4] == pytest.approx(0.0, abs=1e-12) and cosine[0, 3] == pytest.approx(0.0, abs=1e-12)
    data = synthetic_groups([0.9, 0.5, 0.0], 4, 40, 16, 2, 1.0, 0.1, 0, 0.25, 0.25)
    assert len(data.problem.tasks) == 12 and data.problem.task_names[4] == "g2_t1"
    with pytest.raises(ValueError, match="input_dim"):
        synthetic_groups([0.9, 0.5, 0.0], 4, 40, 8, 2, 1.0, 0.1, 0, 0.25, 0.25)


def test_the_search_description_shows_delta_m_and_negative_transfer_on_the_front():
    from mtl_search.results.records import mark_front
    from mtl_search.results.review import summary_markdown

    trials = [_trial(0, {"a": 1.9, "b": 0.81, "c": 0.71}), _trial(1, {"a": 1.0, "b": 0.79, "c": 0.90})]
    objectives = [Objective("delta_m", "delta_m", "max"), Objective("worst_gain", "worst_gain", "max")]
    record = SearchRecord("e", "p", objectives, trials, references=REFERENCES)
    mark_front(trials, objectives)
    text = summary_markdown(record)
    assert "| Δm % | worst gain % | negative transfer |" in text
    assert f"| trial-001-hard_sharing | hard_sharing | {trials[1].metrics['delta_m']:.4g}" in text and "| yes |" in text


def test_references_are_recorded_on_the_search_run_and_read_back_on_resume(tmp_path):
    from conftest import tiny_space

    from mtl_search.knobs import Choice, Float, Int
    from mtl_search.record import Objective as Obj
    from mtl_search.results.search_run import Tracker
    from mtl_search.search.prepare import prepare
    from mtl_search.search.references import fixed_references, reference_settings
    from mtl_search.search.space import load_space

    assert Int(16, 256, log=True).midpoint() == 64 and Float(0.0, 0.5).midpoint() == 0.25 and Choice(32, 8, 64).midpoint() == 32
    assert Choice("relu", "gelu").midpoint() == "relu"
    space = load_space(tiny_space(tmp_path, strategies="  hard_sharing: {}", extra="baseline: {mode: fixed, training: {lr: 0.01}}\n"))
    plan, dataset, _ = prepare(space)
    settings = reference_settings(plan)
    assert settings.training["lr"] == 0.01 and settings.backbone["width"] == 16  # given, and the space's constant
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "refs")
    run_id = tracker.start_search("s", [Obj("delta_m", "delta_m", "max")], {}, "")
    lines: list[str] = []
    trained = fixed_references(plan, dataset, tracker, run_id, resume=False, echo=lines.append)
    assert set(trained["val"]) == {"y1", "y2"} and len(lines) == 2
    assert tracker.load_references(run_id) == trained
    lines.clear()
    assert fixed_references(plan, dataset, tracker, run_id, resume=True, echo=lines.append) == trained
    assert lines == []  # read back, not trained again
