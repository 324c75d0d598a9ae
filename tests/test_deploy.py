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
from mtl_search.results.pyfunc import global_tracking_uri, log_pyfunc_model, model_inputs
from mtl_search.results.saved_models import MODEL_ARTIFACT, load_model, prediction_rows, read_inputs, save_model
from mtl_search.testing import train_table_model

FAMILIES = ["hard_sharing", "mmoe", "ple", "cross_stitch", "branching", "esmm", "adashare"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Each family's tiny model logged on a finished run of one store: {strategy: run id}, the store's URI, the table."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("deploy")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("deploy", artifact_location=(root / "artifacts").as_uri())
    registry = load_registry()
    runs, table = {}, None
    torch.set_num_threads(1)
    for name in FAMILIES:
        folder = root / name
        folder.mkdir()
        strategy = registry.strategies[name]
        kind = next(k for k in registry.backbones.values() if strategy.supports(k.name) and (k.input_ranks is None or 1 in k.input_ranks))
        model, config, table = train_table_model(strategy, kind, folder)
        (folder / "saved").mkdir()
        save_model(folder / "saved", model, config, model.problem, kind.name)
        run = client.create_run(experiment, run_name=name)
        client.set_terminated(run.info.run_id)
        client.log_artifacts(run.info.run_id, str(folder / "saved"), MODEL_ARTIFACT)  # as a front trial's model folder
        log_pyfunc_model(uri, run.info.run_id, folder / "saved", registry)
        runs[name] = run.info.run_id
    return {"uri": uri, "runs": runs, "table": table, "root": root}


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
    inputs = {c.name: c.type.name for c in info.signature.inputs.inputs}
    assert inputs == {"a": "double", "b": "double", "colour": "string"}
    assert [c.name for c in info.signature.outputs.inputs] == ["reg", "bin", "cls", "cls:0", "cls:1", "cls:2"]
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
    blank = pd.DataFrame({"a": ["", 1.5], "b": [None, 0.0], "colour": [float("nan"), "red"]})
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
