"""search.constraints: a trial violating a per-task threshold is kept out of the front and marked infeasible."""
from __future__ import annotations

import pytest

from mtl_search import SpaceError, TrialRecord
from mtl_search.record import Objective
from mtl_search.registry import load_registry
from mtl_search.results.constraints import parse_constraints
from mtl_search.results.records import (
    SearchRecord,
    family_record,
    format_table,
    mark_front,
    trial_table,
)
from mtl_search.search.prepare import prepare
from mtl_search.search.space import parse_space

OBJECTIVES = [Objective("ctr", "val/ctr", "max"), Objective("cvr", "val/cvr", "max")]


def _trial(number: int, ctr: float, cvr: float, status: str = "finished") -> TrialRecord:
    return TrialRecord(number, f"run{number}", "esmm", {}, status, val={"ctr": ctr, "cvr": cvr}, metrics={"params": 100.0 * number},
                       family="funnel")


def test_a_constraint_excludes_a_violating_trial_from_the_front_and_the_report_marks_it():
    trials = [_trial(0, 0.65, 0.95), _trial(1, 0.75, 0.70), _trial(2, 0.72, 0.60)]
    unconstrained = [_trial(t.number, t.val["ctr"], t.val["cvr"]) for t in trials]
    mark_front(unconstrained, OBJECTIVES)
    assert [t.pareto for t in unconstrained] == [True, True, False]  # trial 0 has the best cvr
    hv, _ = mark_front(trials, OBJECTIVES, constraints=parse_constraints({"ctr": ">= 0.70"}))
    assert [t.pareto for t in trials] == [False, True, False]  # trial 0 violates ctr >= 0.70 and trial 1 dominates 2
    assert trials[0].violations == ["ctr >= 0.7 (is 0.65)"] and trials[1].violations == []
    record = SearchRecord("e", "s", OBJECTIVES, trials, hypervolume=hv)
    rows = trial_table(record)
    assert [r["feasible"] for r in rows] == [False, True, True]
    assert "violations" in trial_table(record, detailed=True)[0] and "feasible" in format_table(rows)
    assert record.to_json()["trials"][0]["feasible"] is False
    # the family's own front (report --family) keeps the infeasible trial off too
    assert [t.pareto for t in family_record(record, "funnel").trials] == [False, True, False]


def test_constraints_are_checked_against_the_tasks_before_any_trial():
    base = {"data": {"dataset": "synthetic_funnel", "options": {"samples": 200}}, "strategies": {"hard_sharing": {}}}
    plan, _, _ = prepare(parse_space({**base, "search": {"constraints": {"clicked": {"auc": ">= 0.7"}, "params": "< 1e6"}}}), load_registry())
    assert [c.describe() for c in plan.space.search.constraints] == ["clicked.auc >= 0.7", "params < 1e+06"]
    for constraints, path in [
        ({"clickd": ">= 0.7"}, "search.constraints.clickd"),
        ({"clicked": {"logloss": "<= 0.5"}}, "search.constraints.clicked.logloss"),
        ({"clicked": "at least 0.7"}, "search.constraints.clicked"),
    ]:
        with pytest.raises(SpaceError) as err:
            prepare(parse_space({**base, "search": {"constraints": constraints}}), load_registry())
        assert err.value.path == path


def test_constrained_samplers_are_told_each_trials_constraint_values():
    import optuna

    from mtl_search.results.constraints import constraint_values
    from mtl_search.search.sampling import make_sampler

    constraints = parse_constraints({"clicked": ">= 0.7", "params": "<= 1000"})
    assert constraint_values(constraints, {"val/clicked": 0.65, "params": 800.0}) == pytest.approx([0.05, -200.0])
    assert constraint_values(constraints, {"params": float("nan")}) == [1.0, 1.0]  # missing values violate
    base = {"data": {"dataset": "synthetic_funnel", "options": {"samples": 200}}, "strategies": {"hard_sharing": {}},
            "search": {"constraints": {"clicked": ">= 0.7"}}}
    plan, _, _ = prepare(parse_space(base), load_registry())
    from mtl_search.results.constraints import tell_constraints

    for name in ("tpe", "nsga2"):
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=make_sampler(name, 0, 1, plan))
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        tell_constraints(trial, plan.space.search.constraints, {"val/clicked": 0.6})
        study.tell(trial, [0.6, 0.5])
        assert list(study.trials[0].constraints.values()) == pytest.approx([0.1])  # what the sampler learns from


def test_the_searcher_tells_optuna_the_constraint_values_of_a_finished_trial():
    import optuna

    from mtl_search.search.tune import OptunaSearcher

    study = optuna.create_study(directions=["maximize"])
    searcher = OptunaSearcher(study, lambda trial: {"x": trial.suggest_float("x", 0, 1)}, ["val/clicked"],
                              constraints=parse_constraints({"clicked": ">= 0.7"}))
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"final": True, "val/clicked": 0.75})
    assert study.trials[0].state.name == "COMPLETE"
    assert list(study.trials[0].constraints.values()) == pytest.approx([-0.05])  # feasible: <= 0


def test_the_front_plots_show_infeasible_trials_apart():
    from mtl_search.results.plots import trials_by_family
    from mtl_search.results.review import front_data

    trials = [_trial(0, 0.65, 0.95), _trial(1, 0.75, 0.70), _trial(2, 0.72, 0.60)]
    mark_front(trials, OBJECTIVES, constraints=parse_constraints({"ctr": ">= 0.70"}))
    data = front_data(SearchRecord("e", "s", OBJECTIVES, trials))
    layers = {layer.name: layer.indices for layer in trials_by_family(data)}
    assert layers["infeasible (search.constraints)"] == [0] and layers["funnel"] == [1, 2] and layers["Pareto front"] == [1]
    assert "infeasible: ctr >= 0.7" in data.hover[0]
