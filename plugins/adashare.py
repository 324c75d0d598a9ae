"""AdaShare: learned per-task select-or-skip policies over shared residual blocks (Sun et al., NeurIPS 2020; docs/methods.md, "AdaShare").

Every task runs the same stem and the same L shape-preserving blocks, but decides per block
whether to execute it or skip it; tasks that execute a block share it. During the search
each task has policy logits (L x 2: execute, skip) and block l of task t computes
``pi_0 * block(x) + pi_1 * x`` with ``pi = gumbel_softmax(logits[t, l], tau)`` (the
backbone's residual block already is ``relu(x + branch(x))``).

Schedule (``AdaShare.fit``, composed from the trainer's primitives): warm-up with every
block executing (weights only) -> alternating weight and policy phases on two disjoint
halves of the training split, a curriculum unlocking the last blocks one by one and tau
annealed after each policy phase -> final policies sampled from softmax(logits) ->
each retrained on the full training split -> the best by validation is the trial's model.
With a fixed policy a skipped block is not computed, and tasks that executed the same
blocks so far share one activation.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtl_search import (
    Backbone,
    Choice,
    Default,
    Float,
    Int,
    MultiTaskModel,
    Problem,
    SharingMap,
    Strategy,
    Trainer,
    copy_state,
    count_parameters,
    hookimpl,
    make_tower,
)

EXECUTE, SKIP = 0, 1  # columns of the policy logits
POLICY_STATE = ("policy_logits", "decisions", "decided")  # state entries that are the policy, not the weights
LOSS_FORMS = ("paper", "official")
OFFICIAL_POLICY_WEIGHT_DECAY = 5e-4  # the official code's Adam on the policy logits


@dataclass
class AdaShareSchedule:
    """The knobs of AdaShare's training schedule (the model carries them to ``AdaShare.fit``)."""

    warmup_epochs: int = 5
    search_epochs: int = 10
    curriculum_speed: int = 1
    tau_decay: float = 0.965
    policy_lr: float = 0.01
    samples: int = 3
    retrain_from: str = "scratch"

    def unlocked_blocks(self, search_epoch: int, depth: int) -> int:
        """k(e): how many of the last blocks have learnable policies in search epoch ``e`` (0-based)."""
        return min(depth, search_epoch // self.curriculum_speed + 1)


class AdaShareModel(MultiTaskModel):
    """Shared stem and blocks, a select-or-skip policy per task and block, a tower per task.

    Three modes: warm-up (every block executes), search (``searching``: Gumbel-softmax
    relaxation while training, the argmax policy in eval mode) and fixed (``set_policy``).
    """

    def __init__(self, problem: Problem, backbone: Backbone, tower_width: int, tau0: float, sparsity: float,
                 sharing: float, loss_form: str, schedule: AdaShareSchedule):
        super().__init__(problem)
        if not backbone.shape_preserving:
            raise ValueError(f"AdaShare skips blocks, so it needs a shape-preserving backbone; {backbone.kind!r} is not")
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form must be one of {', '.join(LOSS_FORMS)}, got {loss_form!r}")
        self.tasks = problem.task_names
        self.depth = backbone.depth
        self.stem = backbone.new_stem()
        self.blocks = backbone.new_blocks()
        self.features = backbone.new_features()
        self.towers = nn.ModuleDict({t.name: make_tower(backbone.out_features, t.output_dim, [tower_width]) for t in problem.tasks})
        self.policy_logits = nn.Parameter(torch.zeros(len(self.tasks), self.depth, 2))  # equal: P(execute) = 0.5
        self.register_buffer("decisions", torch.ones(len(self.tasks), self.depth, dtype=torch.bool))
        self.register_buffer("decided", torch.tensor(False))
        self.temperature = tau0
        self.sparsity_weight, self.sharing_weight, self.loss_form = sparsity, sharing, loss_form
        self.schedule = schedule
        self.searching = False
        self.unlocked = self.depth  # the last `unlocked` blocks have sampled, learnable policies; the others execute

    # --- policies -------------------------------------------------------------------------
    @property
    def locked(self) -> int:
        """How many leading blocks the curriculum forces to execute."""
        return self.depth - self.unlocked

    def execute_probability(self) -> torch.Tensor:
        """P(execute) per task and block, softmax of the logits: shape (tasks, blocks)."""
        return torch.softmax(self.policy_logits, dim=-1)[..., EXECUTE]

    def hard_policy(self) -> torch.Tensor:
        """The bool (tasks, blocks) policy a forward without relaxation uses.

        Fixed policy once set; during the search the argmax of the logits (locked blocks
        execute); during warm-up every block executes.
        """
        if bool(self.decided):
            return self.decisions
        if not self.searching:
            return torch.ones_like(self.decisions)
        policy = self.policy_logits[..., EXECUTE] >= self.policy_logits[..., SKIP]
        policy[:, : self.locked] = True
        return policy

    def sample_policies(self, samples: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``samples`` policies drawn blockwise from softmax(logits) (not the argmax); locked blocks execute; duplicates dropped."""
        probability = self.execute_probability().detach().cpu()
        probability[:, : self.locked] = 1.0
        drawn = [torch.bernoulli(probability, generator=generator).bool() for _ in range(samples)]
        unique = {tuple(p.flatten().tolist()): p for p in drawn}
        return [p.to(self.decisions.device) for p in unique.values()]

    def set_policy(self, policy: torch.Tensor) -> None:
        """Fix the bool (tasks, blocks) policy: from now on skipped blocks are not computed."""
        self.decisions.copy_(policy)
        self.decided.fill_(True)
        self.searching = False

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: self.towers[t](self.features(h)) for t, h in self.task_activations(x).items()}

    def task_activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's activation after the last block (before ``features`` and its tower)."""
        h = self.stem(x)
        paths = self._relaxed_paths(h) if self.searching and self.training else self._hard_paths(h, self.hard_policy())
        return dict(zip(self.tasks, paths))

    def _relaxed_paths(self, h: torch.Tensor) -> list[torch.Tensor]:
        # locked blocks execute for every task, so their output is computed once
        for block in self.blocks[: self.locked]:
            h = block(h)
        pi = F.gumbel_softmax(self.policy_logits[:, self.locked :], tau=self.temperature, hard=False, dim=-1)
        paths = []
        for task_pi in pi:
            z = h
            for block, (execute, skip) in zip(self.blocks[self.locked :], task_pi):
                z = execute * block(z) + skip * z
            paths.append(z)
        return paths

    def _hard_paths(self, h: torch.Tensor, policy: torch.Tensor) -> list[torch.Tensor]:
        # An activation depends only on the blocks executed so far: key it by their indices,
        # so tasks with the same executed prefix share it and a skipped block is never called.
        computed: dict[tuple[int, ...], torch.Tensor] = {(): h}
        paths = []
        for row in policy.tolist():
            key: tuple[int, ...] = ()
            for index, execute in enumerate(row):
                if execute:
                    parent, key = key, key + (index,)
                    if key not in computed:
                        computed[key] = self.blocks[index](computed[parent])
            paths.append(computed[key])
        return paths

    # --- losses -----------------------------------------------------------------------------
    def regularization(self) -> torch.Tensor:
        """During the search: sparsity_weight * L_sparsity + sharing_weight * L_sharing over the learnable blocks."""
        if not self.searching:
            return super().regularization()
        return self.sparsity_weight * self.sparsity_loss() + self.sharing_weight * self.sharing_loss()

    def sparsity_loss(self) -> torch.Tensor:
        """Over the learnable (unlocked) blocks, a = P(execute).

        Paper: sum_t sum_l log a_{t,l}. Official code (``get_sparsity_loss2``): per task the
        cross-entropy of the logits toward "skip", -log(1 - a), averaged over the unlocked
        blocks, summed over the tasks (bounded below by 0).
        """
        a = self.execute_probability()[:, self.locked :]
        if self.loss_form == "paper":
            return torch.log(a).sum()
        return -torch.log1p(-a).mean(dim=1).sum()

    def sharing_loss(self) -> torch.Tensor:
        """Pairwise task distance per block, weighted by depth.

        Paper: sum_{t1<t2} sum_l (L - l)/L |a_{t1,l} - a_{t2,l}| with l = 1..L (bottom blocks
        weigh most), over the learnable blocks. Official code (``get_hamming_loss``):
        sum_{t1<t2} sum_l (l+1)/L |logits_{t1,l,0} - logits_{t2,l,0}| with l = 0..L-1: the
        execute logit (column 0) only, over all L blocks whether unlocked or not.
        """
        if self.loss_form == "paper":
            blocks = torch.arange(self.locked, self.depth, device=self.policy_logits.device, dtype=self.policy_logits.dtype)
            values, weight = self.execute_probability()[:, self.locked :], (self.depth - (blocks + 1)) / self.depth
        else:
            blocks = torch.arange(self.depth, device=self.policy_logits.device, dtype=self.policy_logits.dtype)
            values, weight = self.policy_logits[..., EXECUTE], (blocks + 1) / self.depth
        total = self.policy_logits.new_zeros(())
        for first, second in itertools.combinations(range(len(self.tasks)), 2):
            total = total + (weight * (values[first] - values[second]).abs()).sum()
        return total

    # --- parameters and reports -------------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The network weights (the policy logits have their own optimiser in the policy phase)."""
        return [{"params": [p for name, p in self.named_parameters() if name != "policy_logits"], "lr": lr}]

    def policy_param_groups(self) -> list[dict[str, Any]]:
        """The policy logits at the schedule's learning rate, by Adam (as in the paper and the official code).

        ``loss_form: official`` adds the official code's L2 weight decay 5e-4 (Adam's, added to
        the gradient; not AdamW's decoupled decay); ``paper``: none.
        """
        if self.loss_form == "official":
            return [{"params": [self.policy_logits], "lr": self.schedule.policy_lr, "weight_decay": OFFICIAL_POLICY_WEIGHT_DECAY,
                     "optimizer": "adam"}]
        return [{"params": [self.policy_logits], "lr": self.schedule.policy_lr, "weight_decay": 0.0}]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.stem.parameters(), *self.blocks.parameters()]

    def weight_state(self) -> dict[str, torch.Tensor]:
        """A copy of the weights without the policy."""
        return {k: v for k, v in copy_state(self).items() if k not in POLICY_STATE}

    def load_weight_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by ``weight_state``, keeping the current policy."""
        policy = {k: v for k, v in self.state_dict().items() if k in POLICY_STATE}
        self.load_state_dict({**state, **policy})

    def executed_blocks(self) -> dict[str, int]:
        return {t: int(row.sum()) for t, row in zip(self.tasks, self.hard_policy())}

    def inference_parameters(self) -> int:
        """Stem, features, towers and the blocks some task executes; skipped blocks and the logits cost nothing."""
        used = self.hard_policy().any(dim=0).tolist()
        blocks = [p for block, keep in zip(self.blocks, used) if keep for p in block.parameters()]
        return count_parameters([*self.stem.parameters(), *self.features.parameters(), *self.towers.parameters(), *blocks])

    def trial_metrics(self) -> dict[str, float]:
        metrics = {f"executed_blocks/{t}": float(n) for t, n in self.executed_blocks().items()}
        metrics["blocks_used"] = float(self.hard_policy().any(dim=0).sum())
        metrics["temperature"] = float(self.temperature)
        return metrics

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        policy = self.hard_policy().float()
        blocks = [f"block{i}" for i in range(self.depth)]
        return {
            "execute_probability": SharingMap(self.execute_probability(), self.tasks, blocks),
            "policy": SharingMap(policy, self.tasks, blocks),
            # fraction of the blocks both tasks execute: which tasks share what
            "shared_blocks": SharingMap(policy @ policy.T / max(self.depth, 1), self.tasks, self.tasks),
        }


class AdaShare(Strategy):
    name = "adashare"
    family = "adashare"
    description = "learned per-task select-or-skip policies over shared residual blocks (Gumbel-softmax, curriculum, sampled final policies)"
    backbones = ("residual_mlp", "residual_conv")
    declares_shared_parameters = True  # the stem and the blocks (each task executes a subset)
    knobs = {
        "tower_width": Int(4, 64, log=True, minimum=1),
        "tau0": Default(5.0, Float(0.5, 10.0, minimum=1e-3)),
        "tau_decay": Default(0.965, Float(0.9, 1.0, minimum=1e-3, maximum=1.0)),
        "sparsity": Default(0.05, Float(0.0, 0.5, minimum=0.0)),
        "sharing": Default(0.05, Float(0.0, 0.5, minimum=0.0)),
        "curriculum_speed": Default(1, Int(1, 5, minimum=1)),
        "warmup_epochs": Default(5, Int(0, 20, minimum=0)),
        "search_epochs": Default(10, Int(1, 50, minimum=1)),
        "samples": Default(3, Int(1, 8, minimum=1)),
        "policy_lr": Default(0.01, Float(1e-3, 0.1, log=True, minimum=0.0)),
        "loss_form": Default("paper", Choice(*LOSS_FORMS)),
        "retrain_from": Default("scratch", Choice("scratch", "warmup")),
    }

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        values = {name: knob.value for name, knob in self.knobs.items() if isinstance(knob, Default)} | params
        schedule = AdaShareSchedule(**{field.name: values[field.name] for field in fields(AdaShareSchedule)})
        return AdaShareModel(problem, backbone, values["tower_width"], values["tau0"], values["sparsity"],
                             values["sharing"], values["loss_form"], schedule)

    def fit(self, model: MultiTaskModel, trainer: Trainer) -> MultiTaskModel:
        """Warm-up -> alternating weight/policy phases -> sampled policies, each retrained -> the best by validation."""
        if not isinstance(model, AdaShareModel):
            raise TypeError(f"adashare trains an AdaShareModel, got {type(model).__name__}")
        schedule = model.schedule
        initial = model.weight_state()
        if schedule.warmup_epochs:
            trainer.fit(model, epochs=schedule.warmup_epochs)
        warmed = model.weight_state()

        weight_part, policy_part = trainer.dataset.train.partition(0.5, trainer.generator)
        weight_optimizer = trainer.make_optimizer(model)
        policy_optimizer = trainer.make_optimizer(model, model.policy_param_groups())
        model.searching = True
        for search_epoch in range(schedule.search_epochs):
            model.unlocked = schedule.unlocked_blocks(search_epoch, model.depth)
            epoch = trainer.next_epoch
            weight_losses = trainer.train_epoch(model, weight_optimizer, epoch, weight_part)
            trainer.train_epoch(model, policy_optimizer, epoch, policy_part)
            model.temperature *= schedule.tau_decay
            trainer.end_epoch(model, epoch, weight_losses)

        start = initial if schedule.retrain_from == "scratch" else warmed
        best_score, best_policy, best_weights = float("inf"), None, None
        for policy in model.sample_policies(schedule.samples, trainer.generator):
            model.load_weight_state(start)
            model.set_policy(policy)
            score = min(record.score for record in trainer.fit(model))
            if score < best_score or best_policy is None:
                best_score, best_policy, best_weights = score, policy, model.weight_state()
        model.set_policy(best_policy)
        model.load_weight_state(best_weights)
        return model


@hookimpl
def register_strategies(register):
    register(AdaShare())
