"""The Dataset type: train/val/test splits of one Problem, with optional per-task label masks and sample weights."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import torch

from ..errors import SpaceError
from .problem import Problem


@dataclass
class Split:
    """Inputs ``x`` (N x input_shape), one target tensor per task, optional label masks and sample weights.

    ``mask[task]`` is a bool tensor of length N; False marks a missing label (not an error:
    the task's loss and metric skip that row). ``weight[task]`` is a float tensor of length
    N of non-negative per-row weights of that task's loss and metric (absent: every row 1).
    """

    x: torch.Tensor
    y: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]

    def labelled(self, task: str) -> torch.Tensor | None:
        """The label mask of ``task``, or None when every row is labelled."""
        return self.mask.get(task)

    def weights(self, task: str) -> torch.Tensor | None:
        """The per-row sample weights of ``task``, or None when every row weighs 1."""
        return self.weight.get(task)

    def subset(self, index: torch.Tensor) -> "Split":
        """The rows at ``index`` (a long tensor)."""
        return Split(
            self.x[index],
            {k: v[index] for k, v in self.y.items()},
            {k: v[index] for k, v in self.mask.items()},
            {k: v[index] for k, v in self.weight.items()},
        )

    def partition(self, fraction: float, generator: torch.Generator | None = None) -> tuple["Split", "Split"]:
        """Two disjoint random parts of this split: about ``fraction`` of the rows, and the rest.

        For schedules that fit different parameters on different data (e.g. weights on one
        part, architecture parameters on the other). Each part keeps at least one row.
        """
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
        if len(self) < 2:
            raise ValueError(f"cannot partition a split of {len(self)} row(s)")
        order = torch.randperm(len(self), generator=generator).to(self.x.device)
        cut = min(max(1, round(len(self) * fraction)), len(self) - 1)
        return self.subset(order[:cut]), self.subset(order[cut:])

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator["Split"]:
        """Minibatches as Splits; slicing tensors directly is much faster than a DataLoader here."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                sl = slice(start, start + batch_size)
                yield Split(self.x[sl], {k: v[sl] for k, v in self.y.items()}, {k: v[sl] for k, v in self.mask.items()},
                            {k: v[sl] for k, v in self.weight.items()})
            else:
                yield self.subset(order[start : start + batch_size])

    def to(self, device: torch.device | str) -> "Split":
        return Split(
            self.x.to(device),
            {k: v.to(device) for k, v in self.y.items()},
            {k: v.to(device) for k, v in self.mask.items()},
            {k: v.to(device) for k, v in self.weight.items()},
        )


@dataclass
class Dataset:
    """A Problem with its train, val and test splits."""

    problem: Problem
    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.problem, self.train.to(device), self.val.to(device), self.test.to(device))

    def labelled_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {task: rows with that task's label}}``."""
        counts = {}
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            counts[name] = {t: int(m.sum()) if (m := split.labelled(t)) is not None else len(split) for t in self.problem.task_names}
        return counts


def funnel_mask(problem: Problem, split: Split, task: str) -> torch.Tensor | None:
    """The label mask of funnel task ``task`` in ``split``: its own mask, and False wherever its parent is not labelled positive.

    None for a task without a parent (its mask is unchanged). Parents are taken as they are
    in ``split`` (apply in :meth:`Problem.funnel_order`, so a parent's own funnel mask comes first).
    """
    parent = problem.task(task).after
    if parent is None:
        return split.labelled(task)
    positive = split.y[parent].reshape(-1) == 1
    parent_mask = split.labelled(parent)
    if parent_mask is not None:
        positive = positive & parent_mask
    own = split.labelled(task)
    return positive if own is None else own & positive


def apply_funnel_masks(dataset: Dataset) -> Dataset:
    """Mask every funnel task's label where its parent is negative or unlabelled, in every split (in place; idempotent).

    This is the one place a funnel is turned into missing labels, so every strategy (and
    every metric) sees a funnel task only on the rows where its parent happened.
    """
    problem = dataset.problem
    for split in (dataset.train, dataset.val, dataset.test):
        for name in problem.funnel_order():
            if problem.task(name).after is not None:
                split.mask[name] = funnel_mask(problem, split, name)
    return dataset


def target_statistics(split: Split, task: str) -> tuple[float, float]:
    """The mean and (population) standard deviation of ``task``'s labelled targets in ``split``; a constant target's std is 1."""
    y = split.y[task].reshape(-1).double()
    mask = split.labelled(task)
    if mask is not None:
        y = y[mask.reshape(-1).bool()]
    if y.numel() == 0:
        raise SpaceError(f"tasks.{task}", "no labelled rows in the train split, so its target cannot be standardised")
    mean, std = float(y.mean()), float(y.std(correction=0))
    return mean, std if std > 1e-12 * max(1.0, abs(mean)) else 1.0


def standardize_targets(dataset: Dataset, keep: Iterable[str] = ()) -> Dataset:
    """Standardise every regression target not in ``keep`` with its training split's mean and std (in place).

    The statistics come from the labelled training rows only (missing labels, funnel-masked
    rows included, are left out; sample weights are not applied), so nothing of the
    validation or test rows leaks into training. Every split's target becomes
    ``(y - mean) / std`` and the task records ``target_mean``/``target_std``, so models
    train and compute their loss on that scale while :meth:`Task.evaluate` and
    ``predict`` give the target's own units. A task already standardised is left as it is.
    """
    keep = set(keep)
    tasks = []
    for task in dataset.problem.tasks:
        if task.kind == "regression" and task.name not in keep and not task.standardised:
            mean, std = target_statistics(dataset.train, task.name)
            task = replace(task, target_mean=mean, target_std=std)
            for split in (dataset.train, dataset.val, dataset.test):
                split.y[task.name] = task.standardise(split.y[task.name])
        tasks.append(task)
    dataset.problem = replace(dataset.problem, tasks=tuple(tasks))
    return dataset


def split_rows(n: int, val: float, test: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffled row indices for train / val / test with the given fractions."""
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"split fractions must be in (0, 1) and sum below 1, got val={val}, test={test}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = max(1, round(n * val)), max(1, round(n * test))
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def make_dataset(problem: Problem, x: torch.Tensor, y: dict[str, torch.Tensor], val: float, test: float, seed: int) -> Dataset:
    """Split full tensors into a Dataset."""
    train_idx, val_idx, test_idx = split_rows(x.shape[0], val, test, seed)
    full = Split(x, y)
    return apply_funnel_masks(Dataset(problem, full.subset(train_idx), full.subset(val_idx), full.subset(test_idx)))
