"""Shared fixtures: one Ray instance per test session, tiny spaces, a scratch working directory."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters need no token

TINY_SPACE = """
experiment: {experiment}
data:
  dataset: synthetic_correlated
  options: {{samples: 400, input_dim: 12, seed: 0}}
backbone: {{kind: mlp, depth: 2, width: 16}}
strategies:
{strategies}
training:
  epochs: 2
  batch_size: 64
  lr: 0.005
search:
  trials: {trials}
  concurrency: 2
  seed: 0
{extra}
"""


def tiny_space(tmp_path: Path, strategies: str = "  hard_sharing: {}\n  mmoe: {experts: {int: [2, 3]}, expert_width: 8}",
               trials: int = 4, experiment: str = "tiny", extra: str = "", name: str = "space.yaml") -> Path:
    """Write a small, fast space file and return its path.

    Its references are the fixed kind (one training per task on the driver) unless ``extra``
    sets ``baseline:``: searched references add Tune trials that only their own tests need.
    """
    path = tmp_path / name
    extra = textwrap.dedent(extra)
    if "baseline:" not in extra:
        extra += "\nbaseline: {mode: fixed}\n"
    path.write_text(TINY_SPACE.format(experiment=experiment, strategies=strategies, trials=trials, extra=extra))
    return path


def one_reference_trial(space: Path, folder: Path) -> Path:
    """A copy of a shipped space in ``folder`` with one single-task reference trial per task (its tests' budget)."""
    import yaml

    raw = yaml.safe_load(space.read_text())
    raw["baseline"] = {**(raw.get("baseline") or {}), "trials": 1}
    copy = folder / space.name
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    return copy


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that runs a search."""
    import ray

    # "local": a fresh instance, never a cluster another process started with `ray start` on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a scratch directory, so the default MLflow store lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread avoids oversubscribing a 2-core machine (far faster there)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
