"""Device placement: every weighting keeps its state on its losses' device, under every strategy.

No GPU is needed. Two checks that fail on a device mix-up:

- on ``torch.device("meta")`` (a second device on any machine): one training step of every
  strategy whose forward runs on meta with every loss weighting, after which every tensor the
  weighting holds is on meta. Left out, because their ops need real values: the sparse
  routers (``topk_moe``, ``switch``: bincount, nonzero), ``adashare`` and ``lasem`` (their
  schedules read values) and the torchjd aggregators (their solvers run on the host);
- on the CPU, one step of every strategy with every weighting and a torchjd aggregator
  while a torch-function mode watches the weighting module's own code: a tensor it creates
  without naming a device (it would land on the CPU whatever the losses' device) or a copy
  to the host is a mix-up waiting for a GPU.

``gpu``-marked tests run the real thing on CUDA and are skipped without it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import mtl_search_plugins.weighting as weighting_module
import pytest
import torch
from torch.overrides import TorchFunctionMode

from mtl_search.registry import load_registry
from mtl_search.testing import small_model

REGISTRY = load_registry()
LOSS_WEIGHTINGS = ["equal", "uncertainty", "dwa", "gradnorm", "rlw"]
AGGREGATOR = "upgrad"
META_STRATEGIES = ["hard_sharing", "mtan", "mmoe", "omoe", "cgc", "ple", "dselect_k", "cross_stitch", "l2_soft", "mrn", "esmm", "aitm"]
META = torch.device("meta")


def _setup(strategy_name: str):
    """The strategy's smallest model on its first backbone kind, and the contract data set."""
    strategy = REGISTRY.strategies[strategy_name]
    model, data = small_model(strategy, REGISTRY.backbones)
    return strategy, model, data


def _pairs(weightings: list[str], strategies: list[str]) -> list[tuple[str, str]]:
    return [(s, w) for s in strategies for w in weightings
            if not (REGISTRY.weightings[w].needs_shared_parameters and not REGISTRY.strategies[s].declares_shared_parameters)]


