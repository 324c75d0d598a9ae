"""Single-task references searched as trials: the space, the choice of the best, the searcher's budget, funnels, resume."""
from __future__ import annotations

import contextlib
import io
import json
import math

import optuna
import pytest
import torch
import yaml
from conftest import tiny_space

from mtl_search.data.dataset import Dataset, Split
from mtl_search.data.problem import Problem, Task
from mtl_search.errors import MtlSearchError, SpaceError
from mtl_search.record import TrialRecord
from mtl_search.search.references import best_references, task_dataset
from mtl_search.search.space import load_space, parse_space
from mtl_search.search.tune import ReferenceSearcher


def _space(baseline: str):
    return parse_space(yaml.safe_load(f"data: {{dataset: synthetic_correlated}}\nstrategies: {{hard_sharing: {{}}}}\n{baseline}"))


def test_the_references_are_searched_by_default_with_one_strategys_budget_and_fixed_stays_available():
    default = _space("").baseline
    assert default.enabled and default.mode == "search" and default.trials is None
    assert default.reference_trials(12, 2) == 6 and default.reference_trials(13, 2) == 7 and default.reference_trials(4, 1) == 4
    fixed = _space("baseline: {mode: fixed, training: {lr: 0.01}}").baseline
    assert fixed.mode == "fixed" and fixed.training == {"lr": 0.01}
    assert _space("baseline: {trials: 7, tower_width: 8}").baseline.reference_trials(12, 2) == 7
    with pytest.raises(SpaceError, match="baseline.mode"):
        _space("baseline: {mode: tuned}")
    with pytest.raises(SpaceError, match="baseline.trials"):
        _space("baseline: {mode: fixed, trials: 3}")
    with pytest.raises(SpaceError, match="baseline.trials"):
        _space("baseline: {trials: 0}")


def test_a_tasks_reference_study_samples_as_the_search_does_and_one_trial_says_all_when_nothing_is_searched(tmp_path):
    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import ReferenceSpace

    plan = prepare(load_space(tiny_space(tmp_path, trials=5, extra="baseline: {trials: 3}")))[0]  # the tower width and backbone knobs searched
    first, second = (ReferenceSpace(plan, task) for task in plan.problem.task_names[:2])
    assert first.budget(5) == 3 and isinstance(first.sampler(), optuna.samplers.TPESampler)
    assert first.seed != second.seed  # each task's study its own stream
    pinned = prepare(load_space(tiny_space(tmp_path, trials=5, extra="baseline: {tower_width: 8, backbone: {activation: relu, norm: none, dropout: 0.0}}")))[0]
    alone = ReferenceSpace(pinned, pinned.problem.task_names[0])
    assert not alone.searched() and alone.budget(5) == 1 and isinstance(alone.sampler(), optuna.samplers.RandomSampler)


def _reference(task: str, number: int, val: float, test: float, status: str = "finished") -> TrialRecord:
    return TrialRecord(number, f"run-{task}-{number}", "single_task_reference", {}, status,
                       val={task: val} if status == "finished" else {}, test={task: test} if status == "finished" else {},
                       reference_task=task)


def test_each_task_takes_its_best_reference_trial_by_validation_with_that_models_test_metric():
    problem = Problem((3,), (Task("loss", "regression"), Task("hit", "binary")))  # mse: lower is better; auc: higher
    records = [_reference("loss", 0, 0.5, 0.7), _reference("loss", 1, 0.3, 0.9), _reference("loss", 2, 0.1, 0.1, "failed"),
               _reference("loss", 3, math.nan, 0.0),
               _reference("hit", 0, 0.61, 0.60), _reference("hit", 1, 0.75, 0.58), _reference("hit", 2, 0.99, 0.99, "stopped")]
    references, chosen = best_references(records, problem)
    assert references == {"val": {"loss": 0.3, "hit": 0.75}, "test": {"loss": 0.9, "hit": 0.58}}
    assert chosen["loss"].number == 1 and chosen["hit"].number == 1
    with pytest.raises(MtlSearchError, match="task 'hit'"):
        best_references([r for r in records if r.reference_task == "loss"] + [_reference("hit", 0, 0, 0, "failed")], problem)


