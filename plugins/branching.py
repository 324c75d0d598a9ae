"""Branching: tree-structured hard sharing, Learning to Branch, and task groups (docs/methods.md, "Branched networks and Learning to Branch", "Task affinity and grouping (TAG)").

**Trees.** A backbone has a stem and L blocks. At every block l each task belongs to a
group; the tasks of a group share that block's weights, and groups only split going up:
tasks together at block l were together at every block below (a tree, as in branched
multi-task networks, Vandenhende et al., BMVC 2020, and Learning to Branch, Guo et al.,
ICML 2020). The stem travels with block 0's groups. Formally a tree is a chain of
partitions P_0 <= P_1 <= ... <= P_{L-1} of the tasks, each refining the one below; its
*branches* are the groups of the last block, |P_{L-1}|. ``hard_sharing`` with split depth
d is the tree P_l = {all tasks} for l < d and singletons above.

Written form (the ``tree`` knob, the ``model/tree`` tag of a trial, and what
``learning_to_branch`` records): one list per block of the groups at that block, each a
list of task names, e.g. for tasks a, b, c over 3 blocks::

    [[[a, b, c]], [[a, b], [c]], [[a], [b], [c]]]

Canonical form: groups ordered by their first task in the problem's task order, tasks in
that order inside a group; trees that differ only by how groups are labelled have one
canonical form, so the trials' tags count distinct trees.

**Searching trees.** ``tree_code`` (a float in [0, 1)) indexes the canonical trees whose
number of branches is at most ``max_branches``: index ``floor(tree_code * N)`` of the N such
trees, unranked by counting (no list of trees is ever built; N grows quickly, e.g. over
10^6 trees for 8 tasks and 3 blocks). Every tree is reachable, each exactly once, and a
random sampler draws trees uniformly. The order groups trees by their number of branches
first (fewer branches, fewer parameters, at low codes), then by the partition of the lowest
block, so a model-based sampler such as TPE can learn where the good trees lie. A space may
instead fix ``tree`` or give a ``{choice: [...]}`` of written trees (then ``tree_code`` is
ignored; fix it to 0.0 so the sampler does not spend a dimension on it). Each group's block
runs once per batch on its parent group's activation: a shared prefix is never recomputed.

**Learning to Branch** (Guo, Lee and Ulbricht, ICML 2020). A supernet with K nodes per
block (K = the number of tasks unless ``nodes`` is set), each node its own copy of the
block (nodes of block 0 also own a stem). Node j of block l >= 1 holds logits theta_{l,j}
over the K nodes of block l - 1, and each task's head holds logits over the nodes of the
last block. In training every child takes one parent, sampled afresh every forward by the
straight-through Gumbel-softmax estimator as in the paper: ``w = gumbel_softmax(theta, tau,
hard=True)`` is one-hot in the forward pass (the child's input is its sampled parent's
output ``sum_i w_i h_i = h_parent``), and the backward pass takes the gradient of the soft
sample, so the weights and the logits are trained jointly, end to end, on the weighted task
losses. tau is annealed geometrically from ``tau0`` in the first search epoch to ``tau_min``
in the last, ``tau_e = tau0 (tau_min / tau0)^(e / (search_epochs - 1))`` (with the defaults
5 -> 0.1 over 10 epochs), so the soft samples behind the gradients become near-discrete
within the search (the schedule is this project's choice). After
``search_epochs`` every child takes its argmax parent; that tree is trained from scratch
(the supernet's initial weights are restored) with the trainer's loop and is the trial's
model; only the nodes some task reaches are computed, each once per batch. The learned
tree is recorded in the written form above (tag ``model/tree``) so it can be pasted into
a ``branching`` space. The logits have their own learning rate (``arch_lr``) and no weight
decay (a choice: the paper does not give it for this setting).

LibMTL's ``LTB.py`` (a ResNet reimplementation) differs from the paper in ways not
followed here: it never derives or retrains the argmax tree (the supernet, sampled anew
each forward, is the final model); its schedule is ``tau = epochs / 20 / sqrt(epoch + 1)``; a warm-up (the
first 1 % of epochs) sums every parent's output instead of mixing them; its first layer
is one node per task with no parent choice, and its logits are initialised to ones and
trained by the weights' optimiser.

**Task groups** (the selection of TAG, Fifty et al., NeurIPS 2021, and Standley et al.,
ICML 2020): one network per group of a partition of the tasks, hard sharing inside a
group up to ``shared_depth``. The partition is a searched knob, e.g. pasted from
``mtl-search groups``: ``{partition: {choice: [[[a, b], [c, d]], [[a, b, c], [d]]]}}``;
``validate`` checks that every partition covers every task exactly once. It is the tree
P_l = partition for l < shared_depth, singletons above.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtl_search import (
    Backbone,
    Default,
    Float,
    Int,
    Knob,
    MultiTaskModel,
    Problem,
    SharingMap,
    SpaceError,
    Strategy,
    Trainer,
    copy_state,
    count_parameters,
    hookimpl,
    knob_bounds,
    make_tower,
)

SAMPLED = "sampled"
ALL_TOGETHER = "all"

Labels = list[tuple[int, ...]]  # labels[l][t]: the group of task t at block l (canonical: numbered by first task)


# --- trees: canonical form, written form, counting and unranking ------------------------------
def canonical(labels: Sequence[Sequence[int]]) -> Labels:
    """Relabel each block's groups by first occurrence in task order (the canonical labels)."""
    out = []
    for row in labels:
        seen: dict[Any, int] = {}
        out.append(tuple(seen.setdefault(g, len(seen)) for g in row))
    return out


