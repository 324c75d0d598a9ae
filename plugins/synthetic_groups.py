"""``synthetic_groups``: the MMoE synthetic benchmark (METHODS.md section 7) with groups of tasks of different relatedness.

Tasks come in groups; group g has its own shared direction u_g and correlation p_g, and
task t of group g has the weight vector w_t = c (sqrt(p_g) u_g + sqrt(1 - p_g) u_t), all u
orthonormal: two tasks of group g have cosine p_g, two tasks of different groups cosine 0.
Labels follow the MMoE construction, y_t = w_t.x + sum_i sin(alpha_i w_t.x + beta_i) + noise,
with alpha, beta ~ N(0, 1) shared by all tasks. Tasks are named ``g<group>_t<index>``.
"""
from __future__ import annotations

import math

import torch

from mtl_search import Dataset, Problem, Task, hookimpl, make_dataset

GROUPS_DEFAULTS = {
    "group_correlations": [0.9, 0.5, 0.0],  # p_g per group: closely related, loosely related, unrelated
    "tasks_per_group": 4,
    "samples": 4000,
    "input_dim": 32,
    "sin_terms": 5,
    "scale": 1.0,
    "noise": 0.1,
    "seed": 0,
    "val": 0.15,
    "test": 0.15,
}


def group_task_weights(correlations: list[float], tasks_per_group: int, input_dim: int, scale: float,
                       generator: torch.Generator) -> torch.Tensor:
    """Rows w_t (groups in order, ``tasks_per_group`` each) with cosine p_g within group g and 0 across groups."""
    groups = len(correlations)
    tasks = groups * tasks_per_group
    basis, _ = torch.linalg.qr(torch.randn(input_dim, groups + tasks, generator=generator, dtype=torch.float64))
    u = basis.T
    rows = []
    for g, p in enumerate(correlations):
        for k in range(tasks_per_group):
            rows.append(scale * (math.sqrt(p) * u[g] + math.sqrt(1 - p) * u[groups + g * tasks_per_group + k]))
    return torch.stack(rows)


def synthetic_groups(group_correlations: list[float], tasks_per_group: int, samples: int, input_dim: int, sin_terms: int,
                     scale: float, noise: float, seed: int, val: float, test: float) -> Dataset:
    """Regression tasks in groups of different relatedness (see the module docstring)."""
    if not isinstance(group_correlations, list) or not group_correlations or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0 for p in group_correlations):
        raise ValueError(f"group_correlations must be a non-empty list of numbers in [0, 1], got {group_correlations!r}")
    if not isinstance(tasks_per_group, int) or tasks_per_group < 1:
        raise ValueError(f"tasks_per_group must be an integer >= 1, got {tasks_per_group!r}")
    tasks = len(group_correlations) * tasks_per_group
    if tasks < 2:
        raise ValueError("there must be at least two tasks (groups x tasks_per_group)")
    if input_dim < tasks + len(group_correlations):
        raise ValueError(f"input_dim must be at least tasks + groups = {tasks + len(group_correlations)}, got {input_dim}")
    if samples < 20:
        raise ValueError(f"samples must be at least 20, got {samples}")
    if noise < 0 or sin_terms < 0:
        raise ValueError("noise and sin_terms must be >= 0")
    g = torch.Generator().manual_seed(seed)
    w = group_task_weights(list(map(float, group_correlations)), tasks_per_group, input_dim, scale, g)
    alpha = torch.randn(sin_terms, generator=g, dtype=torch.float64)
    beta = torch.randn(sin_terms, generator=g, dtype=torch.float64)
    x = torch.randn(samples, input_dim, generator=g, dtype=torch.float64)
    linear = x @ w.T
    y = linear + torch.sin(linear.unsqueeze(-1) * alpha + beta).sum(-1) + noise * torch.randn(samples, tasks, generator=g, dtype=torch.float64)
    names = [f"g{group + 1}_t{k + 1}" for group in range(len(group_correlations)) for k in range(tasks_per_group)]
    problem = Problem((input_dim,), tuple(Task(n, "regression", "mse") for n in names))
    return make_dataset(problem, x.float(), {n: y[:, t].float() for t, n in enumerate(names)}, val, test, seed)


@hookimpl
def register_datasets(register):
    register("synthetic_groups", synthetic_groups, GROUPS_DEFAULTS,
             "MMoE synthetic benchmark with groups of tasks of different relatedness (within-group cosine per group, 0 across)")
