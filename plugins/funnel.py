"""Conversion funnels: tasks observed only after an earlier one (impression -> click -> conversion).

A task names its parent in a space (``tasks.converted: {kind: binary, after: clicked}``).
Its label means something only where the parent is positive; the data layer masks it
elsewhere (``mtl_search.data.dataset.apply_funnel_masks``), so every strategy trains and
evaluates it on the parent's positive rows (the missing-label path), and every model's
prediction of it is *conditional* on the parent, P(convert | click, x). ``predict`` adds
``<task>.joint``, the probability of the task and all its ancestors, P(click, convert | x),
as the product of the conditionals. The strategies of this family train on the entire
space instead:

``esmm`` — Entire Space Multi-task Model (Ma et al., "Entire Space Multi-Task Model: An
Effective Approach for Estimating Post-Click Conversion Rate", SIGIR 2018). CTR and CVR
towers on a shared embedding: the backbone's input stage (a table's category embeddings,
or the stem's weights), plus ``shared_depth`` blocks (0 as in the paper). Where the input
stage holds no parameters (one-hot categories, a numeric-only table, a plain MLP's flatten
stem) the first block is shared in its place (``shared_blocks``): a Linear layer on one-hot
codes is an embedding lookup summed over the columns. pCTCVR = pCTR x
pCVR, and the loss is, over *all* impressions, CE(click, pCTR) + CE(click AND conversion,
pCTCVR) (eq. 3). The CVR tower is never supervised directly: it gets gradient only through
the product, on clicked and non-clicked rows alike, which removes the sample selection bias
of training CVR on clicked rows only and eases its data sparsity. Deviation: a funnel longer
than two steps (click -> cart -> buy) is handled as ESM² does (Wen et al., SIGIR 2020): the
probability of reaching a step is the product of the conditionals above it, each with a
cross-entropy over the entire space; a funnel of two steps is exactly ESMM.

``aitm`` — Adaptive Information Transfer Multi-task framework (Xi et al., "Modeling the
Sequential Dependence among Audience Multi-step Conversions with Multi-task Learning in
Targeted Display Advertising", KDD 2021). Every task has a tower giving q_t (private
backbone blocks after the shared embedding, as ESMM's). Down the funnel, the adaptive
information transfer (AIT) module mixes what the previous task passes on, p_{t-1} = g_{t-1}(z_{t-1})
(g: one ReLU layer), with the task's own q_t by attention: for u in {p_{t-1}, q_t},
w_u = softmax_u(<h1(u), h2(u)> / sqrt(k)), z_t = sum_u w_u h3(u) (h1, h2, h3 k x k matrices,
no bias, k = the tower width, as in the authors' released code), z_1 = q_1; yhat_t = sigmoid(MLP_t(z_t)) is the probability of
reaching step t. The loss is sum_t CE(y_t, yhat_t) over all impressions (y_t: every step up
to t happened) plus alpha * the behavioural expectation calibrator sum_{t>=2} max(yhat_t -
yhat_{t-1}, 0) averaged over the rows (a later step may not be likelier than an earlier
one). ``alpha`` defaults to 0.6 (the weight of the authors' released code; a space may set
or search it). The calibrator is the model's ``regularization()``, added to the weighted
task losses. Reported predictions are conditional like every strategy's:
yhat_t / yhat_{t-1}, capped at 1 where the calibrator's constraint is violated. A parent with
several children transfers to each (the paper's funnel is a chain).

Tasks outside the funnel (a regression target next to click -> conversion) get an ordinary
tower on the shared part and their ordinary loss, in both strategies.

``synthetic_funnel`` (a registered data set) generates impressions with a known selection
bias: an item's latent quality raises both its click and its conversion probability, so the
clicked rows over-represent good items and a CVR model trained on them alone overestimates
conversion on the (mostly poor) items users do not click. The true probabilities are known
(``generate_funnel``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl_search import (
    Backbone,
    CategoricalFeature,
    Dataset,
    Default,
    Float,
    Int,
    MultiTaskModel,
    NumericFeature,
    Problem,
    SharingMap,
    SpaceError,
    Split,
    Strategy,
    TableFeatures,
    Task,
    hookimpl,
    make_dataset,
    make_tower,
)

LOG_ONE = -1e-6  # log of the largest probability a product is allowed to reach (keeps log(1 - p) finite)


def funnel_tasks(problem: Problem) -> list[str]:
    """The tasks in a funnel (a task with ``after`` and every task above one), parents first."""
    involved = {t.name for t in problem.tasks if t.after is not None}
    for name in list(involved):
        involved.update(problem.ancestors(name))
    return [n for n in problem.funnel_order() if n in involved]


def check_funnel(problem: Problem, path: str, method: str) -> None:
    """A ``SpaceError`` at ``path`` unless ``problem`` has a funnel of binary tasks."""
    tasks = funnel_tasks(problem)
    if not tasks:
        raise SpaceError(path, f"{method} models a conversion funnel, and no task names a parent; "
                         "give the later task after: <earlier task>, e.g. tasks: {converted: {kind: binary, after: clicked}}")
    for name in tasks:
        if problem.task(name).kind != "binary":
            raise SpaceError(path, f"{method} needs binary funnel tasks; {name!r} is {problem.task(name).kind}")


def log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(log_p)) for log_p < 0, computed stably (Maechler's switch at log 2)."""
    log_p = log_p.clamp(max=LOG_ONE)
    return torch.where(log_p > -math.log(2), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))


