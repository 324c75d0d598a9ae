"""`mtl-search pick` and `mtl_search.pick`: the knee, weighted sums and bounds on constructed fronts."""
from __future__ import annotations

import json

import numpy as np
import pytest

import mtl_search
from mtl_search.cli import main
from mtl_search.errors import MtlSearchError
from mtl_search.record import Objective, TrialRecord
from mtl_search.results.pick import knee_distances, parse_assignments, pick
from mtl_search.results.records import SearchRecord

OBJECTIVES = [Objective("y1", "val/y1", "min"), Objective("y2", "val/y2", "min")]
# the convex front f2 = (1 - sqrt(f1))^2 on [0, 1]: its knee, the largest 1 - f1 - f2, is at sqrt(f1) = 1/2
FRONT = [((k / 10) ** 2, (1 - k / 10) ** 2) for k in range(11)]


def _record(points, objectives=OBJECTIVES, on_front=None) -> SearchRecord:
    trials = []
    for number, values in enumerate(points):
        val = {o.key[4:]: v for o, v in zip(objectives, values) if o.key.startswith("val/")}
        metrics = {o.key: v for o, v in zip(objectives, values) if not o.key.startswith("val/")}
        trials.append(TrialRecord(number, f"run{number:02d}", "hard_sharing", {}, "finished", val=val, metrics=metrics,
                                  pareto=True if on_front is None else number in on_front))
    return SearchRecord("demo", "search-run", objectives, trials, task_metrics={"y1": "mse", "y2": "mse", "y3": "mse"})


def test_the_knee_of_a_constructed_convex_front_is_the_analytic_one():
    chosen = pick(_record(FRONT))
    assert chosen.rule == "knee" and chosen.trial.number == 5  # f1 = f2 = 0.25
    assert chosen.score == pytest.approx((1 - 0.25 - 0.25) / np.sqrt(2))


def test_the_knee_is_invariant_to_each_objectives_scale_and_direction():
    objectives = [Objective("y1", "val/y1", "min"), Objective("acc", "val/acc", "max")]
    points = [(1000 * f1 + 3, 1 - 0.01 * f2) for f1, f2 in FRONT]  # rescaled; the second maximised
    assert pick(_record(points, objectives)).trial.number == 5


def test_the_knee_in_three_objectives_is_the_farthest_from_the_plane_through_the_extremes():
    # extremes (1,0,0), (0,1,0), (0,0,1) after normalisation; the plane u1+u2+u3 = 1
    u = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.3], [0.6, 0.6, 0.6]], dtype=float)
    assert knee_distances(u) == pytest.approx((u.sum(axis=1) - 1) / np.sqrt(3))
    # extremes that are not at the unit vectors: the exact plane through them
    tilted = np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]], dtype=float)
    d = knee_distances(tilted)
    assert d[:3] == pytest.approx([0, 0, 0], abs=1e-12) and d[3] > 0
    normal = np.linalg.solve(tilted[:3], np.ones(3))
    assert d[3] == pytest.approx((tilted[3] @ normal - 1) / np.linalg.norm(normal))


def test_weights_pick_the_best_weighted_sum_of_normalised_objectives():
    record = _record(FRONT)
    assert pick(record, weights={"y1": 1.0, "y2": 0.0}).trial.number == 0  # best y1
    assert pick(record, weights={"y2": 2.0}).trial.number == 10
    assert pick(record, weights={"y1": 0.5, "y2": 0.5}).trial.number == 5  # 1 - (x^2 + (1 - x)^2) / 2 is largest at x = 1/2
    # u1 = 1 - f1, u2 = 1 - f2: 0.3 u1 + 0.7 u2 is largest at k = 7 on this grid
    scores = [0.3 * (1 - f1) + 0.7 * (1 - f2) for f1, f2 in FRONT]
    assert pick(record, weights={"y1": 0.3, "y2": 0.7}).trial.number == int(np.argmax(scores))


