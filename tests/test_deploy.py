"""Front models a user deploys: the MLflow pyfunc model of a trial, `register`, `mlflow models serve`, ONNX / TorchScript export.

Tiny models of each built-in family are trained once on the contract table (numeric
columns with blanks, a text category with blanks), saved as a trial saves them, and
logged as a front trial's model is at the end of a search.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from mtl_search.cli import main
from mtl_search.errors import MtlSearchError
from mtl_search.registry import DISABLE_ENV, load_registry
from mtl_search.results.export import export_model
from mtl_search.results.pyfunc import global_tracking_uri, log_pyfunc_model, model_inputs
from mtl_search.results.saved_models import MODEL_ARTIFACT, load_model, predict, prediction_rows, read_inputs, save_model
from mtl_search.testing import train_table_model

FAMILIES = ["hard_sharing", "mmoe", "ple", "cross_stitch", "branching", "esmm", "adashare"]  # logged with their pyfunc models
EXPORTED = [*FAMILIES, "mtan", "lasem", "aitm", "topk_moe"]  # a strategy of every built-in family, both funnels, a sparse mixture


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Each family's tiny model logged on a finished run of one store: {strategy: run id}, the store's URI, the table."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("deploy")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("deploy", artifact_location=(root / "artifacts").as_uri())
    registry = load_registry()
    runs, saved, table = {}, {}, None
    torch.set_num_threads(1)
    for name in EXPORTED:
        folder = root / name
        folder.mkdir()
        strategy = registry.strategies[name]
        kind = next(k for k in registry.backbones.values() if strategy.supports(k.name) and (k.input_ranks is None or 1 in k.input_ranks))
        model, config, table = train_table_model(strategy, kind, folder)
        (folder / "saved").mkdir()
        save_model(folder / "saved", model, config, model.problem, kind.name)
        saved[name] = folder / "saved"
        if name not in FAMILIES:
            continue
        run = client.create_run(experiment, run_name=name)
        client.set_terminated(run.info.run_id)
        client.log_artifacts(run.info.run_id, str(folder / "saved"), MODEL_ARTIFACT)  # as a front trial's model folder
        log_pyfunc_model(uri, run.info.run_id, folder / "saved", registry)
        runs[name] = run.info.run_id
    return {"uri": uri, "runs": runs, "saved": saved, "table": table, "root": root}


def _expected(store, name: str, rows: Path) -> pd.DataFrame:
    """What `mtl-search predict` answers for ``rows``."""
    model = load_model(store["runs"][name], store["uri"])
    return pd.DataFrame(prediction_rows(model, read_inputs(rows, model.problem)))


def test_every_family_loads_as_pyfunc_in_a_fresh_interpreter_and_predicts_as_mtl_search_predict(store, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({store['uri']!r})
        rows = pd.read_csv({str(store['table'])!r})  # the raw table: text categories, blanks
        out = {{}}
        for name, run_id in json.loads(sys.argv[1]).items():
            model = mlflow.pyfunc.load_model(f"runs:/{{run_id}}/model")
            out[name] = model.predict(rows).to_dict(orient="list")
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(store["runs"])], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for name in FAMILIES:
        expected = _expected(store, name, store["table"])
        frame = pd.DataFrame(got[name])
        assert list(frame.columns) == list(expected.columns), name
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False, atol=1e-6, obj=name)
    assert "esmm" in got and "conv.joint" in got["esmm"]  # the funnel's pCTCVR


def test_the_logged_model_has_a_signature_an_input_example_and_its_requirements(store):
    import mlflow

    with global_tracking_uri(store["uri"]):
        info = mlflow.models.get_model_info(f"runs:/{store['runs']['mmoe']}/model")
        model = mlflow.pyfunc.load_model(f"runs:/{store['runs']['mmoe']}/model")
    assert [(c.name, c.required) for c in info.signature.inputs.inputs] == [("a", True), ("b", True), ("colour", True)]
    # what a user's DataFrame may hold: integers in a numeric column, a category column of blanks only (float NaN)
    rows = pd.DataFrame({"a": [1, 2], "b": [0.5, float("nan")], "colour": [float("nan"), float("nan")], "other": ["x", "y"]})
    csv = Path(store["root"]) / "ints.csv"
    csv.write_text("a,b,colour\n1,0.5,\n2,,\n")
    expected = _expected(store, "mmoe", csv)
    pd.testing.assert_frame_equal(model.predict(rows), expected, check_dtype=False, atol=1e-6)
    # predict's columns: the value, P(positive class) named by that class, the predicted class and each class's probability
    assert [c.name for c in info.signature.outputs.inputs] == list(expected.columns)
    assert list(expected.columns)[:3] == ["reg", "bin:1", "cls"] and all(c.startswith("cls:") for c in list(expected.columns)[3:])
    assert info.saved_input_example_info is not None
    requires = info.metadata["mtl_search"]
    assert requires["strategy"] == {"name": "mmoe", "plugin": "mixture_of_experts", "distribution": "mtl-search", "version": requires["strategy"]["version"]}


def test_a_model_whose_plugin_is_missing_names_the_plugin_and_its_distribution(store, monkeypatch):
    import mlflow

    monkeypatch.setenv(DISABLE_ENV, "funnel")
    with global_tracking_uri(store["uri"]), pytest.raises(MtlSearchError, match=r"strategy 'esmm' from plugin 'funnel' \(distribution mtl-search\)"):
        mlflow.pyfunc.load_model(f"runs:/{store['runs']['esmm']}/model")


def test_rows_missing_a_column_or_with_text_in_a_numeric_column_are_errors_naming_the_column(store):
    model = load_model(store["runs"]["hard_sharing"], store["uri"])
    rows = pd.read_csv(store["table"])
    with pytest.raises(MtlSearchError, match=r"lack column 'colour'"):
        model_inputs(rows.drop(columns=["colour"]), model.problem)
    rows["a"] = rows["a"].astype(object)
    rows.loc[3, "a"] = "ten"
    with pytest.raises(MtlSearchError, match=r"column 'a' is numeric in the model; it holds text"):
        model_inputs(rows, model.problem)
    # a DataFrame's blanks: "" or None in a numeric column, NaN or None for a category, as a CSV's empty cells
    blank = pd.DataFrame({"a": ["", "1.5"], "b": [None, 0.0], "colour": [float("nan"), "red"]})  # numbers as text too
    csv = Path(store["root"]) / "blank.csv"
    csv.write_text("a,b,colour\n,,\n1.5,0.0,red\n")
    assert torch.equal(model_inputs(blank, model.problem).isnan(), read_inputs(csv, model.problem).isnan())
    assert torch.allclose(model_inputs(blank, model.problem).nan_to_num(), read_inputs(csv, model.problem).nan_to_num())


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_register_then_mlflow_models_serve_answers_raw_rows_with_predicts_predictions(store, capsys):
    import os
    import signal
    import time
    import urllib.request

    assert main(["register", store["runs"]["esmm"], "--name", "front-esmm", "--tracking-uri", store["uri"]]) == 0
    assert "models:/front-esmm/1" in capsys.readouterr().out
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/front-esmm/1", "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.stderr.read()[-3000:]
        rows = pd.read_csv(store["table"])[["a", "b", "colour"]].head(8)  # raw: blanks and text categories
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker: stopped by the process group's id
        server.wait(timeout=60)
    csv = Path(store["root"]) / "rows.csv"
    rows.to_csv(csv, index=False)
    expected = _expected(store, "esmm", csv)
    pd.testing.assert_frame_equal(pd.DataFrame(answer), expected, check_dtype=False, atol=1e-6)
    assert "conv.joint" in answer[0]


@pytest.mark.parametrize("args, message", [
    (["register", "nope", "--name", "x"], "no run 'nope'"),
    (["register", "{no_model}", "--name", "x"], "has no pyfunc model"),
])
def test_register_errors_are_one_line_with_exit_2(store, capsys, args, message):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store["uri"])
    no_model = client.create_run(client.get_experiment_by_name("deploy").experiment_id).info.run_id
    args = [a.format(no_model=no_model) for a in args] + ["--tracking-uri", store["uri"]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _encode_with_preprocessing_json(spec: dict, table: Path) -> torch.Tensor:
    """What a server without this package does: build ``x`` from raw CSV rows with preprocessing.json alone."""
    import csv

    rows = list(csv.DictReader(table.open()))
    x = []
    for row in rows:
        values = []
        for column in spec["columns"]:
            text = row[column["name"]]
            if column["kind"] == "numeric":
                values.append(float(text) if text != "" else float("nan"))
            else:
                values.append(float(column["codes"].get(text, column["missing_or_unseen"])))
        x.append(values)
    return torch.tensor(x, dtype=torch.float32)


@pytest.mark.parametrize("name", EXPORTED)
def test_onnx_and_torchscript_exports_predict_as_predict_or_are_refused_with_the_reason(store, tmp_path, name):
    import onnxruntime

    model = load_model(store["saved"][name])
    x = read_inputs(store["table"], model.problem)
    expected = predict(model, x)
    if name == "topk_moe":
        for fmt in ("onnx", "torchscript"):
            with pytest.raises(MtlSearchError, match="data-dependent sort and gather"):
                export_model(model, tmp_path / fmt, fmt)
        assert not list(tmp_path.rglob("model.*"))
        return
    onnx_file, spec_file = export_model(model, tmp_path / "onnx", "onnx")
    spec = json.loads(spec_file.read_text())
    assert [c["name"] for c in spec["columns"]] == model.problem.features.names
    # the JSON alone encodes the raw rows as the package does: blanks NaN, categories by code, unseen 0
    assert torch.equal(_encode_with_preprocessing_json(spec, store["table"]).nan_to_num(-7), x.nan_to_num(-7))
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == list(expected) == list(spec["outputs"])
    for output, got in zip(expected, session.run(None, {"x": x.numpy()})):
        assert torch.allclose(torch.from_numpy(got), expected[output], atol=1e-5, rtol=0), f"{name}: onnxruntime's {output}"
    script, _ = export_model(model, tmp_path / "torchscript", "torchscript")
    got = torch.jit.load(str(script)).eval()(x)
    assert list(got) == list(expected)
    for output in expected:
        assert torch.allclose(got[output], expected[output], atol=1e-5, rtol=0), f"{name}: TorchScript's {output}"


def test_the_export_check_refuses_a_graph_that_bakes_in_the_batch(store, tmp_path, monkeypatch):
    """A model whose forward reads the batch size as a Python number traces to a graph for that size only: refused, nothing left behind."""
    model = load_model(store["saved"]["hard_sharing"])
    forward = type(model).forward

    def batch_bound(self, x):
        out = forward(self, x)
        return {task: value + torch.zeros(len(x), 1) * 0 for task, value in out.items()}  # len(x): a constant in the trace

    monkeypatch.setattr(type(model), "forward", batch_bound)
    with pytest.raises(MtlSearchError, match=r"cannot export HardSharingModel as onnx: the exported graph (fails on \d+ rows|.* differs from predict)"):
        export_model(model, tmp_path, "onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_export_command_writes_the_files_and_errors_are_one_line_with_exit_2(store, tmp_path, capsys, monkeypatch):
    run = store["runs"]["hard_sharing"]
    assert main(["export", run, "--format", "onnx", "--output", str(tmp_path / "out"), "--tracking-uri", store["uri"]]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.onnx", "preprocessing.json"}
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    for args, message in [([run], "pip install 'mtl-search[export]'"), (["nope"], "no run 'nope'")]:
        assert main(["export", *args, "--format", "onnx", "--output", str(tmp_path / "x"), "--tracking-uri", store["uri"]]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_front_models_are_logged_once_and_a_model_that_cannot_be_is_a_tag_not_a_lost_search(store, tmp_path, capsys):
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from mtl_search.record import PYFUNC_ERROR
    from mtl_search.results.pyfunc import log_front_models

    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("deploy").experiment_id
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.pt", "config.json"):
        (broken / name).write_bytes((store["saved"]["hard_sharing"] / name).read_bytes())
    (broken / "problem.json").write_text("{")  # a corrupt folder
    fresh = client.create_run(experiment).info.run_id
    done = store["runs"]["hard_sharing"]  # already carries its pyfunc model (a resumed search's earlier front)
    trial = lambda run_id, folder: SimpleNamespace(pareto=True, checkpoint=str(folder), run_id=run_id)  # noqa: E731
    log_front_models(store["uri"], SimpleNamespace(trials=[trial(done, store["saved"]["hard_sharing"]), trial(fresh, broken)]))
    models = client.search_logged_models([experiment], filter_string="name = 'model'")
    assert sum(m.source_run_id == done for m in models) == 1 and not any(m.source_run_id == fresh for m in models)
    assert "JSONDecodeError" in client.get_run(fresh).data.tags[PYFUNC_ERROR]
    assert f"no MLflow pyfunc model for run {fresh}" in capsys.readouterr().err
