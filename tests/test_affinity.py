"""Task affinity (TAG): the closed form on a hand-made model, clusters found on clustered data, `mtl-search groups`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mtl_search_plugins.datasets import (
    cluster_of,
    clustered_task_weights,
    synthetic_correlated,
)
from mtl_search_plugins.hard_sharing import HardSharing

from mtl_search import Int, MultiTaskModel, Problem, SharingMap, SpaceError, Strategy, Task, TrainConfig, Trainer
from mtl_search.cli import main
from mtl_search.nn.backbones import build_mlp
from mtl_search.search.grouping import SINGLETON_SCORE, joint_strategy, partition_score, select_partitions
from mtl_search.training.affinity import AffinityMeter
from mtl_search.training.weighting import Equal

A, C = (1.0, 3.0), (2.0, -1.0)  # L_i(w) = a_i (w - c_i)^2


class _Quadratic(MultiTaskModel):
    def __init__(self):
        super().__init__(Problem((1,), (Task("p", "regression"), Task("q", "regression"))))
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def task_losses(self, batch):
        return {name: a * (self.w - c) ** 2 for name, a, c in zip(("p", "q"), A, C)}

    def shared_parameters(self):
        return [self.w]

    def sharing_map(self, x):
        return {"m": SharingMap(torch.ones(2, 1), ["p", "q"], ["w"])}


def test_the_lookahead_affinity_of_two_quadratic_losses_is_the_closed_form():
    model = _Quadratic()
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    meter = AffinityMeter(["p", "q"], every=1)
    w = 0.5
    meter.observe(model, None, model.task_losses(None), optimizer)
    for i in range(2):
        stepped = w - lr * 2 * A[i] * (w - C[i])
        for j in range(2):
            expected = 1 - A[j] * (stepped - C[j]) ** 2 / (A[j] * (w - C[j]) ** 2)
            assert math.isclose(float(meter.mean()[i, j]), expected, rel_tol=1e-5), (i, j)
    assert float(model.w.detach()) == w  # restored exactly
    assert float(meter.mean()[0, 1]) < 0 < float(meter.mean()[0, 0])  # p's minimum lies away from q's: a step for p hurts q


def test_clustered_weights_have_the_asked_cosines():
    w = clustered_task_weights(0.9, 0.2, 4, 2, 12, 1.0, torch.Generator().manual_seed(0))
    cos = torch.nn.functional.normalize(w, dim=1) @ torch.nn.functional.normalize(w, dim=1).T
    clusters = cluster_of(4, 2)
    assert clusters == [0, 0, 1, 1]
    for s in range(4):
        for t in range(s + 1, 4):
            assert math.isclose(float(cos[s, t]), 0.9 if clusters[s] == clusters[t] else 0.2, abs_tol=1e-9)


def _clustered(samples=600):
    return synthetic_correlated(correlation=0.9, tasks=4, samples=samples, input_dim=12, sin_terms=3, scale=1.0, noise=0.1, seed=0,
                                val=0.2, test=0.2, clusters=2, across=0.0)


def test_clustered_labels_correlate_within_clusters_and_not_across():
    y = _clustered(2000).train.y
    corr = torch.corrcoef(torch.stack([y[f"y{t}"] for t in range(1, 5)]))
    assert corr[0, 1] > 0.6 and corr[2, 3] > 0.6
    assert abs(corr[0, 2]) < 0.2 and abs(corr[1, 3]) < 0.2


def test_on_clustered_data_affinity_within_clusters_exceeds_affinity_across():
    data = _clustered()
    torch.manual_seed(0)
    model = HardSharing().build(data.problem, build_mlp((12,), depth=2, width=32), {"shared_depth": 2, "tower_width": 8})
    trainer = Trainer(data, TrainConfig(epochs=3, batch_size=64, lr=0.01, affinity_every=2), Equal(data.problem.task_names))
    trainer.fit(model)
    steps = 3 * math.ceil(len(data.train) / 64)
    assert trainer.affinity.measured == math.ceil(steps / 2)
    z = trainer.affinity.mean()
    within = [float(z[i, j]) for i in range(4) for j in range(4) if i != j and i // 2 == j // 2]
    across = [float(z[i, j]) for i in range(4) for j in range(4) if i // 2 != j // 2]
    assert sum(within) / len(within) > sum(across) / len(across)
    best = select_partitions(z, data.problem.task_names, groups=2, top=1)[0]
    assert best["groups"] == [["y1", "y2"], ["y3", "y4"]]


def test_partition_selection_maximises_the_affinity_received_from_the_group():
    z = torch.tensor([[0.0, 0.5, 0.0], [0.1, 0.0, 0.9], [0.0, 0.9, 0.0]], dtype=torch.float64)  # z[i, j] = Z(i -> j)
    assert math.isclose(partition_score([[0, 1], [2]], z), 0.5 + 0.1 + SINGLETON_SCORE)
    ranked = select_partitions(z, ["a", "b", "c"], groups=2, top=3)
    assert ranked[0]["groups"] == [["a"], ["b", "c"]] and math.isclose(ranked[0]["score"], 1.8 + SINGLETON_SCORE)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    every = select_partitions(z, ["a", "b", "c"], top=10)
    assert sorted({len(r["groups"]) for r in every}) == [1, 2, 3] and len(every) == 1 + 3 + 1


NOTEBOOK = json.loads((Path(__file__).parent / "data" / "tag_notebook_affinities.json").read_text())
# the best partition per number of groups under the notebook's scoring (a task's score: the mean of
# matrix[task][other] over the other members of its group, -1e6 alone), found by enumerating every partition
OFFICIAL_PARTITIONS = {
    "taskonomy": {
        2: [["depth_l", "norm_l", "ss_l"], ["edge2d_l", "key_l"]],  # also the notebook's own selection for 2 networks
        3: [["depth_l", "ss_l"], ["edge2d_l", "key_l"], ["norm_l"]],
        4: [["depth_l"], ["edge2d_l", "key_l"], ["norm_l"], ["ss_l"]],
    },
    "celeba": {
        2: [["5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard"], ["Black_Hair", "Blond_Hair", "Brown_Hair", "Rosy_Cheeks", "Wearing_Hat"]],
        3: [["5_o_Clock_Shadow", "No_Beard"], ["Black_Hair", "Blond_Hair", "Brown_Hair", "Rosy_Cheeks", "Wearing_Hat"], ["Goatee", "Mustache"]],
        4: [["5_o_Clock_Shadow", "No_Beard"], ["Black_Hair", "Brown_Hair"], ["Blond_Hair", "Rosy_Cheeks", "Wearing_Hat"], ["Goatee", "Mustache"]],
    },
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARTITIONS))
def test_partitions_on_the_official_notebooks_affinities_are_tags(name):
    matrix = NOTEBOOK[name]
    tasks = list(matrix)
    z = torch.tensor([[matrix[j][i] for j in tasks] for i in tasks], dtype=torch.float64)  # z[i, j] = Z(i -> j) = matrix[j][i]
    for k, expected in OFFICIAL_PARTITIONS[name].items():
        best = select_partitions(z, tasks, groups=k, top=1)[0]
        assert sorted(sorted(g) for g in best["groups"]) == expected, (name, k)
        singletons = sum(len(g) == 1 for g in expected)
        assert best["score"] < SINGLETON_SCORE * (singletons - 0.5) if singletons else best["score"] > SINGLETON_SCORE / 2


SPACE = """
experiment: clustered
data:
  dataset: synthetic_correlated
  options: {tasks: 4, clusters: 2, correlation: 0.9, across: 0.0, samples: 600, input_dim: 12, sin_terms: 3, seed: 0}
