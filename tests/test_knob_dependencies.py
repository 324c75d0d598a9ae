"""Which values a knob holds (each knob type answers for itself), and knobs whose bounds name another knob of the same strategy: sampled after it, never outside the range it sets."""
from __future__ import annotations

import optuna
import pytest

from mtl_search.cli import main
from mtl_search.errors import SpaceError
from mtl_search.knobs import (
    Choice,
    Fixed,
    Float,
    Int,
    Knob,
    check_named_bounds,
    dependency_order,
    knob_bounds,
)

PLUGIN = '''
from mtl_search import Int, hookimpl
from mtl_search_plugins.mixture_of_experts import TopKMoE


class BoundedTopK(TopKMoE):
    """Top-k routing whose k is sampled within [1, experts], declared before the experts it depends on."""

    name = "bounded_topk"
    knobs = {"k": Int(1, "experts", minimum=1), **{n: v for n, v in TopKMoE.knobs.items() if n != "k"}, "experts": Int(2, 6, minimum=1)}

    def check(self, knobs, backbone, path):
        return None  # k <= experts holds by construction

    def build(self, problem, backbone, params):
        if params["k"] > params["experts"]:
            raise AssertionError(f"sampled k={params['k']} > experts={params['experts']}")
        return super().build(problem, backbone, params)


@hookimpl
def register_strategies(register):
    register(BoundedTopK())
'''


def _space(tmp_path, overrides: str = "{}"):
    (tmp_path / "bounded.py").write_text(PLUGIN)
    path = tmp_path / "space.yaml"
    path.write_text("plugins: [bounded.py]\ndata: {dataset: synthetic_correlated, options: {samples: 120}}\n"
                    f"backbone: {{depth: 2, width: 8}}\nstrategies: {{bounded_topk: {overrides}}}\nsearch: {{sampler: random}}\n")
    return path


def test_a_knob_is_ordered_after_the_knobs_its_bounds_name_and_declaration_order_is_kept_otherwise():
    knobs = {"k": Int(1, "experts"), "width": Int(2, 8), "experts": Int(1, "depth"), "top": Int("k", "experts")}
    assert dependency_order(knobs) == ["experts", "k", "width", "top"]
    assert dependency_order({"a": Int(1, 2), "b": Int(1, 3)}) == ["a", "b"]
    with pytest.raises(SpaceError, match=r"strategies.s.a: knob bounds name each other in a cycle: a -> b -> a"):
        dependency_order({"a": Int(1, "b"), "b": Int(1, "a")}, "strategies.s")


def test_bounds_of_a_sibling_follow_its_range():
    knobs = {"k": Int(1, "experts"), "experts": Int(2, 6)}
    assert knob_bounds(knobs["k"], knobs) == (1, 6)


def test_every_sampled_value_lies_within_the_range_its_sibling_sets(tmp_path):
    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import TrialSpace
    from mtl_search.search.space import load_space

    plan, _, _ = prepare(load_space(_space(tmp_path)))
    space = TrialSpace(plan)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    pairs = []
    for _ in range(60):
        trial = study.ask()
        config = space(trial)
        pairs.append((config["bounded_topk.k"], config["bounded_topk.experts"]))
        study.tell(trial, 0.0)
    assert all(1 <= k <= experts for k, experts in pairs)
    assert max(k for k, _ in pairs) > 3  # the range follows experts (up to 6), not a fixed [1, 3]
    assert any(k == experts for k, experts in pairs)


def test_the_grid_covers_the_largest_range_a_sibling_allows(tmp_path):
    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import grid_space
    from mtl_search.search.space import load_space

    path = _space(tmp_path, "{importance_weight: 0.01, load_weight: 0.01}")
    path.write_text(path.read_text().replace("width: 8}", "width: 8, dropout: 0.0}"))
    plan, _, _ = prepare(load_space(path))
    assert grid_space(plan)["bounded_topk.k"] == [1, 2, 3, 4, 5, 6]


