"""Data sets offered by the project, generated on the spot (no download).

``synthetic_correlated``: the MMoE paper's synthetic benchmark (docs/methods.md, "The MMoE synthetic benchmark") with
controllable task correlation.
``multi_digits``: the MultiMNIST construction (two digits side by side or overlapped, each
randomly shifted) on scikit-learn's bundled 8x8 digits.
"""
from __future__ import annotations

import math

import torch

from mtl_search import Dataset, Problem, Split, Task, hookimpl, make_dataset, split_rows

SYNTHETIC_DEFAULTS = {
    "correlation": 0.5,  # cosine between task weight vectors, p (within a cluster when clusters > 0)
    "tasks": 2,
    "clusters": 0,       # 0: every pair of tasks at `correlation`; k > 0: k clusters of consecutive tasks
    "across": 0.0,       # with clusters: cosine between the weight vectors of tasks in different clusters
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


def cluster_of(tasks: int, clusters: int) -> list[int]:
    """The cluster of each task: ``clusters`` runs of consecutive tasks, sizes differing by at most one."""
    return [t * clusters // tasks for t in range(tasks)]


def clustered_task_weights(within: float, across: float, tasks: int, clusters: int, input_dim: int, scale: float,
                           generator: torch.Generator) -> torch.Tensor:
    """Rows w_t with cosine ``within`` inside a cluster and ``across`` between clusters (0 <= across <= within <= 1).

    w_t = c (sqrt(a) u_0 + sqrt(p - a) v_{k(t)} + sqrt(1 - p) u_t) with u_0, v_1..v_K, u_1..u_T
    orthonormal, p = within, a = across and k(t) the cluster of task t.
    """
    basis, _ = torch.linalg.qr(torch.randn(input_dim, 1 + clusters + tasks, generator=generator, dtype=torch.float64))
    u = basis.T
    common, centres, own = u[0], u[1 : 1 + clusters], u[1 + clusters :]
    k = torch.tensor(cluster_of(tasks, clusters))
    return scale * (math.sqrt(across) * common + math.sqrt(within - across) * centres[k] + math.sqrt(1 - within) * own)


def synthetic_correlated(correlation: float, tasks: int, samples: int, input_dim: int, sin_terms: int, scale: float,
                         noise: float, seed: int, val: float, test: float, clusters: int = 0, across: float = 0.0) -> Dataset:
    """y_t = w_t.x + sum_i sin(alpha_i w_t.x + beta_i) + noise, x ~ N(0, I_d); alpha, beta ~ N(0, 1) shared by the tasks.

    ``clusters`` > 0 draws the tasks in that many clusters of consecutive tasks (y1, y2 | y3, y4
    for 4 tasks in 2): weight vectors at cosine ``correlation`` within a cluster and ``across``
    between clusters, a known structure for the methods that search which tasks to share.
    """
    if not isinstance(tasks, int) or tasks < 2:
        raise ValueError(f"tasks must be an integer >= 2, got {tasks!r}")
    if not isinstance(clusters, int) or not 0 <= clusters <= tasks:
        raise ValueError(f"clusters must be an integer in [0, tasks = {tasks}], got {clusters!r}")
    low = -1.0 if tasks == 2 and not clusters else 0.0
    if not low <= correlation <= 1.0:
        raise ValueError(f"correlation must lie in [{low:g}, 1] for {tasks} tasks, got {correlation!r}")
    if clusters and not 0.0 <= across <= correlation:
        raise ValueError(f"across must lie in [0, correlation = {correlation:g}] (the within-cluster cosine), got {across!r}")
    needed = tasks + 1 + clusters
    if input_dim < needed:
        raise ValueError(f"input_dim must be at least {needed} (tasks + 1{' + clusters' if clusters else ''}), got {input_dim}")
    _check_sizes(samples, noise, sin_terms)
    g = torch.Generator().manual_seed(seed)
    w = (clustered_task_weights(correlation, across, tasks, clusters, input_dim, scale, g) if clusters
         else task_weights(correlation, tasks, input_dim, scale, g))
    return _mmoe_labels(w, [f"y{t + 1}" for t in range(tasks)], samples, sin_terms, noise, g, val, test, seed)


def _check_sizes(samples: int, noise: float, sin_terms: int) -> None:
    if samples < 20:
        raise ValueError(f"samples must be at least 20, got {samples}")
    if noise < 0 or sin_terms < 0:
        raise ValueError("noise and sin_terms must be >= 0")


def _mmoe_labels(w: torch.Tensor, names: list[str], samples: int, sin_terms: int, noise: float, g: torch.Generator,
                 val: float, test: float, seed: int) -> Dataset:
    """The MMoE construction for task weight rows ``w``: y_t = w_t.x + sum_i sin(alpha_i w_t.x + beta_i) + noise."""
    alpha = torch.randn(sin_terms, generator=g, dtype=torch.float64)
    beta = torch.randn(sin_terms, generator=g, dtype=torch.float64)
    x = torch.randn(samples, w.shape[1], generator=g, dtype=torch.float64)
    linear = x @ w.T  # (samples, tasks)
    y = linear + torch.sin(linear.unsqueeze(-1) * alpha + beta).sum(-1) + noise * torch.randn(samples, len(names), generator=g, dtype=torch.float64)
    problem = Problem((w.shape[1],), tuple(Task(n, "regression", "mse") for n in names))
    return make_dataset(problem, x.float(), {n: y[:, t].float() for t, n in enumerate(names)}, val, test, seed)


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
    """The MMoE benchmark with groups of tasks of different relatedness.

    Group g has its own shared direction u_g and correlation p_g; task t of group g has the
    weight vector w_t = c (sqrt(p_g) u_g + sqrt(1 - p_g) u_t), all u orthonormal: two tasks of
    group g have cosine p_g, two tasks of different groups cosine 0. Labels as in
    ``synthetic_correlated``; tasks are named ``g<group>_t<index>``.
    """
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
    _check_sizes(samples, noise, sin_terms)
    g = torch.Generator().manual_seed(seed)
    w = group_task_weights(list(map(float, group_correlations)), tasks_per_group, input_dim, scale, g)
    names = [f"g{group + 1}_t{k + 1}" for group in range(len(group_correlations)) for k in range(tasks_per_group)]
    return _mmoe_labels(w, names, samples, sin_terms, noise, g, val, test, seed)


MULTI_DIGITS_DEFAULTS = {
    "samples": 6000,
    "overlap": 0.0,      # fraction of a digit's width the two digits share: 0 side by side, 1 on top of each other
    "shift": 1,          # each digit moves by up to this many pixels right and down
    "noise": 0.0,        # standard deviation of Gaussian pixel noise (pixels lie in [0, 1])
    "seed": 0,
    "tasks": ["left", "right"],  # any of left, right (10 classes each) and sum (regression: left + right)
    "val": 0.15,
    "test": 0.15,
}
MULTI_DIGITS_TASKS = {
    "left": Task("left", "multiclass", "accuracy", 10),
    "right": Task("right", "multiclass", "accuracy", 10),
    "sum": Task("sum", "regression", "mse"),
}
DIGIT = 8  # side of a source image


def compose_digits(images: torch.Tensor, left: torch.Tensor, right: torch.Tensor, overlap: float, shift: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Canvases (n, 1, 8 + shift, offset + 8 + shift) holding ``images[left]`` and ``images[right]``.

    The right digit starts ``offset = 8 - round(8 * overlap)`` columns after the left one;
    each digit moves by a random shift in [0, shift] on both axes; where they overlap the
    brighter pixel wins (the pixel-wise maximum, as in MultiMNIST).
    """
    offset = DIGIT - round(DIGIT * overlap)
    n = left.shape[0]
    canvas = torch.zeros(n, DIGIT + shift, offset + DIGIT + shift)
    moves = torch.randint(0, shift + 1, (n, 2, 2), generator=generator)  # (sample, digit, [dy, dx])
    for digit, (index, start) in enumerate(((left, 0), (right, offset))):
        for dy in range(shift + 1):
            for dx in range(shift + 1):
                rows = ((moves[:, digit, 0] == dy) & (moves[:, digit, 1] == dx)).nonzero().squeeze(1)
                region = canvas[rows, dy : dy + DIGIT, start + dx : start + dx + DIGIT]
                canvas[rows, dy : dy + DIGIT, start + dx : start + dx + DIGIT] = torch.maximum(region, images[index[rows]])
    return canvas.unsqueeze(1)


def multi_digits(samples: int, overlap: float, shift: int, noise: float, seed: int, tasks: list[str], val: float, test: float) -> Dataset:
    """Pairs of scikit-learn 8x8 digits; tasks: the left digit, the right digit, optionally their sum.

    The source images are split into train/val/test pools first, so no source digit of a
    validation or test image is seen in training (MultiMNIST builds its test set from MNIST's).
    """
    from sklearn.datasets import load_digits

    if not isinstance(tasks, list) or not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(MULTI_DIGITS_TASKS):
        raise ValueError(f"tasks must be a list of distinct names among {', '.join(MULTI_DIGITS_TASKS)}, got {tasks!r}")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must lie in [0, 1], got {overlap!r}")
    if not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be an integer >= 0, got {shift!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if samples < 20:
        raise ValueError(f"samples must be at least 20, got {samples}")
    source = load_digits()
    images = torch.tensor(source.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(source.target)
    g = torch.Generator().manual_seed(seed)
    pools = split_rows(len(images), val, test, seed)  # train, val, test source digits
    counts = [samples - round(samples * val) - round(samples * test), round(samples * val), round(samples * test)]
    splits = []
    for pool, count in zip(pools, counts):
        left = pool[torch.randint(len(pool), (count,), generator=g)]
        right = pool[torch.randint(len(pool), (count,), generator=g)]
        x = compose_digits(images, left, right, overlap, shift, g)
        x = x + noise * torch.randn(x.shape, generator=g)
        targets = {"left": labels[left], "right": labels[right], "sum": (labels[left] + labels[right]).float()}
        splits.append(Split(x, {name: targets[name] for name in tasks}))
    problem = Problem(tuple(splits[0].x.shape[1:]), tuple(MULTI_DIGITS_TASKS[name] for name in tasks))
    return Dataset(problem, *splits)


@hookimpl
def register_datasets(register):
    register("synthetic_groups", synthetic_groups, GROUPS_DEFAULTS,
             "MMoE synthetic benchmark with groups of tasks of different relatedness (within-group cosine per group, 0 across)")
    register("synthetic_correlated", synthetic_correlated, SYNTHETIC_DEFAULTS,
             "MMoE synthetic benchmark: regression tasks whose correlation is controlled")
    register("multi_digits", multi_digits, MULTI_DIGITS_DEFAULTS,
             "two 8x8 digits side by side or overlapped (MultiMNIST construction); tasks left, right, optionally sum")