class _Proposer:
    """A stand-in for one task's OptunaSearcher: numbered configurations, and the ends it was told."""

    def __init__(self, task: str, limit: int = 99):
        self.task, self.limit, self.proposed, self.told = task, limit, 0, []

    def suggest(self, trial_id: str):
        if self.proposed >= self.limit:
            return "FINISHED"
        self.proposed += 1
        return {"reference_task": self.task, "trial_number": self.proposed - 1}

    def on_trial_complete(self, trial_id: str, result=None, error=False) -> None:
        self.told.append((trial_id, error))


def test_the_reference_searcher_spends_each_tasks_budget_the_tasks_together_and_tells_each_study_its_own_ends():
    proposers = {"a": _Proposer("a"), "b": _Proposer("b"), "c": _Proposer("c", limit=1)}
    searcher = ReferenceSearcher(proposers, {"a": 3, "b": 2, "c": 2})
    tasks = []
    while isinstance(config := searcher.suggest(f"t{len(tasks)}"), dict):
        tasks.append(config["reference_task"])
    assert sorted(tasks) == ["a", "a", "a", "b", "b", "c"]  # c's study had one proposal only
    assert tasks[:3] == ["a", "b", "c"]  # in turn: the tasks advance together
    searcher.on_trial_complete("t1", {"final": True})
    searcher.on_trial_complete("t0", None, error=True)
    assert proposers["b"].told == [("t1", False)] and proposers["a"].told == [("t0", True)]
    stopped = ReferenceSearcher({"a": _Proposer("a")}, {"a": 5}, stop=lambda: True)
    assert stopped.suggest("x") == ReferenceSearcher.FINISHED


def test_a_funnel_tasks_reference_learns_on_its_parents_rows_with_its_weights():
    problem = Problem((3,), (Task("click", "binary"), Task("buy", "binary", after="click")))
    x = torch.randn(6, 3)
    mask = torch.tensor([True, False, True, False, True, True])
    split = Split(x, {"click": torch.ones(6, 1), "buy": torch.zeros(6, 1)}, {"buy": mask}, {"buy": torch.arange(6.0)})
    data = task_dataset(Dataset(problem, split, split, split), "buy")
    assert data.problem.task_names == ["buy"] and data.problem.task("buy").after is None  # a valid one-task problem (no parent)
    assert torch.equal(data.train.mask["buy"], mask) and torch.equal(data.train.weight["buy"], torch.arange(6.0))
    assert set(data.train.y) == {"buy"}


def _kill_and_resume(workdir, space, point: str) -> dict:
    from test_resume import _killed_run

    from mtl_search.cli import main

    _killed_run(space, workdir, point, 2)
    assert main(["run", str(space), "--resume"]) == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", "--format", "json"]) == 0
    return json.loads(out.getvalue())