def _weighting_tensors(weighting: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a weighting holds: parameters, buffers and tensors kept as plain attributes."""
    tensors = dict(weighting.named_parameters()) | dict(weighting.named_buffers())
    for module_name, module in weighting.named_modules():
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                tensors[f"{module_name}.{name}".lstrip(".")] = value
    return tensors


@pytest.mark.parametrize("strategy_name,weighting_name", _pairs(LOSS_WEIGHTINGS, META_STRATEGIES))
def test_one_training_step_on_the_meta_device_keeps_the_weighting_there(strategy_name, weighting_name):
    _, model, data = _setup(strategy_name)
    model = model.to(META).train()
    weighting = REGISTRY.weightings[weighting_name](data.problem.task_names).to(META)
    weighting.setup(data.problem)
    batch = data.train.subset(torch.arange(8)).to(META)
    params = [p for p in [*model.parameters(), *weighting.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3)
    total = weighting.backward(model.task_losses(batch), model.regularization(), model)
    optimizer.step()
    weighting.after_step()
    model.after_step()
    assert total.device == META
    off = {name: str(t.device) for name, t in _weighting_tensors(weighting).items() if t.device != META}
    assert not off, f"{weighting_name} under {strategy_name} keeps tensors off the losses' device: {off}"


FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.randn, torch.rand, torch.randint,
             torch.arange, torch.eye, torch.linspace}
WEIGHTING_FILE = str(Path(weighting_module.__file__).resolve())


class HostPlacementWatch(TorchFunctionMode):
    """Records, for calls made from the weighting module's own code, device-less tensor creation and copies to the host."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1)
        if str(Path(caller.f_code.co_filename).resolve()) == WEIGHTING_FILE:
            where = f"{caller.f_code.co_name} line {caller.f_lineno}"
            if func in FACTORIES and kwargs.get("device") is None:
                self.found.append(f"{func.__name__}(...) without a device in {where}")
            if func is torch.Tensor.cpu or (func is torch.Tensor.to and "cpu" in [*args[1:], kwargs.get("device")]):  # a named host
                self.found.append(f"a copy to the host in {where}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("strategy_name,weighting_name", _pairs([*LOSS_WEIGHTINGS, AGGREGATOR], list(REGISTRY.strategies)))
def test_a_weighting_creates_every_tensor_of_a_step_on_the_losses_device(strategy_name, weighting_name):
    strategy, model, data = _setup(strategy_name)
    model.train()
    weighting = REGISTRY.weightings[weighting_name](data.problem.task_names)
    weighting.setup(data.problem)
    batch = data.train.subset(torch.arange(16))
    watch = HostPlacementWatch()
    with watch:
        weighting.backward(model.task_losses(batch), model.regularization(), model)
        weighting.after_step()
    assert not watch.found, f"{weighting_name} under {strategy_name}: {watch.found}"


def test_the_watch_sees_device_less_tensors_and_host_copies_made_in_the_weighting_module():
    # the check can fail: code compiled as the weighting module's (the bugs the watch exists for) is caught
    namespace = {"torch": torch}
    exec(compile("def steps(n):\n    return torch.ones(n)\n\ndef record(w):\n    return w.cpu()\n", WEIGHTING_FILE, "exec"), namespace)
    watch = HostPlacementWatch()
    with watch:
        namespace["steps"](3)
        namespace["record"](torch.ones(2))
        torch.ones(2)  # made here, in the test: not the weighting's
    assert len(watch.found) == 2
    assert "ones(...) without a device in steps" in watch.found[0] and "a copy to the host in record" in watch.found[1]


# ---------------------------------------------------------------- the GPU check

def test_gpu_check_fails_cleanly_without_cuda(capsys, tmp_path):
    from benchmarks import gpu_check

    with pytest.raises(gpu_check.CudaUnavailable, match="CUDA not available"):
        gpu_check.require_cuda(available=False)
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the check would run")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "CUDA not available" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_gpu_check_covers_every_strategy_and_writes_its_table_from_a_cpu_run(tmp_path):
    from benchmarks import gpu_check

    planned = gpu_check.pairs(REGISTRY)
    assert {s for s, _ in planned} == set(REGISTRY.strategies)
    assert {w for _, w in planned} == {"equal", "gradnorm", "upgrad"}
    assert ("l2_soft", "gradnorm") not in planned  # l2_soft declares no shared parameters
    rows = [gpu_check.check_pair(REGISTRY, s, w, "cpu") for s, w in [("mmoe", "gradnorm"), ("hard_sharing", "upgrad")]]
    assert all(r["passed"] and r["precision"] == "fp32" and r["steps"] == 3 for r in rows), rows  # 192 train rows / 64
    broken = gpu_check.check_pair(REGISTRY, "mmoe", "equal", "not-a-device")
    assert not broken["passed"] and broken["errors"]
    table = gpu_check.markdown({"device": "cpu", "torch": torch.__version__, "cuda": None, "rows": [*rows, broken],
                                "search": {"passed": True, "statuses": ["finished"] * 4, "devices": ["cuda"] * 4, "seconds": 1.0}})
    assert "| mmoe | gradnorm | yes | fp32 |" in table and "| mmoe | equal | NO |" in table and "2 of 3" in table


def test_gpu_check_search_runs_its_four_trials_and_fails_them_off_cuda(tmp_path, ray_session):
    from benchmarks import gpu_check

    on_cpu = {**gpu_check.SEARCH_SPACE, "ray": {"gpus_per_trial": 0, "cpus_per_trial": 1}}
    result = gpu_check.check_search(tmp_path, on_cpu)
    assert result["trials"] == 4 and result["statuses"] == ["finished"] * 4 and result["devices"] == ["cpu"] * 4, result
    assert not result["passed"]  # the check passes only where every trial ran on cuda


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("weighting_name", [*LOSS_WEIGHTINGS, AGGREGATOR])
def test_every_strategy_trains_a_step_on_cuda(weighting_name):
    from benchmarks import gpu_check

    for strategy_name, weighting in gpu_check.pairs(REGISTRY):
        if weighting == weighting_name or (weighting == "equal" and weighting_name in ("uncertainty", "dwa", "rlw")):
            row = gpu_check.check_pair(REGISTRY, strategy_name, weighting_name, "cuda")
            assert row["passed"], row["errors"]


@pytest.mark.gpu
@requires_cuda
def test_a_search_shares_a_gpu_between_two_trials(tmp_path):
    from benchmarks import gpu_check

    result = gpu_check.check_search(tmp_path)
    assert result["passed"], result