def test_the_contract_check_and_validate_build_at_consistent_small_values(tmp_path, capsys):
    from mtl_search.knobs import smallest_values

    assert smallest_values({"k": Int(1, "experts"), "experts": Int(2, 6)}) == {"k": 2, "experts": 2}
    assert main(["validate", str(_space(tmp_path))]) == 0, capsys.readouterr().err


def test_validate_refuses_a_bound_naming_nothing_and_a_range_that_can_be_empty(tmp_path, capsys):
    backbone = {"depth": Int(1, 4), "width": Int(8, 64)}
    with pytest.raises(SpaceError, match=r"strategies.s.k: a bound of knob 'k' names 'expertz', which is no knob"):
        check_named_bounds({"k": Int(1, "expertz"), "experts": Int(1, 4)}, backbone, "strategies.s")
    with pytest.raises(SpaceError, match=r"strategies.s.k: a bound of knob 'k' names 'act', which is not an integer knob"):
        check_named_bounds({"k": Int(1, "act"), "act": Choice("relu", "gelu")}, backbone, "strategies.s")
    with pytest.raises(SpaceError, match=r"strategies.s.k: its range \[3, experts\] is empty when the low bound is 3 and the high bound 2"):
        check_named_bounds({"k": Int(3, "experts"), "experts": Int(2, 6)}, backbone, "strategies.s")
    check_named_bounds({"k": Int(1, "experts"), "experts": Int(1, 4), "d": Int(0, "depth")}, backbone, "strategies.s")
    # a space's own range for k must stay within every experts value the space allows
    code = main(["validate", str(_space(tmp_path, "{experts: {int: [2, 4]}, k: {int: [1, 4]}}"))])
    err = capsys.readouterr().err
    assert code == 2 and "strategies.bounded_topk.k: 4 is above knob experts (2 to 4); every trial's value must be at most 2" in err
    assert main(["validate", str(_space(tmp_path, "{experts: {int: [2, 4]}, k: {int: [1, 2]}}"))]) == 0, capsys.readouterr().err


def test_a_knob_type_of_its_own_answers_every_value_question_from_its_values():
    from mtl_search.knobs import midpoint_values, smallest_values

    class Odd(Knob):  # a third party's knob: finitely many values, nothing else about ranges
        def values(self):
            return [5, 1, 3]

        def suggest(self, trial, name, context=None):
            return trial.suggest_categorical(name, self.values())

        def narrow(self, override, path):
            return override

        def describe(self):
            return "odd"

    odd = Odd()
    assert (odd.extremes(), odd.smallest(), odd.midpoint(), knob_bounds(odd)) == ([5, 1, 3], 5, 3, (1, 5))
    # a bound naming it reads the value chosen for it: a's range is [1, b]
    assert smallest_values({"a": Int(1, "b"), "b": odd}) == {"a": 2, "b": 5}
    assert midpoint_values({"a": Int(1, "b"), "b": odd}) == {"a": 2, "b": 3}
    # the override check asks the override for its values, not its type
    assert Int(1, 8).narrow(odd, "strategies.x.k") is odd
    with pytest.raises(SpaceError, match="above the largest allowed value 4"):
        Int(1, 4, maximum=4).narrow(odd, "strategies.x.k")


def test_the_midpoint_is_the_geometric_middle_of_a_log_range_and_the_median_of_numeric_choices():
    assert Int(4, 64, log=True).midpoint() == 16 and Int(2, 8).midpoint() == 5 and Float(1e-4, 1e-2, log=True).midpoint() == pytest.approx(1e-3)
    assert Choice(8, 2, 4).midpoint() == 4 and Choice("relu", "gelu").midpoint() == "relu" and Fixed([1, 2]).midpoint() == [1, 2]
    assert Int(1, "depth").midpoint({"depth": 5}) == 3 and Int(1, "depth").smallest({"depth": 5}) == 2
