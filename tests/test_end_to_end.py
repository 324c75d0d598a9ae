"""`mtl-search run` on a tiny space, then `report`, then what MLflow holds."""
from __future__ import annotations

import csv
import io
import json

import torch
from conftest import tiny_space

from mtl_search.cli import main
from mtl_search.results.store import default_tracking_uri


def test_run_report_and_mlflow_layout(ray_session, workdir, capsys):
    space = tiny_space(workdir, trials=4)
    assert main(["run", str(space)]) == 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "Pareto front" in out

    assert main(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["experiment"] == "tiny"
    assert report["objectives"] == [{"name": "y1", "direction": "min"}, {"name": "y2", "direction": "min"}]
    assert len(report["trials"]) == 4 and sorted(t["number"] for t in report["trials"]) == [0, 1, 2, 3]
    for trial in report["trials"]:
        assert trial["status"] == "finished"
        assert set(trial["val"]) == {"y1", "y2"} and set(trial["test"]) == {"y1", "y2"}
        assert trial["strategy"] in ("hard_sharing", "mmoe") and trial["params"]["strategy"] == trial["strategy"]
    front = [t for t in report["trials"] if t["pareto"]]
    assert front
    # the front is exactly the non-dominated set of the reported values
    for t in report["trials"]:
        dominated = any(o["val"]["y1"] <= t["val"]["y1"] and o["val"]["y2"] <= t["val"]["y2"] and o["val"] != t["val"] for o in report["trials"])
        assert t["pareto"] == (not dominated)
    assert report["hypervolume"] > 0

    assert main(["report", "--format", "csv", "--all"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and "val/y1" in rows[0]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mtl_search.role") == "search"]
    children = [r for r in runs if r.data.tags.get("mtl_search.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert sum(c.data.tags["mtl_search.pareto"] == "true" for c in children) == len(front)
    assert {"val/y1", "test/y2", "params", "train_seconds"} <= set(children[0].data.metrics)
    history = client.get_metric_history(children[0].info.run_id, "train_loss/y1")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "front")}
    assert "front/front.png" in artifacts and "front/search.json" in artifacts
    child_artifacts = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"sharing_map.json", "sharing_map.png"} <= child_artifacts
    pareto_child = next(c for c in children if c.data.tags["mtl_search.pareto"] == "true")
    import mlflow
    from mtl_search.results.pyfunc import global_tracking_uri
    from mtl_search.results.saved_models import load_model, prediction_rows

    with global_tracking_uri(default_tracking_uri()):  # runs:/<id>/model resolves the run's pyfunc model through the global URI
        assert {a.path for a in client.list_artifacts(pareto_child.info.run_id, "model")} >= {"model/model.pt", "model/config.json", "model/MLmodel"}
        rows = torch.randn(5, 12)
        served = mlflow.pyfunc.load_model(f"runs:/{pareto_child.info.run_id}/model").predict(rows.numpy())
    assert served.to_dict(orient="records") == prediction_rows(load_model(pareto_child.info.run_id), rows)
    hv = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [m.step for m in hv] == [1, 2, 3, 4] and hv[-1].value == report["hypervolume"]
