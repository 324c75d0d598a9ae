"""search.early_stopping: pareto — MO-ASHA's rung rule on constructed values, against scalar ASHA on the same streams."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mtl_search.record import Objective
from mtl_search.results.metrics import gain_metrics, val_gain_metrics
from mtl_search.search.pareto_stopping import ParetoSuccessiveHalving, crowding_distance, promoted, rung_levels, rung_ranking
from mtl_search.search.tune import make_scheduler

CONTINUE, STOP = "CONTINUE", "STOP"
TASKS = [Objective("a", "val/a", "max"), Objective("b", "val/b", "max")]


class FakeTrial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def test_crowding_distance_is_nsga2s_normalised_neighbour_gap_with_infinite_extremes():
    front = np.array([[0.0, 4.0], [1.0, 2.0], [2.0, 1.0], [4.0, 0.0]])
    distance = crowding_distance(front)
    assert math.isinf(distance[0]) and math.isinf(distance[3])
    # (2 - 0) / 4 + (4 - 1) / 4 and (4 - 1) / 4 + (2 - 0) / 4
    assert distance[1:3] == pytest.approx([1.25, 1.25])
    assert np.all(np.isinf(crowding_distance(front[:2])))


def test_rung_ranking_sorts_by_front_then_crowding_with_mixed_directions():
    # objective 0 minimised, objective 1 maximised
    points = [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [2.5, 1.5], [1.5, 2.5], [3.0, 1.0], [math.nan, 9.0]]
    keys = rung_ranking(points, ["min", "max"])
    fronts = [k[0] for k in keys]
    assert fronts == [0, 1, 0, 2, 0, 3, 4]  # the NaN point ranks behind every finite one
    assert math.isinf(-keys[0][1]) and math.isinf(-keys[2][1]) and math.isfinite(keys[4][1])
    assert sorted(range(len(points)), key=keys.__getitem__)[:3] in ([0, 2, 4], [2, 0, 4])


@pytest.mark.parametrize("ahead, n, eta, expected", [
    (0, 1, 2, True),   # the first trial at a rung goes on
    (1, 2, 2, False),  # top ceil(2/2) = 1
    (1, 3, 2, True),   # top ceil(3/2) = 2
    (2, 3, 2, False),
    (2, 9, 3, True),   # top ceil(9/3) = 3
    (3, 9, 3, False),
])
def test_a_trial_goes_on_when_it_is_in_the_top_one_over_eta_of_its_rung(ahead, n, eta, expected):
    # one objective: the newcomer (last) has exactly ``ahead`` points strictly better than it
    points = [[float(i)] for i in range(ahead)] + [[100.0 + i] for i in range(n - 1 - ahead)] + [[float(ahead) + 0.5]]
    assert promoted(points, ["min"], eta) is expected


def test_rungs_sit_below_max_t():
    assert rung_levels(2, 2, 20) == [2, 4, 8, 16]
    assert rung_levels(2, 2, 16) == [2, 4, 8]
    assert rung_levels(1, 3, 10) == [1, 3, 9]
    with pytest.raises(ValueError):
        rung_levels(1, 1, 10)


def _stream(a: float, b: float) -> list[dict]:
    """A trial's first two epochs: val accuracy on tasks a and b, and the trainer's score (mean normalised val loss)."""
    loss = {"a": 1.0 - a, "b": 1.0 - b}
    first = {"epoch": 1, "score": 1.0, "val/a": a / 2, "val/b": b / 2}
    second = {"epoch": 2, "score": (loss["a"] / 0.9 + loss["b"] / 0.9) / 2, "val/a": a, "val/b": b}
    return [first, second]


def _decisions(scheduler, trials: dict[str, tuple[float, float]]) -> dict[str, list[str]]:
    fakes = {name: FakeTrial(name) for name in trials}
    for trial in fakes.values():
        scheduler.on_trial_add(None, trial)
    streams = {name: _stream(*values) for name, values in trials.items()}
    out: dict[str, list[str]] = {name: [] for name in trials}
    for epoch in range(2):  # trials report in turn, epoch by epoch, as they would running side by side
        for name, trial in fakes.items():
            out[name].append(scheduler.on_trial_result(None, trial, streams[name][epoch]))
    return out


def test_a_trial_best_on_one_task_but_worst_on_the_mean_survives_the_pareto_rung_and_not_ashas():
    trials = {"balanced_high": (0.80, 0.80), "balanced_mid": (0.75, 0.75), "balanced_low": (0.70, 0.70), "specialist": (0.95, 0.20)}
    means = {name: sum(v) / 2 for name, v in trials.items()}
    assert min(means, key=means.get) == "specialist"
    asha = _decisions(make_scheduler("asha", 8), trials)
    pareto = _decisions(make_scheduler("pareto", 8, TASKS), trials)
    assert asha["specialist"] == [CONTINUE, STOP]  # scalar ASHA: the worst score at the epoch-2 rung
    assert pareto["specialist"] == [CONTINUE, CONTINUE]  # on the rung's front, an extreme: ranked first
    # the Pareto rule still halves: a balanced trial dominated by the others at the rung is stopped
    assert pareto["balanced_low"] == [CONTINUE, STOP] and pareto["balanced_high"] == [CONTINUE, CONTINUE]


def test_a_trial_is_judged_once_per_rung_and_again_at_the_next():
    scheduler = ParetoSuccessiveHalving([("val/a", "max")], max_t=8, grace_period=2)
    for i, value in enumerate([0.5, 0.9]):
        assert scheduler.decide(f"t{i}", 2, {"val/a": value}) == CONTINUE
    assert scheduler.decide("t0", 3, {"val/a": 0.0}) == CONTINUE  # epoch 3: no new rung
    assert scheduler.decide("t0", 4, {"val/a": 0.6}) == CONTINUE  # first at epoch 4
    assert scheduler.decide("t1", 4, {"val/a": 0.4}) == STOP  # second at epoch 4 and worse: top ceil(2/2) = 1
    assert scheduler.decide("t2", 2, {"val/a": 0.1}) == STOP  # third at epoch 2, behind both
    assert {level: sorted(r) for level, r in scheduler.rungs.items()} == {2: ["t0", "t1", "t2"], 4: ["t0", "t1"]}
    assert scheduler.stopped == 2
    assert scheduler.on_trial_result(None, FakeTrial("t0"), {"final": True, "val/a": 0.0}) == CONTINUE  # no epoch: passes


def test_pareto_rungs_read_the_searchs_objectives_but_latency_and_gains_per_epoch():
    objectives = [Objective("delta_m", "delta_m", "max"), Objective("worst_gain", "worst_gain", "max"),
                  Objective("latency", "latency", "min")]
    scheduler = make_scheduler("pareto", 10, objectives)
    assert isinstance(scheduler, ParetoSuccessiveHalving)
    assert scheduler.keys == ["delta_m", "worst_gain"] and scheduler.levels == [2, 4, 8]
    # what an epoch reports for them: the validation half of the final gains, from that epoch's val metrics
    directions, references = {"a": "min", "b": "max"}, {"val": {"a": 2.0, "b": 0.8}, "test": {"a": 1.0, "b": 0.5}}
    val = {"a": 1.5, "b": 0.72}
    epoch = val_gain_metrics(directions, val, references, {"ab": ("a", "b")})
    final = gain_metrics(directions, val, {"a": 1.0, "b": 0.5}, references, {"ab": ("a", "b")})
    assert epoch == {k: final[k] for k in epoch}
    assert epoch["delta_m"] == pytest.approx((25.0 - 10.0) / 2) and epoch["worst_gain"] == pytest.approx(-10.0)


def test_every_epoch_of_a_trial_with_references_reports_its_gains():
    import optuna

    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import TrialSpace
    from mtl_search.search.space import parse_space
    from mtl_search.search.trial import TrialPlan, train_trial

    space = parse_space({
        "data": {"dataset": "synthetic_correlated", "options": {"samples": 300, "input_dim": 6, "seed": 0}},
        "backbone": {"kind": "mlp", "depth": 1, "width": 8},
        "strategies": {"hard_sharing": {"shared_depth": 1}},
        "training": {"epochs": 2, "batch_size": 64},
    })
    plan, dataset, _ = prepare(space)
    config = TrialSpace(plan)(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    references = {"val": {"y1": 1.0, "y2": 2.0}, "test": {"y1": 1.0, "y2": 2.0}}
    trial_plan = TrialPlan(plan.problem, {n: s for n, (s, _) in plan.strategies.items()}, plan.backbone_kind,
                           {n: cls for n, (cls, _) in plan.weightings.items()}, epochs=2, patience=5, seed=0,
                           cpus_per_trial=1, gpus_per_trial=0, references=references)
    reports = []
    train_trial(config, dataset, trial_plan, lambda metrics, checkpoint_dir=None: reports.append(metrics))
    epochs = [r for r in reports if "epoch" in r]
    directions = {t.name: t.direction for t in plan.problem.tasks}
    assert len(epochs) == 2
    for r in epochs:
        expected = val_gain_metrics(directions, {t: r[f"val/{t}"] for t in directions}, references)
        assert all(math.isfinite(r[k]) for k in expected) and {k: r[k] for k in expected} == pytest.approx(expected)
    assert epochs[0]["delta_m"] != pytest.approx(epochs[1]["delta_m"])


@pytest.mark.slow  # a whole search through Ray; the rung rule itself is tested above on constructed values
def test_a_search_with_pareto_early_stopping_records_its_stopped_trials_as_stopped(ray_session, workdir):
    from mtl_search.search.run import RunOptions, run_search
    from mtl_search.search.space import parse_space

    space = parse_space({
        "data": {"dataset": "synthetic_correlated", "options": {"samples": 600, "seed": 0}},
        "backbone": {"kind": "mlp", "depth": 1, "width": 8},
        "strategies": {"hard_sharing": {}},
        "training": {"epochs": 5, "patience": 5, "batch_size": 128, "lr": {"loguniform": [1e-4, 1e-1]}},
        "search": {"trials": 6, "sampler": "random", "concurrency": 1, "early_stopping": "pareto", "objectives": ["y1", "y2"],
                   "seed": 0},
    })
    record = run_search(space, RunOptions(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}"))
    statuses = [t.status for t in record.trials]
    assert set(statuses) == {"finished", "stopped"} and len(statuses) == 6
    assert all(not t.pareto and not t.val for t in record.trials if t.status == "stopped")
    assert any(t.pareto for t in record.trials)
