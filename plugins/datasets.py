"""Data sets offered by the project, generated on the spot (no download).

``synthetic_correlated``: the MMoE paper's synthetic benchmark (METHODS.md section 7) with
controllable task correlation.
"""
from __future__ import annotations

import math

import torch

from mtl_search import Dataset, Problem, Task, hookimpl, make_dataset

SYNTHETIC_DEFAULTS = {
    "correlation": 0.5,  # cosine between task weight vectors, p
    "tasks": 2,
    "samples": 10000,
    "input_dim": 100,    # d
    "sin_terms": 5,      # m
    "scale": 1.0,        # c
    "noise": 0.1,        # standard deviation of the label noise: N(0, 0.01)
    "seed": 0,
    "val": 0.15,
    "test": 0.15,
}


def task_weights(correlation: float, tasks: int, input_dim: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Rows w_t with pairwise cosine ``correlation``.

    Two tasks (the paper): w_1 = c u_1, w_2 = c (p u_1 + sqrt(1 - p^2) u_2).
    More tasks: w_t = c (sqrt(p) u_0 + sqrt(1 - p) u_t), u orthonormal.
    """
    basis, _ = torch.linalg.qr(torch.randn(input_dim, tasks + 1, generator=generator, dtype=torch.float64))
    u = basis.T  # orthonormal rows
    if tasks == 2:
        p = correlation
        return scale * torch.stack([u[0], p * u[0] + math.sqrt(1 - p * p) * u[1]])
    return scale * (math.sqrt(correlation) * u[0] + math.sqrt(1 - correlation) * u[1 : tasks + 1])


def synthetic_correlated(correlation: float, tasks: int, samples: int, input_dim: int, sin_terms: int, scale: float,
                         noise: float, seed: int, val: float, test: float) -> Dataset:
    """y_t = w_t.x + sum_i sin(alpha_i w_t.x + beta_i) + noise, x ~ N(0, I_d); alpha, beta ~ N(0, 1) shared by the tasks."""
    if not isinstance(tasks, int) or tasks < 2:
        raise ValueError(f"tasks must be an integer >= 2, got {tasks!r}")
    low = -1.0 if tasks == 2 else 0.0
    if not low <= correlation <= 1.0:
        raise ValueError(f"correlation must lie in [{low:g}, 1] for {tasks} tasks, got {correlation!r}")
    if input_dim < tasks + 1:
        raise ValueError(f"input_dim must be at least tasks + 1 = {tasks + 1}, got {input_dim}")
    if samples < 20:
        raise ValueError(f"samples must be at least 20, got {samples}")
    if noise < 0 or sin_terms < 0:
        raise ValueError("noise and sin_terms must be >= 0")
    g = torch.Generator().manual_seed(seed)
    w = task_weights(correlation, tasks, input_dim, scale, g)
    alpha = torch.randn(sin_terms, generator=g, dtype=torch.float64)
    beta = torch.randn(sin_terms, generator=g, dtype=torch.float64)
    x = torch.randn(samples, input_dim, generator=g, dtype=torch.float64)
    linear = x @ w.T  # (samples, tasks)
    y = linear + torch.sin(linear.unsqueeze(-1) * alpha + beta).sum(-1) + noise * torch.randn(samples, tasks, generator=g, dtype=torch.float64)
    names = [f"y{t + 1}" for t in range(tasks)]
    problem = Problem((input_dim,), tuple(Task(n, "regression", "mse") for n in names))
    return make_dataset(problem, x.float(), {n: y[:, t].float() for t, n in enumerate(names)}, val, test, seed)


@hookimpl
def register_datasets(register):
    register("synthetic_correlated", synthetic_correlated, SYNTHETIC_DEFAULTS,
             "MMoE synthetic benchmark: regression tasks whose correlation is controlled")