def joint_targets(problem: Problem, batch: Split) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per funnel task: (y, known) of "this step and every step above it happened", over every row of ``batch``.

    A row is known where the parent's joint label is known and either negative (then this
    step did not happen either) or positive with this task labelled.
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in funnel_tasks(problem):
        y = batch.y[name].reshape(-1).float()
        own = batch.labelled(name)
        own = torch.ones_like(y, dtype=torch.bool) if own is None else own
        parent = problem.task(name).after
        if parent is None:
            out[name] = (torch.where(own, y, torch.zeros_like(y)), own)
            continue
        parent_y, parent_known = out[parent]
        known = parent_known & ((parent_y == 0) | own)
        out[name] = (torch.where(known & (parent_y == 1), y, torch.zeros_like(y)), known)
    return out


def bce_from_log_probability(log_p: torch.Tensor, y: torch.Tensor, known: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean (weighted by ``weight``) of -[y log p + (1 - y) log(1 - p)] over the ``known`` rows; a zero with the graph when none."""
    losses = -(y * log_p + (1 - y) * log1mexp(log_p))
    w = known.to(losses.dtype) if weight is None else known.to(losses.dtype) * weight.reshape(-1).to(losses.dtype)
    return (w * losses).sum() / w.sum().clamp_min(torch.finfo(losses.dtype).tiny)  # 0 when no row is known, without a sync


def calibration_loss(problem: Problem, probabilities: dict[str, torch.Tensor]) -> torch.Tensor:
    """AITM's behavioural expectation calibrator: mean over rows of sum_t max(yhat_t - yhat_parent(t), 0).

    ``probabilities`` are the probabilities of reaching each funnel step (not conditionals).
    Zero when every later step is at most as likely as the one before it.
    """
    terms = [F.relu(probabilities[n].reshape(-1) - probabilities[problem.task(n).after].reshape(-1))
             for n in funnel_tasks(problem) if problem.task(n).after is not None]
    return torch.stack(terms).sum(0).mean()


def shared_blocks(backbone: Backbone, shared_depth: int) -> int:
    """The blocks the funnel models share: ``shared_depth``, or 1 where the input stage and stem hold no parameters.

    The papers' towers share the embedding of the sparse features. With embedded categories
    (``inputs.encoding: embedding``) or a stem with weights (``residual_mlp``, the conv kinds)
    the backbone's input stage is that shared layer. With one-hot categories, a table
    without categorical columns or a plain MLP's flatten stem, it holds no parameters, and
    the first block takes its place: a Linear layer on one-hot codes is an embedding lookup
    summed over the columns, so sharing it shares the embedding.
    """
    if not 0 <= shared_depth <= backbone.depth:
        raise ValueError(f"shared_depth {shared_depth} must lie in [0, {backbone.depth}] (the backbone's depth)")
    if shared_depth == 0 and not list(backbone.new_stem().parameters()):
        if backbone.depth == 0:
            raise ValueError("the funnel models share the input stage, which holds no parameters here (one-hot or numeric "
                             "inputs, a stem without weights), and the backbone has no block to share instead; "
                             "use inputs.encoding: embedding or a backbone of depth >= 1")
        return 1
    return shared_depth


class _FunnelBase(MultiTaskModel):
    """A shared part (the input stage and the first ``shared_blocks(backbone, shared_depth)`` blocks), then private blocks and features per task."""

    def __init__(self, problem: Problem, backbone: Backbone, shared_depth: int):
        super().__init__(problem)
        self.depth, self.shared_depth = backbone.depth, shared_blocks(backbone, shared_depth)
        self.funnel = funnel_tasks(problem)
        self.shared = nn.Sequential(backbone.new_stem(), *backbone.new_blocks(0, self.shared_depth))
        self.private = nn.ModuleDict({
            t.name: nn.Sequential(*backbone.new_blocks(self.shared_depth), backbone.new_features()) for t in problem.tasks
        })

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        """``shared_blocks``: 1 where a task uses the shared input stage / block. ``funnel``: 1 where a column is the row's parent."""
        names = self.problem.task_names
        values = torch.tensor([[1.0] + [1.0 if b < self.shared_depth else 0.0 for b in range(self.depth)]] * len(names))
        parents = torch.tensor([[1.0 if self.problem.task(r).after == c else 0.0 for c in names] for r in names])
        return {"shared_blocks": SharingMap(values, names, ["input", *(f"block{i}" for i in range(self.depth))]),
                "funnel": SharingMap(parents, names, names)}

    def _plain_losses(self, outputs: dict[str, torch.Tensor], batch: Split) -> dict[str, torch.Tensor]:
        """The ordinary (masked, weighted) losses of the tasks outside the funnel."""
        from mtl_search import task_losses

        others = tuple(t for t in self.problem.tasks if t.name not in self.funnel)
        if not others:
            return {}
        # the tasks outside the funnel name no parent, so this sub-problem is valid
        return task_losses(Problem(self.problem.input_shape, others), outputs, batch)


class ESMMModel(_FunnelBase):
    """ESMM: conditional towers; the loss on each step's joint probability (the product down the funnel) over all rows."""

    def __init__(self, problem: Problem, backbone: Backbone, shared_depth: int, tower_width: int):
        super().__init__(problem, backbone, shared_depth)
        self.towers = nn.ModuleDict({t.name: make_tower(backbone.out_features, t.output_dim, [tower_width]) for t in problem.tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits: pCTR for a funnel's first step, pCVR (conditional on the parent) for a later one, plain for other tasks."""
        h = self.shared(x)
        return {name: self.towers[name](self.private[name](h)) for name in self.towers}

    def log_joint(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """log P(this step and all above it | x) per funnel task: sums of log-sigmoids of the conditional logits."""
        out: dict[str, torch.Tensor] = {}
        for name in self.funnel:
            own = F.logsigmoid(outputs[name].reshape(-1))
            parent = self.problem.task(name).after
            out[name] = own if parent is None else out[parent] + own
        return out

    def task_losses(self, batch: Split) -> dict[str, torch.Tensor]:
        """CE(click, pCTR) for a first step and CE(click AND conversion, pCTCVR) for a later one, over every row (eq. 3)."""
        outputs = self(batch.x)
        losses = self._plain_losses(outputs, batch)
        log_joint = self.log_joint(outputs)
        for name, (y, known) in joint_targets(self.problem, batch).items():
            losses[name] = bce_from_log_probability(log_joint[name], y, known, batch.weights(name))
        return {t: losses[t] for t in self.problem.task_names}


class ESMM(Strategy):
    name = "esmm"
    family = "funnel"
    declares_shared_parameters = True
    description = "ESMM (Ma et al. 2018): CTR and CVR towers on a shared embedding, trained on CTR and CTCVR = CTR x CVR over all impressions"
    knobs = {
        # the paper shares the embedding only; a space may share blocks too
        "shared_depth": Default(0, Int(0, "depth", minimum=0)),
        "tower_width": Int(4, 64, log=True, minimum=1),
    }

    def check_problem(self, knobs: dict[str, Any], problem: Problem, path: str) -> None:
        check_funnel(problem, path, "esmm")

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        check_funnel(problem, f"strategies.{self.name}", self.name)
        return ESMMModel(problem, backbone, params["shared_depth"], params["tower_width"])


class AdaptiveInformationTransfer(nn.Module):
    """The AIT module: attention over {p_{t-1}, q_t} with scores <h1(u), h2(u)> / sqrt(k); output sum_u w_u h3(u)."""

    def __init__(self, width: int):
        super().__init__()
        # k x k matrices without a bias, as in the authors' released code
        self.h1, self.h2, self.h3 = (nn.Linear(width, width, bias=False) for _ in range(3))
        self.scale = math.sqrt(width)
        self.last_weights: torch.Tensor | None = None  # (rows, 2): weight of the transferred and of the own input

    def forward(self, transferred: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        u = torch.stack([transferred, own], dim=1)  # (rows, 2, k)
        scores = (self.h1(u) * self.h2(u)).sum(-1) / self.scale
        weights = torch.softmax(scores, dim=1)
        self.last_weights = weights.detach()
        return (weights.unsqueeze(-1) * self.h3(u)).sum(1)


class AITMModel(_FunnelBase):
    """AITM: per-task towers; each later funnel step mixes its parent's transferred representation in by attention."""

    def __init__(self, problem: Problem, backbone: Backbone, shared_depth: int, tower_width: int, alpha: float):
        super().__init__(problem, backbone, shared_depth)
        width = backbone.out_features
        self.alpha = float(alpha)
        children = [n for n in self.funnel if problem.task(n).after is not None]
        self.transfer = nn.ModuleDict({n: nn.Sequential(nn.Linear(width, width), nn.ReLU()) for n in children})
        self.ait = nn.ModuleDict({n: AdaptiveInformationTransfer(width) for n in children})
        self.heads = nn.ModuleDict({t.name: make_tower(width, t.output_dim, [tower_width]) for t in problem.tasks})
        self._calibration: torch.Tensor | None = None

    def step_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of yhat_t (the probability of reaching step t) for funnel tasks; the ordinary logits for the others."""
        h = self.shared(x)
        q = {name: self.private[name](h) for name in self.private}
        z: dict[str, torch.Tensor] = {}
        for name in self.problem.funnel_order():
            parent = self.problem.task(name).after
            z[name] = q[name] if parent is None else self.ait[name](self.transfer[name](z[parent]), q[name])
        return {name: self.heads[name](z[name]) for name in self.problem.task_names}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """As every strategy reports a funnel task: the logit of yhat_t / yhat_parent (capped at 1); others unchanged."""
        logits = self.step_logits(x)
        out = dict(logits)
        for name in self.funnel:
            parent = self.problem.task(name).after
            if parent is not None:
                log_conditional = (F.logsigmoid(logits[name]) - F.logsigmoid(logits[parent])).clamp(max=LOG_ONE)
                out[name] = log_conditional - log1mexp(log_conditional)
        return out

    def task_losses(self, batch: Split) -> dict[str, torch.Tensor]:
        """CE(y_t, yhat_t) per funnel step over every row; the calibrator (times alpha) becomes ``regularization()``."""
        logits = self.step_logits(batch.x)
        losses = self._plain_losses(logits, batch)
        for name, (y, known) in joint_targets(self.problem, batch).items():
            losses[name] = bce_from_log_probability(F.logsigmoid(logits[name].reshape(-1)), y, known, batch.weights(name))
        probabilities = {n: torch.sigmoid(logits[n].reshape(-1)) for n in self.funnel}
        self._calibration = self.alpha * calibration_loss(self.problem, probabilities)
        return {t: losses[t] for t in self.problem.task_names}

    def regularization(self) -> torch.Tensor:
        """alpha times the calibrator of the latest ``task_losses`` batch (zero before any)."""
        return self._calibration if self._calibration is not None else torch.zeros((), device=self._device())

    def trial_metrics(self) -> dict[str, float]:
        """The mean attention weight each AIT module gave the transferred information on its last batch."""
        return {f"transfer_weight/{n}": float(m.last_weights[:, 0].mean()) for n, m in self.ait.items() if m.last_weights is not None}


class AITM(Strategy):
    name = "aitm"
    family = "funnel"
    declares_shared_parameters = True
    description = "AITM (Xi et al. 2021): attention-based information transfer down the funnel, with the behavioural expectation calibrator"
    knobs = {
        "shared_depth": Default(0, Int(0, "depth", minimum=0)),
        "tower_width": Int(4, 64, log=True, minimum=1),
        "alpha": Default(0.6, Float(0.0, 2.0, minimum=0.0)),
    }

    def check_problem(self, knobs: dict[str, Any], problem: Problem, path: str) -> None:
        check_funnel(problem, path, "aitm")

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        check_funnel(problem, f"strategies.{self.name}", self.name)
        return AITMModel(problem, backbone, params["shared_depth"], params["tower_width"], params["alpha"])


# ---------------------------------------------------------------------------------------------
# synthetic click -> conversion data with a known selection bias

FUNNEL_DEFAULTS = {
    "samples": 8000,
    "items": 200,         # distinct items (a categorical feature)
    "user_features": 4,   # numeric features
    "selection": 1.5,     # how strongly an item's latent quality drives clicks (0: clicks ignore quality)
    "quality_effect": 1.5,  # how strongly it drives conversion
    "click_bias": -1.0,   # intercept of the click logit
    "conversion_bias": -0.5,
    "seed": 0,
    "val": 0.15,
    "test": 0.15,
}


def generate_funnel(samples: int, items: int, user_features: int, selection: float, quality_effect: float,
                    click_bias: float, conversion_bias: float, seed: int) -> dict[str, np.ndarray]:
    """Impressions with their true probabilities: ``item``, ``u`` (samples x user_features), ``true_ctr``, ``true_cvr``, ``clicked``, ``converted``.

    item quality q ~ N(0, 1) per item; u ~ N(0, I). P(click) = sigmoid(click_bias + selection q
    + a.u), P(convert | click) = sigmoid(conversion_bias + quality_effect q + b.u), a and b
    fixed random directions. ``converted`` is 0 where there was no click (it never happened).
    The bias: clicks select good items, so clicked rows have a higher CVR than the rest.
    """
    if samples < 20 or items < 2 or user_features < 1:
        raise ValueError(f"need samples >= 20, items >= 2, user_features >= 1; got {samples}, {items}, {user_features}")
    rng = np.random.default_rng(seed)
    quality = rng.standard_normal(items)
    a = rng.standard_normal(user_features) / math.sqrt(user_features)
    b = rng.standard_normal(user_features) / math.sqrt(user_features)
    item = rng.integers(0, items, samples)
    u = rng.standard_normal((samples, user_features))
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    true_ctr = sigmoid(click_bias + selection * quality[item] + u @ a)
    true_cvr = sigmoid(conversion_bias + quality_effect * quality[item] + u @ b)
    clicked = (rng.random(samples) < true_ctr).astype(np.int64)
    converted = ((rng.random(samples) < true_cvr) & (clicked == 1)).astype(np.int64)
    return {"item": item, "u": u, "true_ctr": true_ctr, "true_cvr": true_cvr, "clicked": clicked, "converted": converted}


def synthetic_funnel(samples: int, items: int, user_features: int, selection: float, quality_effect: float,
                     click_bias: float, conversion_bias: float, seed: int, val: float, test: float) -> Dataset:
    """``generate_funnel`` as a Dataset: tasks ``clicked`` and ``converted`` (after clicked); features u1.. and a categorical ``item``.

    The rows are split as ``make_dataset`` splits them (``split_rows(samples, val, test, seed)``).
    """
    data = generate_funnel(samples, items, user_features, selection, quality_effect, click_bias, conversion_bias, seed)
    names = [f"u{i + 1}" for i in range(user_features)]
    # the feature layout a table would have: numeric values (standard normal by construction), then item codes (0 = unknown)
    features = TableFeatures(tuple(NumericFeature(n, 0.0, 1.0, False) for n in names),
                             (CategoricalFeature("item", tuple(str(i) for i in range(items))),))
    x = torch.cat([torch.from_numpy(data["u"]).float(), torch.from_numpy(data["item"] + 1).float().unsqueeze(1)], dim=1)
    problem = Problem((features.width,), (Task("clicked", "binary", "auc"), Task("converted", "binary", "auc", after="clicked")),
                      features=features)
    y = {"clicked": torch.from_numpy(data["clicked"]).float(), "converted": torch.from_numpy(data["converted"]).float()}
    return make_dataset(problem, x, y, val, test, seed)


@hookimpl
def register_strategies(register):
    register(ESMM())
    register(AITM())


@hookimpl
def register_datasets(register):
    register("synthetic_funnel", synthetic_funnel, FUNNEL_DEFAULTS,
             "impressions -> clicks -> conversions with a known selection bias (item quality drives both)")
