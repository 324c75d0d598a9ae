"""The branching family: trees (sharing by autograd, the encoding, shared prefixes run once), Learning to Branch, task groups."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import one_reference_trial, tiny_space
from mtl_search_plugins.branching import (
    Branching,
    BranchingModel,
    LearningToBranch,
    TaskGroups,
    TreeSpace,
    canonical,
    hard_sharing_tree,
    parse_tree,
    written,
)
from mtl_search_plugins.datasets import synthetic_correlated
from mtl_search_plugins.hard_sharing import HardSharing

from mtl_search import Problem, Task, TrainConfig, Trainer, count_parameters
from mtl_search.cli import main
from mtl_search.nn.backbones import build_mlp, build_residual_mlp
from mtl_search.training.weighting import Equal

PROBLEM = Problem((6,), (Task("a", "regression"), Task("b", "regression"), Task("c", "regression")))


def _grad_ids(model: torch.nn.Module, task: str, x: torch.Tensor) -> set[int]:
    """Ids of the parameters that receive a gradient from one task's output."""
    model.zero_grad(set_to_none=True)
    model(x)[task].sum().backward()
    return {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _block_ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_tasks_of_a_group_share_a_blocks_tensors_and_other_groups_use_disjoint_ones():
    torch.manual_seed(0)
    # block 0: {a, b, c}; block 1: {a, b} | {c}; block 2: {a} | {b} | {c}
    labels = [(0, 0, 0), (0, 0, 1), (0, 1, 2)]
    model = BranchingModel(PROBLEM, build_mlp((6,), depth=3, width=8), labels, tower_width=4)
    x = torch.randn(7, 6)
    grads = {t: _grad_ids(model, t, x) for t in "abc"}
    block = lambda level, group: _block_ids(model.tree.blocks[level][f"g{group}"])  # noqa: E731
    assert block(0, 0) <= grads["a"] & grads["b"] & grads["c"]  # one tensor set serves all three at block 0
    assert block(1, 0) <= grads["a"] & grads["b"] and not block(1, 0) & grads["c"]
    assert block(1, 1) <= grads["c"] and not block(1, 1) & (grads["a"] | grads["b"])
    for t, group in zip("abc", range(3)):  # block 2: each alone, disjoint
        others = set().union(*(grads[o] for o in "abc" if o != t))
        assert block(2, group) <= grads[t] and not block(2, group) & others


def _all_trees_brute_force(tasks: int, depth: int) -> set[tuple]:
    """Every labelling of tasks x blocks in which groups only split going up, canonicalised."""
    found = set()
    labellings = [r for r in itertools.product(range(tasks), repeat=tasks) if canonical([r])[0] == r]  # one per partition
    for rows in itertools.product(labellings, repeat=depth):
        ok = all(len({(rows[l - 1][t], rows[l][t]) for t in range(tasks)}) == len(set(rows[l])) for l in range(1, depth))
        if ok:
            found.add(tuple(canonical(rows)))
    return found


def test_enumerating_the_encoding_builds_every_canonical_tree_of_3_tasks_and_2_blocks_exactly_once():
    space = TreeSpace(3, 2)
    trees = [tuple(Branching().labels(PROBLEM, 2, {"tree_code": (r + 0.5) / space.count})) for r in range(space.count)]
    expected = _all_trees_brute_force(3, 2)
    assert space.count == len(expected) == 12
    assert len(set(trees)) == len(trees) and set(trees) == expected


def test_max_branches_bounds_the_leaves_and_hard_sharing_trees_are_special_cases():
    space = TreeSpace(4, 3, max_branches=2)
    trees = [space.unrank(r) for r in range(space.count)]
    assert all(len(set(t[-1])) <= 2 for t in trees)
    assert {tuple(t) for t in trees} == {t for t in _all_trees_brute_force(4, 3) if len(set(t[-1])) <= 2}
    everything = {tuple(TreeSpace(3, 3).unrank(r)) for r in range(TreeSpace(3, 3).count)}
    for depth in range(4):  # every hard_sharing split, with hard_sharing's parameter count
        tree = hard_sharing_tree(3, 3, depth)
        assert tuple(tree) in everything
        backbone = build_mlp((6,), depth=3, width=8)
        ours = BranchingModel(PROBLEM, backbone, tree, tower_width=4)
        theirs = HardSharing().build(PROBLEM, backbone, {"shared_depth": depth, "tower_width": 4})
        assert count_parameters(ours.parameters()) == count_parameters(theirs.parameters())


def test_relabelled_trees_are_one_canonical_form_and_the_written_form_round_trips():
    one = canonical([(5, 5, 2), (9, 9, 1)])
    other = canonical([(0, 0, 1), (3, 3, 7)])
    assert one == other == [(0, 0, 1), (0, 0, 1)]
    tree = [(0, 0, 0), (0, 0, 1), (0, 1, 2)]
    text = written(tree, PROBLEM.task_names)
    assert text == [[["a", "b", "c"]], [["a", "b"], ["c"]], [["a"], ["b"], ["c"]]]
    assert parse_tree(text, PROBLEM.task_names, 3) == tree
    with pytest.raises(ValueError, match="only split going up"):
        parse_tree([[["a"], ["b", "c"]], [["a", "b"], ["c"]]], PROBLEM.task_names, 2)


def test_shared_prefixes_run_once_per_batch():
    torch.manual_seed(0)
    labels = [(0, 0, 0), (0, 0, 1), (0, 1, 2)]
    model = BranchingModel(PROBLEM, build_mlp((6,), depth=3, width=8), labels, tower_width=4)
    calls: list[str] = []
    for name, module in [("stem", model.tree.stems["g0"])] + [(f"b{l}g{g}", m) for l, row in enumerate(model.tree.blocks)
                                                               for g, m in enumerate(row.values())]:
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
    model(torch.randn(4, 6))
    assert sorted(calls) == sorted(["stem", "b0g0", "b1g0", "b1g1", "b2g0", "b2g1", "b2g2"])  # each once


def _ltb(depth=2, **params):
    torch.manual_seed(0)
    values = {"tower_width": 4, **params}
    return LearningToBranch().build(PROBLEM, build_residual_mlp((6,), depth=depth, width=8), values)


def test_ltb_at_temperature_near_zero_the_sampled_parent_is_the_argmax():
    model = _ltb()
    with torch.no_grad():
        model.parent_logits.copy_(torch.randn_like(model.parent_logits))
        model.head_logits.copy_(torch.randn_like(model.head_logits))
    model.temperature = 1e-4
    torch.manual_seed(3)
    parents, heads = model.mixing_weights()
    torch.manual_seed(3)  # the same Gumbel draws: argmax of logits + noise is the sampled parent
    noise_parents = -torch.empty_like(model.parent_logits).exponential_().log()
    noise_heads = -torch.empty_like(model.head_logits).exponential_().log()
    one_hot = torch.nn.functional.one_hot((model.parent_logits + noise_parents).argmax(-1), model.nodes).float()
    assert torch.allclose(parents, one_hot, atol=1e-4)
    assert torch.allclose(heads, torch.nn.functional.one_hot((model.head_logits + noise_heads).argmax(-1), model.nodes).float(), atol=1e-4)
    # without noise (the eval-mode forward of the search) the tree is the argmax of the logits themselves
    model.searching = True
    model.eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        out = model(x)
        p, h = (t.tolist() for t in model.argmax_parents())
        for t, task in enumerate(PROBLEM.task_names):
            top = h[t]
            below = p[0][top]
            expected = model.towers[task](model.features[task](model.blocks[1][top](model.blocks[0][below](model.stems[below](x)))))
            assert torch.allclose(out[task], expected, atol=1e-6)



def test_ltb_samples_one_parent_per_child_and_its_logits_still_get_gradients():
    model = _ltb(depth=3)
    with torch.no_grad():
        model.parent_logits.copy_(torch.randn_like(model.parent_logits))
    model.searching = True
    model.train()
    for _ in range(5):  # every sample is one-hot at the default starting temperature
        parents, heads = model.mixing_weights()
        for weights in (parents, heads):
            assert torch.equal(weights.detach(), torch.nn.functional.one_hot(weights.argmax(-1), model.nodes).to(weights))
    model.zero_grad()
    sum(out.square().sum() for out in model(torch.randn(16, 6)).values()).backward()
    assert model.parent_logits.grad.abs().sum() > 0 and model.head_logits.grad.abs().sum() > 0
    # the default schedule reaches tau_min by the last search epoch
    temperatures = [model.search_temperature(e) for e in range(model.search_epochs)]
    assert temperatures[0] == pytest.approx(model.tau0) and temperatures[-1] == pytest.approx(model.tau_min)
    assert temperatures == sorted(temperatures, reverse=True) and temperatures[-1] <= 0.1

def test_ltb_retrains_the_argmax_tree_of_the_learned_logits():
    data = synthetic_correlated(correlation=0.5, tasks=3, samples=300, input_dim=8, sin_terms=2, scale=1.0, noise=0.1, seed=0,
                                val=0.2, test=0.2)
    problem = data.problem
    torch.manual_seed(0)
    model = LearningToBranch().build(problem, build_residual_mlp((8,), depth=2, width=8),
                                     {"tower_width": 4, "search_epochs": 3, "arch_lr": 0.1})
    trainer = Trainer(data, TrainConfig(epochs=2, batch_size=32, lr=5e-3), Equal(problem.task_names))
    model = LearningToBranch().fit(model, trainer)
    assert bool(model.decided) and model.head_logits.abs().sum() > 0  # the logits were learned
    parents, heads = model.argmax_parents()
    assert torch.equal(model.parents, parents) and torch.equal(model.head_parents, heads)
    # the recorded tree, pasted into a branching model, is the same tree
    tree = json.loads(model.trial_tags()["tree"])
    pasted = Branching().build(problem, build_residual_mlp((8,), depth=2, width=8), {"tree": tree, "tower_width": 4})
    assert pasted.labels == model.labels()
    paths = model.node_paths()  # the argmax tree: task t's path follows the argmax parents
    for t, path in enumerate(paths):
        assert path[-1] == int(heads[t]) and path[0] == int(parents[0][path[1]])


def test_task_groups_builds_one_network_per_group():
    torch.manual_seed(0)
    model = TaskGroups().build(PROBLEM, build_mlp((6,), depth=2, width=8), {"partition": [["a", "c"], ["b"]], "shared_depth": 2,
                                                                             "tower_width": 4})
    x = torch.randn(3, 6)
    grads = {t: _grad_ids(model, t, x) for t in "abc"}
    towers = {t: _block_ids(model.towers[t]) for t in "abc"}
    assert (grads["a"] - towers["a"]) == (grads["c"] - towers["c"])  # a and c: one network
    assert not (grads["a"] - towers["a"]) & grads["b"]  # b: its own


@pytest.mark.parametrize("strategy,problem", [
    ("task_groups: {partition: {choice: [[[y1, y2], [y3]], [[y1, y2]]]}}", "in no group: y3"),
    ("task_groups: {partition: [[y1, y2], [y2, y3]]}", "in more than one group: y2"),
    ("branching: {tree: [[[y1, y2, y3]], [[y1, y4], [y2, y3]]]}", "unknown task 'y4'"),
    ("branching: {tree: [[[y1, y2, y3]]]}", "each of the backbone's 2 blocks"),
])
def test_validate_rejects_a_partition_or_tree_that_does_not_cover_the_tasks(tmp_path, capsys, strategy, problem):
    space = tiny_space(tmp_path, strategies="  " + strategy, extra="")
    text = space.read_text().replace("options: {samples: 400", "options: {tasks: 3, samples: 400")
    space.write_text(text)
    assert main(["validate", str(space)]) == 2
    assert problem in capsys.readouterr().err


def test_validate_accepts_the_groups_output_pasted_as_a_partition(tmp_path, capsys):
    space = tiny_space(tmp_path, strategies="  task_groups: {partition: {choice: [[[y1, y2], [y3]], [[y1, y2, y3]]]}}\n"
                                            "  branching: {tree: {choice: [[[[y1, y2, y3]], [[y1, y2], [y3]]], [[[y1, y2, y3]], [[y1], [y2, y3]]]]}}")
    space.write_text(space.read_text().replace("options: {samples: 400", "options: {tasks: 3, samples: 400"))
    assert main(["validate", str(space)]) == 0, capsys.readouterr().err


def test_a_trial_records_its_canonical_tree_as_a_tag_and_the_task_affinity_map(tmp_path):
    from benchmarks.common import run_trials_in_process
    from mtl_search.results.search_run import Tracker
    from mtl_search.search.space import load_space

    path = tiny_space(tmp_path, strategies="  branching: {tower_width: 4}", trials=2)
    path.write_text(path.read_text().replace("  lr: 0.005", "  lr: 0.005\n  affinity_every: 3").replace("  concurrency: 2", "  sampler: random"))
    results = [trial.result for trial in run_trials_in_process(load_space(path))]
    for result in results:
        tree = json.loads(json.loads(result["tags_json"])["model/tree"])
        assert parse_tree(tree, ["y1", "y2"], 2)  # a written tree over the tasks and the 2 blocks
        maps = json.loads(result["sharing_map_json"])
        assert {"groups", "shared_blocks"} <= set(maps)
        if result["model/branches"] < 2 or maps["shared_blocks"]["values"][0][1] > 0:  # some block shared: affinity measured
            assert maps["task_affinity"]["rows"] == maps["task_affinity"]["columns"] == ["y1", "y2"]
            assert "model/affinity/y1/y2" in result
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tags")
    run_id = tracker.start_trial("parent", 0, "branching", {}, "branching")
    tracker.finish_trial(run_id, results[0])
    assert tracker.client.get_run(run_id).data.tags["model/tree"] == json.loads(results[0]["tags_json"])["model/tree"]


def test_branching_space_runs_and_records_trees_and_affinity(ray_session, workdir, capsys):
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from mtl_search.results.store import default_tracking_uri

    space = one_reference_trial(Path(__file__).resolve().parents[1] / "search_spaces" / "branching.yaml", workdir)
    assert main(["run", str(space), "--trials", "5"]) == 0
    capsys.readouterr()
    assert main(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(t["status"] == "finished" for t in report["trials"])
    client = MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name(report["experiment"])
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mtl_search.role") == "trial"]
    tasks = ["y1", "y2", "y3", "y4"]
    measured: dict[str, list[float]] = {}
    for run in runs:
        strategy = run.data.tags["mtl_search.strategy"]
        smap = json.loads(open(client.download_artifacts(run.info.run_id, "sharing_map.json", str(workdir))).read())
        values = smap["shared_blocks"]["values"]
        shared = (any(v > 0 for row in values for v in row) if strategy == "hard_sharing"
                  else any(values[i][j] > 0 for i in range(4) for j in range(4) if i != j))
        assert ("task_affinity" in smap) == shared  # measured exactly when some block is shared
        if shared:
            assert smap["task_affinity"]["rows"] == smap["task_affinity"]["columns"] == tasks
            measured.setdefault(strategy, []).append(run.data.metrics["model/affinity/y1/y2"])
        if strategy != "hard_sharing":
            assert parse_tree(json.loads(run.data.tags["model/tree"]), tasks, 3)
    search = client.get_run(report["search_run_id"]).data.metrics  # the affinity averaged per strategy on the search run
    for strategy, values in measured.items():
        assert abs(search[f"affinity/{strategy}/y1/y2"] - sum(values) / len(values)) < 1e-9
    assert not any(k.startswith("affinity/") and k.split("/")[1] not in measured for k in search)