def check_labels(labels: Sequence[Sequence[int]], tasks: int) -> None:
    """Raise ValueError unless ``labels`` is a tree over ``tasks`` tasks: groups only split going up."""
    for level, row in enumerate(labels):
        if len(row) != tasks:
            raise ValueError(f"block {level} assigns {len(row)} tasks, expected {tasks}")
        if level:
            parent_of: dict[int, int] = {}
            for t, group in enumerate(row):
                if parent_of.setdefault(group, labels[level - 1][t]) != labels[level - 1][t]:
                    raise ValueError(f"block {level} puts tasks in one group that were apart at block {level - 1}: "
                                     "groups may only split going up")


def written(labels: Labels, tasks: Sequence[str]) -> list[list[list[str]]]:
    """The written form of a tree: per block, the groups as lists of task names (canonical order)."""
    out = []
    for row in canonical(labels):
        groups: list[list[str]] = [[] for _ in range(max(row) + 1)]
        for t, g in enumerate(row):
            groups[g].append(tasks[t])
        out.append(groups)
    return out


def parse_tree(tree: Any, tasks: Sequence[str], depth: int) -> Labels:
    """Canonical labels of a written tree; ValueError naming what is wrong."""
    if not isinstance(tree, list) or len(tree) != depth:
        raise ValueError(f"a tree lists the groups of each of the {depth} blocks, got {tree!r}")
    index = {name: t for t, name in enumerate(tasks)}
    labels = []
    for level, groups in enumerate(tree):
        row = [-1] * len(tasks)
        if not isinstance(groups, list):
            raise ValueError(f"block {level}: expected a list of groups, got {groups!r}")
        for g, group in enumerate(groups):
            for name in group if isinstance(group, list) else [group]:
                if name not in index:
                    raise ValueError(f"block {level}: unknown task {name!r}; tasks are {', '.join(tasks)}")
                if row[index[name]] != -1:
                    raise ValueError(f"block {level}: task {name!r} is in two groups")
                row[index[name]] = g
        missing = [tasks[t] for t, g in enumerate(row) if g == -1]
        if missing:
            raise ValueError(f"block {level}: tasks {', '.join(missing)} are in no group")
        labels.append(tuple(row))
    check_labels(labels, len(tasks))
    return canonical(labels)