backbone: {kind: mlp, depth: 2, width: 32}
strategies:
  mmoe: {}
  hard_sharing: {tower_width: 8}
training: {epochs: 3, patience: 3, batch_size: 64, lr: 0.01}
"""


def test_groups_with_two_groups_returns_the_two_clusters_and_logs_a_run(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["groups", str(space), "--groups", "2", "--format", "json", "--tracking-uri", uri]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == ["y1", "y2", "y3", "y4"] and out["strategy"] == "hard_sharing"
    assert len(out["affinity"]) == 4 and all(len(row) == 4 for row in out["affinity"])
    assert out["partitions"][0]["groups"] == [["y1", "y2"], ["y3", "y4"]]
    assert all(len(p["groups"]) == 2 for p in out["partitions"])
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(out["run_id"])
    assert run.data.tags["mtl_search.role"] == "groups" and "affinity/y1/y2" in run.data.metrics
    assert main(["groups", str(space), "--groups", "5", "--tracking-uri", uri]) == 2
    assert "[1, 4]" in capsys.readouterr().err


def test_the_groups_table_keeps_small_affinities_readable():
    from mtl_search.search.grouping import format_groups

    result = {"tasks": ["a", "b"], "steps": 3, "strategy": "hard_sharing", "affinity": [[0.0, 1.234e-06], [-5.678e-07, 0.0]],
              "partitions": [{"groups": [["a", "b"]], "score": 3.21e-06}]}
    text = format_groups(result)
    assert "1.234e-06" in text and "-5.678e-07" in text and "3.21e-06" in text  # not rounded to 0.0000


class _Shared(Strategy):
    name, declares_shared_parameters = "shared", True


class _Answers(Strategy):
    name, knobs = "answers", {"blocks": Int(0, "depth")}

    def fully_shared(self, knobs, depth):
        return {"blocks": knobs["blocks"].low + depth}  # reads the ranges it is given and the depth


def test_grouping_trains_the_first_strategy_that_answers_with_a_fully_shared_configuration():
    def plan(*strategies):
        return SimpleNamespace(strategies={s.name: (s, dict(s.knobs)) for s in strategies})

    hard = HardSharing()
    assert joint_strategy(plan(_Shared(), hard), 3) == ("hard_sharing", {"shared_depth": 3})  # before a shared one listed first
    assert joint_strategy(plan(_Shared(), _Answers(), hard), 2) == ("answers", {"blocks": 2})  # the space's order among answers
    assert joint_strategy(plan(Strategy(), _Shared()), 2) == ("shared", {})  # none answers: the first with shared parameters
    with pytest.raises(SpaceError, match="declares shared parameters"):
        joint_strategy(plan(Strategy()), 2)


def test_grouping_and_the_command_line_import_neither_ray_nor_optuna():
    code = ("import sys, mtl_search.cli, mtl_search.search.grouping\n"
            "print(sorted(m for m in ('ray', 'optuna') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
