"""Device selection, samplers, schedulers and the new space keys (issue 7), without running a search."""
from __future__ import annotations

import pytest
from conftest import tiny_space

from mtl_search.errors import SpaceError
from mtl_search.search.prepare import prepare
from mtl_search.search.sampling import grid_space, make_sampler
from mtl_search.search.space import load_space
from mtl_search.search.trial import select_device
from mtl_search.search.tune import make_scheduler


def test_device_follows_the_gpus_given_to_the_trial():
    assert select_device(0.0, cuda_available=True) == "cpu"
    assert select_device(0.5, cuda_available=True) == "cuda"  # a fraction of a GPU is a GPU
    assert select_device(0.0, cuda_available=False) == "cpu"
    with pytest.raises(RuntimeError, match="gpus_per_trial=1 but CUDA is not available"):
        select_device(1.0, cuda_available=False)


def test_grid_lists_every_discrete_value_and_rejects_continuous_knobs(tmp_path):
    path = tiny_space(tmp_path)
    path.write_text(path.read_text().replace("width: 16}", "width: 16, norm: none, dropout: 0.0}"))
    plan, _, _ = prepare(load_space(path))
    grid = grid_space(plan)
    assert grid["strategy"] == ["hard_sharing", "mmoe"]
    assert grid["mmoe.experts"] == [2, 3]
    assert grid["hard_sharing.shared_depth"] == [0, 1, 2]  # bounded by the backbone's depth (2)
    assert grid["backbone.activation"] == ["relu", "gelu", "tanh", "silu"]
    assert "training.lr" not in grid and "backbone.norm" not in grid  # fixed in the space: never suggested
    continuous = _with_search(tmp_path, "sampler: grid")
    continuous.write_text(continuous.read_text().replace("lr: 0.005", "lr: {loguniform: [0.001, 0.01]}").replace("width: 16}", "width: 16, dropout: 0.0}"))
    with pytest.raises(SpaceError) as error:
        prepare(load_space(continuous))
    assert error.value.path == "training.lr" and "grid sampler needs discrete values" in str(error.value)


def test_every_sampler_is_built_and_an_unknown_one_is_a_space_error(tmp_path):
    import optuna

    path = tiny_space(tmp_path)
    path.write_text(path.read_text().replace("width: 16}", "width: 16, dropout: 0.0}"))
    plan, _, _ = prepare(load_space(path))
    expected = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler, "random": optuna.samplers.RandomSampler,
                "gp": optuna.samplers.GPSampler, "grid": optuna.samplers.GridSampler}
    for name, cls in expected.items():
        assert isinstance(make_sampler(name, 0, 1, plan), cls)
    with pytest.raises(SpaceError, match="unknown sampler 'cmaes'"):
        load_space(_with_search(tmp_path, "sampler: cmaes"))


def _with_search(tmp_path, line: str):
    path = tiny_space(tmp_path, name="bad.yaml")
    path.write_text(path.read_text().replace("  seed: 0\n", f"  seed: 0\n  {line}\n"))
    return path


@pytest.mark.parametrize("line, where", [
    ("early_stopping: hyperband", "search.early_stopping"),
    ("max_failures: -1", "search.max_failures"),
])
def test_bad_search_keys_name_their_path(tmp_path, line, where):
    with pytest.raises(SpaceError) as error:
        load_space(_with_search(tmp_path, line))
    assert error.value.path == where


def test_schedulers_watch_the_score_and_let_the_last_epoch_report():
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    assert make_scheduler("none", 5) is None
    asha = make_scheduler("asha", 5)
    assert isinstance(asha, ASHAScheduler) and asha.metric == "score" and not asha._stop_last_trials
    median = make_scheduler("median", 5)
    assert isinstance(median, MedianStoppingRule) and median.metric == "score"