def set_partitions(items: Sequence[int]) -> Iterator[list[list[int]]]:
    """Every partition of ``items``, in the lexicographic order of restricted growth strings."""
    n = len(items)

    def grow(i: int, labels: list[int], used: int) -> Iterator[list[int]]:
        if i == n:
            yield labels
            return
        for label in range(used + 1 if i else 1):
            yield from grow(i + 1, labels + [label], max(used, label + 1))

    for labels in grow(0, [], 0):
        groups: list[list[int]] = [[] for _ in range(max(labels) + 1 if labels else 0)]
        for item, label in zip(items, labels):
            groups[label].append(item)
        yield groups


class TreeSpace:
    """The canonical trees over ``tasks`` tasks and ``depth`` blocks with at most ``max_branches`` branches.

    ``count`` is how many there are; ``unrank(r)`` is the r-th (0-based), without listing them.
    Counting: f(n, l)[k], the number of subtrees of a group of n tasks from block l with k
    leaves, is the sum over partitions of the group at block l of the product of its parts'
    f(|part|, l + 1) (polynomials in the leaves, truncated at ``max_branches``); f(n, L) = x.
    """

    def __init__(self, tasks: int, depth: int, max_branches: int | None = None):
        if tasks < 1 or depth < 1:
            raise ValueError(f"a tree needs at least one task and one block, got {tasks} tasks, {depth} blocks")
        self.tasks, self.depth = tasks, depth
        self.max_branches = tasks if not max_branches else min(max_branches, tasks)
        self._poly = lru_cache(maxsize=None)(self._poly_uncached)
        self._product = lru_cache(maxsize=None)(self._product_uncached)

    def _poly_uncached(self, n: int, level: int) -> tuple[int, ...]:
        K = self.max_branches
        if level == self.depth:
            return tuple(1 if k == 1 else 0 for k in range(K + 1))
        total = [0] * (K + 1)
        for part in set_partitions(range(n)):
            for k, c in enumerate(self._product(tuple(sorted(len(b) for b in part)), level + 1)):
                total[k] += c
        return tuple(total)

    def _product_uncached(self, sizes: tuple[int, ...], level: int) -> tuple[int, ...]:
        K = self.max_branches
        out = [1] + [0] * K
        for n in sizes:
            p = self._poly(n, level)
            new = [0] * (K + 1)
            for a, ca in enumerate(out):
                if ca:
                    for b in range(K + 1 - a):
                        new[a + b] += ca * p[b]
            out = new
        return tuple(out)

    @property
    def count(self) -> int:
        return sum(self._poly(self.tasks, 0))

    def index_of(self, code: float) -> int:
        """The index a ``tree_code`` in [0, 1] selects."""
        return min(int(math.floor(code * self.count)), self.count - 1)

    def unrank(self, r: int) -> Labels:
        """The r-th canonical tree (0 <= r < count) as canonical labels."""
        if not 0 <= r < self.count:
            raise IndexError(f"tree index {r} outside [0, {self.count})")
        poly = self._poly(self.tasks, 0)
        for k in range(1, self.max_branches + 1):
            if r < poly[k]:
                break
            r -= poly[k]
        labels = [[0] * self.tasks for _ in range(self.depth)]
        self._unrank_group(list(range(self.tasks)), 0, k, r, labels)
        return canonical(labels)

    def _unrank_group(self, members: list[int], level: int, k: int, r: int, labels: list[list[int]]) -> None:
        if level == self.depth:
            return
        for part in set_partitions(members):
            weight = self._product(tuple(sorted(len(b) for b in part)), level + 1)[k]
            if r < weight:
                break
            r -= weight
        for block in part:
            for t in block:
                labels[level][t] = block[0]
        self._unrank_blocks(part, level, k, r, labels)

    def _unrank_blocks(self, blocks: list[list[int]], level: int, k: int, r: int, labels: list[list[int]]) -> None:
        if not blocks:
            return
        first, rest = blocks[0], blocks[1:]
        rest_poly = self._product(tuple(sorted(len(b) for b in rest)), level + 1)
        first_poly = self._poly(len(first), level + 1)
        for k1 in range(1, k + 1):
            weight = first_poly[k1] * rest_poly[k - k1]
            if r < weight:
                break
            r -= weight
        r1, r2 = divmod(r, rest_poly[k - k1])
        self._unrank_group(first, level + 1, k1, r1, labels)
        self._unrank_blocks(rest, level, k - k1, r2, labels)


