"""multi_digits: labels are the digits actually placed; digits.yaml validates and its reduced form runs."""
from __future__ import annotations

import json

import pytest
import torch
from mtl_search_plugins.datasets import compose_digits, multi_digits
from sklearn.datasets import load_digits

from mtl_search.cli import main

SOURCE = load_digits()
SOURCE_IMAGES = torch.tensor(SOURCE.images, dtype=torch.float32).reshape(len(SOURCE.images), -1) / 16.0


def _source_index(crops: torch.Tensor) -> torch.Tensor:
    """For each 8x8 crop, the index of the identical source image (every source image is unique)."""
    matches = (crops.reshape(len(crops), 1, -1) == SOURCE_IMAGES.unsqueeze(0)).all(-1)
    assert (matches.sum(1) == 1).all(), "a crop is not exactly one source digit"
    return matches.int().argmax(1)


def test_labels_are_the_digits_placed_and_source_digits_do_not_cross_splits():
    data = multi_digits(samples=300, overlap=0.0, shift=0, noise=0.0, seed=3, tasks=["left", "right", "sum"], val=0.2, test=0.2)
    assert data.problem.input_shape == (1, 8, 16)
    assert [t.name for t in data.problem.tasks] == ["left", "right", "sum"]
    used = []
    for split in (data.train, data.val, data.test):
        left = _source_index(split.x[:, 0, :, :8])
        right = _source_index(split.x[:, 0, :, 8:])
        labels = torch.tensor(SOURCE.target)
        assert torch.equal(split.y["left"], labels[left]) and torch.equal(split.y["right"], labels[right])
        assert torch.equal(split.y["sum"], (labels[left] + labels[right]).float())
        used.append(set(left.tolist()) | set(right.tolist()))
    assert not used[0] & used[1] and not used[0] & used[2] and not used[1] & used[2]
    assert (len(data.train), len(data.val), len(data.test)) == (180, 60, 60)


def test_digits_are_shifted_within_range_and_overlaps_keep_the_brighter_pixel():
    images = torch.zeros(2, 8, 8)
    images[0, 0, 0] = 1.0   # top-left pixel of the "left" digit
    images[1, 7, 7] = 0.5   # bottom-right pixel of the "right" digit
    g = torch.Generator().manual_seed(0)
    n = 200
    canvas = compose_digits(images, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long), overlap=0.5, shift=2, generator=g)
    assert canvas.shape == (n, 1, 10, 14)  # height 8 + 2, width offset 4 + 8 + 2
    left_at = {tuple(p[1:].tolist()) for p in (canvas[:, 0] == 1.0).nonzero()}
    right_at = {tuple(p[1:].tolist()) for p in (canvas[:, 0] == 0.5).nonzero()}
    assert left_at == {(dy, dx) for dy in range(3) for dx in range(3)}  # every shift in [0, 2] occurs, no other
    assert right_at == {(7 + dy, 4 + 7 + dx) for dy in range(3) for dx in range(3)}
    assert int((canvas != 0).sum()) == 2 * n

    a, b = torch.rand(2, 8, 8, generator=g)
    stacked = compose_digits(torch.stack([a, b]), torch.tensor([0]), torch.tensor([1]), overlap=1.0, shift=0, generator=g)
    assert torch.equal(stacked[0, 0], torch.maximum(a, b))


@pytest.mark.parametrize("options, message", [
    ({"tasks": ["left", "middle"]}, "tasks must be a list of distinct names among left, right, sum"),
    ({"overlap": 1.5}, "overlap must lie in"),
    ({"shift": -1}, "shift must be an integer"),
])
def test_bad_options_are_refused(options, message):
    defaults = dict(samples=100, overlap=0.0, shift=1, noise=0.0, seed=0, tasks=["left", "right"], val=0.2, test=0.2)
    with pytest.raises(ValueError, match=message):
        multi_digits(**{**defaults, **options})


def _reduced_digits_space(root, directory):
    """digits.yaml with tiny data, small channels and one epoch."""
    import yaml

    space = yaml.safe_load((root / "search_spaces" / "digits.yaml").read_text())
    space["data"]["options"].update(samples=200)
    space["backbone"]["channels"] = [4, 8]
    space["training"].update(epochs=1, batch_size=64)
    path = directory / "digits_reduced.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def test_every_strategy_of_the_digits_space_trains_a_trial(request, tmp_path):
    """Each strategy's sampled configuration, built and trained by the trial code (without Ray) for one epoch."""
    import optuna

    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import TrialSpace
    from mtl_search.search.space import load_space
    from mtl_search.search.trial import TrialPlan, train_trial

    space = load_space(_reduced_digits_space(request.config.rootpath, tmp_path))
    plan, dataset, _ = prepare(space)
    trial_plan = TrialPlan(plan.problem, {n: s for n, (s, _) in plan.strategies.items()}, plan.backbone_kind,
                           {n: cls for n, (cls, _) in plan.weightings.items()}, epochs=1, patience=1, seed=0, cpus_per_trial=1, gpus_per_trial=0)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    assert list(plan.strategies) == ["hard_sharing", "cross_stitch", "mtan", "l2_soft", "mrn", "mmoe"]
    for name in plan.strategies:
        study.enqueue_trial({"strategy": name})
        config = TrialSpace(plan)(study.ask())
        reports = []
        result = train_trial(config, dataset, trial_plan, lambda metrics, checkpoint_dir=None: reports.append(metrics))
        assert config["strategy"] == name and len(reports) == 2  # one epoch, then the final result
        assert 0.0 <= result["val/left"] <= 1.0 and 0.0 <= result["test/right"] <= 1.0
        maps = json.loads(result["sharing_map_json"])
        assert maps and all(m["rows"] == ["left", "right"] for m in maps.values())


@pytest.mark.slow  # Ray and MLflow start-up dominate; the trial code of every strategy runs in the test above
def test_reduced_digits_search_runs(ray_session, workdir, capsys, request):
    import yaml

    path = _reduced_digits_space(request.config.rootpath, workdir)
    space = yaml.safe_load(path.read_text())
    space["search"].update(trials=2)
    space["baseline"] = {"trials": 1}
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["trials"]) == 2 and all(t["status"] == "finished" for t in report["trials"])
    assert [o["name"] for o in report["objectives"]] == ["left", "right"]
    assert all(o["direction"] == "max" for o in report["objectives"])