def test_bounds_filter_the_front_then_the_rule_applies():
    record = _record(FRONT)
    chosen = pick(record, maximum={"y1": 0.1})  # k = 0..3 remain: their own extremes and knee
    assert chosen.candidates == 4 and chosen.trial.value("val/y1") <= 0.1
    assert chosen.trial.number == int(np.argmax(knee_distances(_normalised(FRONT[:4]))))
    assert pick(record, minimum={"y1": 0.5}, weights={"y1": 1}).trial.number == 8  # the best y1 among y1 >= 0.5
    with pytest.raises(MtlSearchError, match="no trial of the front"):
        pick(record, minimum={"y1": 2.0})
    with pytest.raises(MtlSearchError, match="no trial of the front"):
        pick(record, maximum={"params": 1e9})  # a cost these trials did not record


def _normalised(points):
    from mtl_search.results.pick import normalised

    return normalised([list(p) for p in points], OBJECTIVES)


def test_only_front_trials_are_candidates():
    points = FRONT + [(0.0, 0.0)]  # the best everywhere, but not marked on the front (e.g. infeasible)
    assert pick(_record(points, on_front=set(range(11)))).trial.number == 5


@pytest.mark.parametrize("weights, message", [
    ({"y9": 1.0}, "unknown objective 'y9'"),
    ({"y1": -1.0, "y2": 1.0}, "y1=-1"),
    ({"y1": 0.0}, "at least one weight"),
])
def test_bad_weights_are_errors_naming_them(weights, message):
    with pytest.raises(MtlSearchError, match=message):
        pick(_record(FRONT), weights=weights)


@pytest.mark.parametrize("text", ["y1", "y1=abc", "=1", "y1=1,y1=2", "y1=inf"])
def test_malformed_assignments_are_errors_naming_the_option(text):
    with pytest.raises(MtlSearchError, match="--weights"):
        parse_assignments(text, "--weights")


def _store(tmp_path) -> str:
    """A store holding one search whose front is FRONT (written with MLflow directly: no search is run)."""
    from mlflow.entities import Metric, RunTag

    from mtl_search.record import PARETO, TASK_METRICS
    from mtl_search.results.search_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "demo")
    parent = tracker.start_search("search-1", OBJECTIVES, {"trials": len(FRONT)}, "", tags={TASK_METRICS: json.dumps({"y1": "mse", "y2": "mse"})})
    for number, (y1, y2) in enumerate(FRONT):
        run = tracker.start_trial(parent, number, "hard_sharing", {"strategy": "hard_sharing"}, "hard_sharing")
        tracker.client.log_batch(run, metrics=[Metric("val/y1", y1, 0, 0), Metric("val/y2", y2, 0, 0)], tags=[RunTag(PARETO, "true")])
        tracker.client.set_terminated(run, "FINISHED")
    tracker.client.set_terminated(parent, "FINISHED")
    return uri


def test_the_command_prints_the_knee_with_its_run_id_and_exits_2_on_bad_input(tmp_path, capsys):
    uri = _store(tmp_path)
    record = mtl_search.load_search(uri, None)
    knee = mtl_search.pick(record).trial
    assert knee.number == 5
    assert main(["pick", "--knee", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trial 5 hard_sharing (run {knee.run_id})") and f"mtl-search predict {knee.run_id} ROWS.csv --tracking-uri {uri}" in out
    assert main(["pick", "--weights", "y1=1,y2=0", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.startswith("trial 0 ")
    assert main(["pick", "--max", "y1=0.1", "--min", "y2=0.5", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.startswith(("trial 0 ", "trial 1 ", "trial 2 "))
    for argv, named in ((["--weights", "y1=0.5,t9=0.5"], "'t9'"), (["--weights", "y1=x"], "'y1=x'"),
                        (["--min", "nope=0.8"], "'nope'"), (["--weights", "y1=-1"], "y1=-1")):
        assert main(["pick", *argv, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        main(["pick", "--knee", "--weights", "y1=1", "--tracking-uri", uri])
    assert exit_.value.code == 2