def hard_sharing_tree(tasks: int, depth: int, shared_depth: int) -> Labels:
    """The tree of hard sharing split at ``shared_depth``: one group below it, singletons from it up."""
    return canonical([tuple(0 for _ in range(tasks)) if level < shared_depth else tuple(range(tasks)) for level in range(depth)])


def partition_tree(groups: Sequence[Sequence[int]], tasks: int, depth: int, shared_depth: int) -> Labels:
    """The tree of one hard-sharing network per group, shared up to ``shared_depth``."""
    group_of = {t: g for g, members in enumerate(groups) for t in members}
    return canonical([tuple(group_of[t] for t in range(tasks)) if level < shared_depth else tuple(range(tasks))
                      for level in range(depth)])


# --- the tree model ---------------------------------------------------------------------------
class TreeNetwork(nn.Module):
    """A stem and blocks per group of a tree; ``forward`` gives each task's activation after the last block.

    Group g of block l reads the activation of its parent group at block l - 1 (block 0 reads
    its own stem's output); each group's module runs once per forward.
    """

    def __init__(self, backbone: Backbone, labels: Labels):
        super().__init__()
        self.labels = labels
        self.stems = nn.ModuleDict({f"g{g}": backbone.new_stem() for g in sorted(set(labels[0]))})
        self.blocks = nn.ModuleList(nn.ModuleDict({f"g{g}": backbone.new_block(level) for g in sorted(set(row))})
                                    for level, row in enumerate(labels))

    def parent(self, level: int, group: int) -> int:
        """The group at block ``level - 1`` that group ``group`` of block ``level`` reads."""
        return self.labels[level - 1][self.labels[level].index(group)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = {g: self.stems[f"g{g}"](x) for g in sorted(set(self.labels[0]))}
        for level, row in enumerate(self.labels):
            h = {g: self.blocks[level][f"g{g}"](h[g if level == 0 else self.parent(level, g)]) for g in sorted(set(row))}
        return [h[g] for g in self.labels[-1]]

    def task_modules(self, task: int) -> list[nn.Module]:
        """The stem and blocks on the path of ``task``."""
        return [self.stems[f"g{self.labels[0][task]}"]] + [self.blocks[l][f"g{row[task]}"] for l, row in enumerate(self.labels)]

    def shared_modules(self) -> list[nn.Module]:
        """The stems and blocks of groups with more than one task."""
        out = [self.stems[f"g{g}"] for g in set(self.labels[0]) if self.labels[0].count(g) > 1]
        for level, row in enumerate(self.labels):
            out += [self.blocks[level][f"g{g}"] for g in sorted(set(row)) if row.count(g) > 1]
        return out


def tree_maps(labels: Labels, tasks: list[str]) -> dict[str, SharingMap]:
    """The task x block group matrix (group number / (groups - 1)) and the task x task fraction of blocks shared."""
    depth = len(labels)
    groups = torch.tensor([[row[t] / max(max(row), 1) for row in labels] for t in range(len(tasks))], dtype=torch.float32)
    shared = torch.tensor([[sum(row[s] == row[t] for row in labels) / depth for t in range(len(tasks))] for s in range(len(tasks))])
    return {"groups": SharingMap(groups, tasks, [f"block{i}" for i in range(depth)]),
            "shared_blocks": SharingMap(shared, tasks, tasks)}


def tree_metrics(labels: Labels) -> dict[str, float]:
    return {"branches": float(len(set(labels[-1]))), "block_copies": float(sum(len(set(row)) for row in labels)),
            "stems": float(len(set(labels[0])))}


class BranchingModel(MultiTaskModel):
    """Tree-structured hard sharing: a ``TreeNetwork``, then per task the backbone's features and a tower."""

    def __init__(self, problem: Problem, backbone: Backbone, labels: Labels, tower_width: int):
        super().__init__(problem)
        self.tasks = problem.task_names
        check_labels(labels, len(self.tasks))
        if len(labels) != backbone.depth:
            raise ValueError(f"the tree has {len(labels)} blocks, the backbone {backbone.depth}")
        self.labels = canonical(labels)
        self.tree = TreeNetwork(backbone, self.labels)
        self.features = nn.ModuleDict({t: backbone.new_features() for t in self.tasks})
        self.towers = nn.ModuleDict({t.name: make_tower(backbone.out_features, t.output_dim, [tower_width]) for t in problem.tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: self.towers[t](self.features[t](h)) for t, h in zip(self.tasks, self.tree(x))}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.tree.shared_modules() for p in module.parameters()]

    def written_tree(self) -> list[list[list[str]]]:
        return written(self.labels, self.tasks)

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        return tree_maps(self.labels, self.tasks)

    def trial_metrics(self) -> dict[str, float]:
        return tree_metrics(self.labels)

    def trial_tags(self) -> dict[str, str]:
        return {"tree": json.dumps(self.written_tree())}


# --- knobs that hold written trees and partitions ----------------------------------------------
class _WrittenValue(Knob):
    """Accepts any constant or ``{choice: [...]}`` of lists (the structure is checked by the strategy)."""

    what = "a written tree"

    def narrow(self, override: Knob, path: str) -> Knob:
        values = override.values()
        if values is None:
            raise SpaceError(path, f"expected {self.what} or {{choice: [...]}} of them, got {override.describe()}")
        for value in values:
            if not isinstance(value, (list, tuple)):
                raise SpaceError(path, f"expected {self.what} (a list), got {value!r}")
        return override

    def describe(self) -> str:
        return self.what


class TreeValue(_WrittenValue):
    what = "a written tree: per block a list of groups of task names"


class PartitionValue(_WrittenValue):
    what = "a partition of the tasks: a list of groups of task names"


def _values(knob: Knob) -> list[Any]:
    """The constant(s) a fixed or choice knob allows, as plain lists."""
    thaw = lambda v: [thaw(i) for i in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    return [thaw(v) for v in knob.values() or []]


def _fixed_depth(backbone: dict[str, Knob]) -> int | None:
    """The backbone's depth when the space fixes it (a ``depth`` knob or a fixed channel list)."""
    if "depth" in backbone:
        low, high = knob_bounds(backbone["depth"], backbone)
        return low if low == high else None
    if "channels" in backbone and backbone["channels"].is_fixed:
        return len(backbone["channels"].values()[0])
    return None


class Branching(Strategy):
    name = "branching"
    family = "branching"
    description = "tree-structured hard sharing: at every block each group of tasks shares it, groups only split going up"
    declares_shared_parameters = True
    knobs = {
        "tree": Default(SAMPLED, TreeValue()),
        "tree_code": Float(0.0, 1.0, minimum=0.0, maximum=1.0),
        "max_branches": Default(0, Int(0, 64, minimum=0)),
        "tower_width": Int(4, 64, log=True, minimum=1),
    }

    def check(self, knobs: dict[str, Knob], backbone: dict[str, Knob], path: str) -> None:
        depth = _fixed_depth(backbone)
        for tree in _values(knobs["tree"]):
            if tree == SAMPLED:
                continue
            if not isinstance(tree, list) or (depth is not None and len(tree) != depth):
                raise SpaceError(f"{path}.tree", f"a tree lists the groups of each of the backbone's {depth} blocks, got {tree!r}")

    def check_problem(self, knobs: dict[str, Knob], problem: Problem, path: str) -> None:
        for tree in _values(knobs["tree"]):
            if tree != SAMPLED:
                try:
                    parse_tree(tree, problem.task_names, len(tree))
                except ValueError as exc:
                    raise SpaceError(f"{path}.tree", f"{exc} (in {tree!r})") from None

    def labels(self, problem: Problem, depth: int, params: dict[str, Any]) -> Labels:
        """The canonical tree a configuration selects."""
        tree = params.get("tree", SAMPLED)
        if tree != SAMPLED:
            return parse_tree(tree, problem.task_names, depth)
        space = TreeSpace(len(problem.tasks), depth, params.get("max_branches", 0))
        return space.unrank(space.index_of(float(params["tree_code"])))

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return BranchingModel(problem, backbone, self.labels(problem, backbone.depth, params), params["tower_width"])


class TaskGroups(Strategy):
    name = "task_groups"
    family = "branching"
    description = "one hard-sharing network per group of a (searched) partition of the tasks"
    declares_shared_parameters = True
    knobs = {
        "partition": Default(ALL_TOGETHER, PartitionValue()),
        "shared_depth": Int(0, "depth", minimum=0),
        "tower_width": Int(4, 64, log=True, minimum=1),
    }

    def check_problem(self, knobs: dict[str, Knob], problem: Problem, path: str) -> None:
        for partition in _values(knobs["partition"]):
            if partition != ALL_TOGETHER:
                try:
                    parse_partition(partition, problem.task_names)
                except ValueError as exc:
                    raise SpaceError(f"{path}.partition", str(exc)) from None

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        partition = params.get("partition", ALL_TOGETHER)
        groups = [list(range(len(problem.tasks)))] if partition == ALL_TOGETHER else parse_partition(partition, problem.task_names)
        depth = params["shared_depth"]
        if not 0 <= depth <= backbone.depth:
            raise ValueError(f"shared_depth {depth} must lie in [0, {backbone.depth}] (the backbone's depth)")
        return BranchingModel(problem, backbone, partition_tree(groups, len(problem.tasks), backbone.depth, depth), params["tower_width"])


def parse_partition(partition: Any, tasks: Sequence[str]) -> list[list[int]]:
    """Task indices per group of a written partition; ValueError unless it covers every task exactly once."""
    if not isinstance(partition, list) or not partition or not all(isinstance(g, list) and g for g in partition):
        raise ValueError(f"a partition is a non-empty list of non-empty groups of task names, got {partition!r}")
    index = {name: t for t, name in enumerate(tasks)}
    seen: dict[str, int] = {}
    for group in partition:
        for name in group:
            if name not in index:
                raise ValueError(f"unknown task {name!r} in partition {partition!r}; tasks are {', '.join(tasks)}")
            seen[name] = seen.get(name, 0) + 1
    twice = [n for n, c in seen.items() if c > 1]
    missing = [n for n in tasks if n not in seen]
    if twice or missing:
        why = "; ".join(filter(None, [twice and f"in more than one group: {', '.join(twice)}",
                                      missing and f"in no group: {', '.join(missing)}"]))
        raise ValueError(f"partition {partition!r} must cover every task exactly once ({why})")
    return [[index[n] for n in group] for group in partition]


# --- Learning to Branch ---------------------------------------------------------------------------
class LearningToBranchModel(MultiTaskModel):
    """The LTB supernet: K nodes per block, each child sampling one parent (straight-through Gumbel-softmax); or, once decided, the argmax tree."""

    def __init__(self, problem: Problem, backbone: Backbone, nodes: int, tower_width: int, tau0: float, tau_min: float,
                 search_epochs: int, arch_lr: float):
        super().__init__(problem)
        self.tasks = problem.task_names
        self.depth = backbone.depth
        self.nodes = nodes or len(self.tasks)
        K, L, T = self.nodes, self.depth, len(self.tasks)
        self.stems = nn.ModuleList(backbone.new_stem() for _ in range(K))
        self.blocks = nn.ModuleList(nn.ModuleList(backbone.new_block(level) for _ in range(K)) for level in range(L))
        self.features = nn.ModuleDict({t: backbone.new_features() for t in self.tasks})
        self.towers = nn.ModuleDict({t.name: make_tower(backbone.out_features, t.output_dim, [tower_width]) for t in problem.tasks})
        self.parent_logits = nn.Parameter(torch.zeros(max(L - 1, 0), K, K))  # [l - 1, child j of block l, parent i of block l - 1]
        self.head_logits = nn.Parameter(torch.zeros(T, K))  # [task, node of the last block]
        self.register_buffer("parents", torch.zeros(max(L - 1, 0), K, dtype=torch.long))
        self.register_buffer("head_parents", torch.zeros(T, dtype=torch.long))
        self.register_buffer("decided", torch.tensor(False))
        self.temperature, self.tau0, self.tau_min = tau0, tau0, tau_min
        self.search_epochs, self.arch_lr = search_epochs, arch_lr
        self.searching = False

    # --- the tree -----------------------------------------------------------------------------
    def argmax_parents(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parent_logits.argmax(-1), self.head_logits.argmax(-1)

    def current_parents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The decided parents, else the argmax of the logits."""
        return (self.parents, self.head_parents) if bool(self.decided) else self.argmax_parents()

    def decide(self) -> None:
        """Fix every child's parent to its argmax: from now on the model is that tree."""
        parents, heads = self.argmax_parents()
        self.parents.copy_(parents)
        self.head_parents.copy_(heads)
        self.decided.fill_(True)
        self.searching = False

    def node_paths(self) -> list[list[int]]:
        """Per task, the node it passes at each block (under the current parents)."""
        parents, heads = (p.tolist() for p in self.current_parents())
        paths = []
        for t in range(len(self.tasks)):
            path = [heads[t]]
            for level in range(self.depth - 1, 0, -1):
                path.append(parents[level - 1][path[-1]])
            paths.append(path[::-1])
        return paths

    def labels(self) -> Labels:
        paths = self.node_paths()
        return canonical([tuple(path[level] for path in paths) for level in range(self.depth)])

    def written_tree(self) -> list[list[list[str]]]:
        return written(self.labels(), self.tasks)

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        activations = self._relaxed(x) if self.searching and self.training else self._hard(x)
        return {t: self.towers[t](self.features[t](h)) for t, h in zip(self.tasks, activations)}

    def mixing_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One straight-through Gumbel-softmax sample of every child's parent (blocks 1.., then the heads).

        One-hot in value (the sampled parent); its gradient is that of the soft sample at ``temperature``.
        """
        parents = F.gumbel_softmax(self.parent_logits, tau=self.temperature, hard=True, dim=-1) if self.depth > 1 else self.parent_logits
        return parents, F.gumbel_softmax(self.head_logits, tau=self.temperature, hard=True, dim=-1)

    def search_temperature(self, search_epoch: int) -> float:
        """tau of search epoch ``search_epoch`` (0-based): geometric from ``tau0`` at the first to ``tau_min`` at the last."""
        if self.search_epochs < 2:
            return self.tau_min
        return self.tau0 * (self.tau_min / self.tau0) ** (min(search_epoch, self.search_epochs - 1) / (self.search_epochs - 1))

    def _relaxed(self, x: torch.Tensor) -> list[torch.Tensor]:
        parents, heads = self.mixing_weights()
        h = torch.stack([block(stem(x)) for stem, block in zip(self.stems, self.blocks[0])])  # (K, batch, ...)
        for level in range(1, self.depth):
            mixed = torch.einsum("ji,i...->j...", parents[level - 1], h)
            h = torch.stack([block(m) for block, m in zip(self.blocks[level], mixed)])
        return list(torch.einsum("ti,i...->t...", heads, h))

    def _hard(self, x: torch.Tensor) -> list[torch.Tensor]:
        computed: dict[tuple[int, int], torch.Tensor] = {}
        parents = self.current_parents()[0].tolist()

        def node(level: int, j: int) -> torch.Tensor:
            if (level, j) not in computed:
                below = self.stems[j](x) if level == 0 else node(level - 1, parents[level - 1][j])
                computed[(level, j)] = self.blocks[level][j](below)
            return computed[(level, j)]

        return [node(self.depth - 1, path[-1]) for path in self.node_paths()]

    # --- parameters, schedule and reports -------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        weights = [p for name, p in self.named_parameters() if name not in ("parent_logits", "head_logits")]
        groups = [{"params": weights, "lr": lr}]
        if self.searching:
            groups.append({"params": [self.parent_logits, self.head_logits], "lr": self.arch_lr, "weight_decay": 0.0})
        return groups

    def used_nodes(self) -> set[tuple[int, int]]:
        return {(level, path[level]) for path in self.node_paths() for level in range(self.depth)}

    def _node_modules(self, level: int, j: int) -> list[nn.Module]:
        return ([self.stems[j]] if level == 0 else []) + [self.blocks[level][j]]

    def shared_parameters(self) -> list[nn.Parameter]:
        if not bool(self.decided):
            return [*self.stems.parameters(), *self.blocks.parameters()]
        paths = self.node_paths()
        shared = [(level, j) for (level, j) in sorted(self.used_nodes()) if sum(p[level] == j for p in paths) > 1]
        return [p for level, j in shared for m in self._node_modules(level, j) for p in m.parameters()]

    def inference_parameters(self) -> int:
        nodes = [p for level, j in self.used_nodes() for m in self._node_modules(level, j) for p in m.parameters()]
        return count_parameters([*nodes, *self.features.parameters(), *self.towers.parameters()])

    def task_node_probability(self) -> torch.Tensor:
        """P(task t passes node i of block l) under softmax(logits): shape (tasks, blocks * nodes)."""
        p = torch.softmax(self.head_logits, -1)
        columns = [p]
        for level in range(self.depth - 1, 0, -1):
            p = p @ torch.softmax(self.parent_logits[level - 1], -1)
            columns.append(p)
        return torch.cat(columns[::-1], dim=1)

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        maps = tree_maps(self.labels(), self.tasks)
        columns = [f"block{level}/node{j}" for level in range(self.depth) for j in range(self.nodes)]
        maps["node_probability"] = SharingMap(self.task_node_probability(), self.tasks, columns)
        return maps

    def trial_metrics(self) -> dict[str, float]:
        return {**tree_metrics(self.labels()), "temperature": float(self.temperature)}

    def trial_tags(self) -> dict[str, str]:
        return {"tree": json.dumps(self.written_tree())}


class LearningToBranch(Strategy):
    name = "learning_to_branch"
    family = "branching"
    description = "Learning to Branch: parents sampled by straight-through Gumbel-softmax over learned logits, then the argmax tree retrained"
    declares_shared_parameters = True
    knobs = {
        "tower_width": Int(4, 64, log=True, minimum=1),
        "nodes": Default(0, Int(0, 64, minimum=0)),
        "tau0": Default(5.0, Float(0.5, 10.0, minimum=1e-3)),
        "tau_min": Default(0.1, Float(0.01, 1.0, minimum=1e-3)),
        "search_epochs": Default(10, Int(1, 100, minimum=1)),
        "arch_lr": Default(0.01, Float(1e-3, 0.1, log=True, minimum=0.0)),
    }

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        values = {name: knob.value for name, knob in self.knobs.items() if isinstance(knob, Default)} | params
        return LearningToBranchModel(problem, backbone, values["nodes"], values["tower_width"], values["tau0"], values["tau_min"],
                                     values["search_epochs"], values["arch_lr"])

    def fit(self, model: MultiTaskModel, trainer: Trainer) -> MultiTaskModel:
        """Joint search of weights and logits (tau annealed to tau_min by the last search epoch) -> argmax tree -> retrained from scratch."""
        if not isinstance(model, LearningToBranchModel):
            raise TypeError(f"learning_to_branch trains a LearningToBranchModel, got {type(model).__name__}")
        initial = copy_state(model)
        model.searching = True
        optimizer = trainer.make_optimizer(model)
        for search_epoch in range(model.search_epochs):
            model.temperature = model.search_temperature(search_epoch)
            epoch = trainer.next_epoch
            trainer.end_epoch(model, epoch, trainer.train_epoch(model, optimizer, epoch))
        logits = {k: v for k, v in copy_state(model).items() if k in ("parent_logits", "head_logits")}
        model.load_state_dict({**initial, **logits})  # from scratch: the supernet's initial weights, the learned logits
        model.decide()
        trainer.fit(model)
        return model


@hookimpl
def register_strategies(register):
    register(Branching())
    register(LearningToBranch())
    register(TaskGroups())