@pytest.mark.parametrize("point", ["trial_recorded:1"])  # one reference trial recorded, another mid-training
def test_a_killed_reference_trial_is_resumed_without_loss_or_repeat(ray_session, workdir, point):
    from mlflow.tracking import MlflowClient

    from mtl_search.results.store import default_tracking_uri

    space = tiny_space(workdir, strategies="  hard_sharing: {}", trials=2, extra="baseline: {trials: 2}\n")
    report = _kill_and_resume(workdir, space, point)
    references = report["reference_trials"]
    numbers = {task: sorted(t["number"] for t in references if t["task"] == task) for task in ("y1", "y2")}
    assert all(len(n) == 2 and len(set(n)) == 2 for n in numbers.values()), numbers  # each task's budget, each trial once
    assert all(t["status"] == "finished" for t in references) and len(report["trials"]) == 2
    assert set(report["references"]["val"]) == {"y1", "y2"}
    client = MlflowClient(default_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = next(r for r in runs if r.data.tags["mtl_search.role"] == "search")
    storage = f"sqlite:///{workdir / 'mlflow' / 'optuna.db'}"
    for task in ("y1", "y2"):  # each task's study holds the same reference trials as MLflow
        study = optuna.load_study(study_name=f"{parent.data.tags['mtl_search.study']}-reference-{task}", storage=storage)
        complete = sorted(t.user_attrs["mtl_search.config"]["trial_number"] for t in study.get_trials()
                          if t.state == optuna.trial.TrialState.COMPLETE)
        assert complete == numbers[task]
        best = min((t for t in references if t["task"] == task), key=lambda t: t["val"][task])
        assert report["references"]["val"][task] == best["val"][task]


def test_a_mean_over_seeds_is_significant_exactly_when_a_one_sample_t_test_rejects_zero():
    from scipy import stats

    from mtl_search.results.metrics import spread

    for values in ([1.0, 2.0, 3.0], [5.0, 5.1, 4.9], [-2.0, -2.5, -1.5, -2.2], [0.3, -0.4, 0.2], [1.0, 1.2]):
        result = spread(values)
        assert result.mean == pytest.approx(sum(values) / len(values)) and result.n == len(values)
        assert result.std == pytest.approx(float(torch.tensor(values).std()))  # sample std (n - 1)
        assert result.significant == (stats.ttest_1samp(values, 0.0).pvalue < 0.05)
    assert not spread([4.0]).significant and math.isnan(spread([4.0]).std)  # one seed: no spread, nothing beyond it
    assert spread([math.nan, 1.0, 1.0]).n == 2


def test_repeat_r_of_a_trial_is_compared_with_repeat_r_of_each_reference_and_negative_transfer_needs_significance():
    from mtl_search.results.metrics import relative_gain
    from mtl_search.results.records import repeat_noise

    directions = {"a": "min", "b": "max"}
    trial = TrialRecord(3, "t", "mmoe", {}, "finished", val={"a": 1.0, "b": 0.80}, test={"a": 1.1, "b": 0.7})
    chosen = {"a": _reference("a", 0, 1.2, 1.3), "b": _reference("b", 1, 0.75, 0.7)}
    seeds = {("t", 1): ({"a": 0.9, "b": 0.82}, {"a": 1.0, "b": 0.7}), ("t", 2): ({"a": 1.1, "b": 0.78}, {"a": 1.2, "b": 0.7}),
             ("run-a-0", 1): ({"a": 1.25}, {"a": 1.3}), ("run-a-0", 2): ({"a": 1.15}, {"a": 1.2}),
             ("run-b-1", 1): ({"b": 0.74}, {"b": 0.7}), ("run-b-1", 2): ({"b": 0.76}, {"b": 0.7})}
    repeats = [TrialRecord(0, f"{of}-{k}", "", {}, "finished", val=val, test=test, repeat_of=of, repeat=k) for (of, k), (val, test) in seeds.items()]
    repeats.append(TrialRecord(0, "t-3", "", {}, "failed", repeat_of="t", repeat=3))  # a failed seed does not count
    noise = repeat_noise(trial, repeats, chosen, directions)
    runs = {0: trial.val, 1: seeds[("t", 1)][0], 2: seeds[("t", 2)][0]}
    ref_a = {0: 1.2, 1: 1.25, 2: 1.15}
    ref_b = {0: 0.75, 1: 0.74, 2: 0.76}
    gains_a = [relative_gain(runs[k]["a"], ref_a[k], "min") for k in range(3)]
    gains_b = [relative_gain(runs[k]["b"], ref_b[k], "max") for k in range(3)]
    assert noise["gain/a"].n == 3 and noise["gain/a"].mean == pytest.approx(sum(gains_a) / 3)
    assert noise["delta_m"].mean == pytest.approx(sum((x + y) / 2 for x, y in zip(gains_a, gains_b)) / 3)
    assert noise["test_delta_m"].n == 3
    worse = TrialRecord(4, "w", "mmoe", {}, "finished", gains={"a": -3.0, "b": 2.0})
    assert worse.negative_transfer  # one run: any negative gain
    from mtl_search.record import Spread

    worse.noise = {"gain/a": Spread(-3.0, 5.0, 3, False), "gain/b": Spread(2.0, 0.1, 3, True)}
    assert not worse.negative_transfer  # with repeats: only a gain significantly below 0
    worse.noise["gain/a"] = Spread(-3.0, 0.5, 3, True)
    assert worse.negative_transfer


def test_repeats_need_searched_references():
    assert _space("search: {repeats: 3}").search.repeats == 3
    with pytest.raises(SpaceError, match="search.repeats"):
        _space("baseline: {mode: fixed}\nsearch: {repeats: 3}")
    with pytest.raises(SpaceError, match="search.repeats"):
        _space("search: {repeats: 1}")
