"""The commands as a user runs them: imports each needs, reading commands on a missing store, ``ui``'s port and stop."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mtl_search.cli import main
from mtl_search.record import Objective

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "optuna", "matplotlib")


def _python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, timeout=300)


def _imported_after(call: str, cwd: Path | None = None) -> tuple[list[str], subprocess.CompletedProcess]:
    """Which HEAVY packages are imported once ``call`` (Python code) has run in a fresh interpreter."""
    done = _python(f"""
        import json, sys
        from mtl_search.cli import main
        try:
            {call}
        except SystemExit:
            pass
        print("IMPORTED=" + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
        """, cwd)
    line = [x for x in done.stdout.splitlines() if x.startswith("IMPORTED=")]
    assert line, done.stderr
    return json.loads(line[-1][len("IMPORTED="):]), done


def test_help_imports_none_of_the_heavy_packages():
    imported, done = _imported_after("main(['--help'])")
    assert "usage: mtl-search" in done.stdout
    assert imported == []


def test_importing_the_package_is_lazy_and_every_public_name_still_resolves():
    done = _python("""
        import sys
        import mtl_search
        assert "torch" not in sys.modules, "import mtl_search imported torch"
        from mtl_search import *  # noqa: F403
        missing = [n for n in mtl_search.__all__ if n not in globals()]
        assert not missing, missing
        assert mtl_search.Strategy.__module__ == "mtl_search.strategy" and "Strategy" in dir(mtl_search)
        try:
            mtl_search.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise AssertionError("an unknown name must raise AttributeError")
        print("ok")
        """)
    assert done.stdout.strip() == "ok", done.stderr


def test_validate_imports_neither_ray_nor_mlflow(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("data: {dataset: synthetic_correlated, options: {samples: 120}}\nstrategies: {hard_sharing: {}, mmoe: {}}\n")
    imported, done = _imported_after(f"sys.exit(main(['validate', {str(path)!r}]))")
    assert ": ok" in done.stdout, done.stderr
    assert "ray" not in imported and "mlflow" not in imported and "optuna" not in imported


def _store(tmp_path: Path) -> str:
    """A store holding one search of two trials (written with MLflow directly: no search is run)."""
    from mtl_search.record import PARETO, TASK_METRICS
    from mtl_search.results.search_run import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    tracker = Tracker(uri, "demo")
    objectives = [Objective("y1", "val/y1", "min"), Objective("y2", "val/y2", "max")]
    parent = tracker.start_search("search-1", objectives, {"trials": 2}, "", tags={TASK_METRICS: json.dumps({"y1": "mse", "y2": "auc"})})
    for number, (strategy, y1, y2) in enumerate([("hard_sharing", 0.5, 0.7), ("mmoe", 0.25, 0.9)]):
        run = tracker.start_trial(parent, number, strategy, {"strategy": strategy}, strategy)
        for key, value in (("val/y1", y1), ("val/y2", y2), ("test/y1", y1 + 0.1), ("test/y2", y2 - 0.1)):
            tracker.client.log_metric(run, key, value)
        tracker.client.set_tag(run, PARETO, "true" if strategy == "mmoe" else "false")
        tracker.client.set_terminated(run, "FINISHED")
    tracker.client.set_terminated(parent, "FINISHED")
    return uri


def test_report_names_metrics_shows_run_ids_and_imports_neither_torch_nor_ray(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = _store(tmp_path)
    runs = {r.data.tags["mtl_search.strategy"]: r.info.run_id for r in MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("demo").experiment_id], filter_string="tags.`mtl_search.role` = 'trial'")}
    imported, done = _imported_after(f"main(['report', '--all', '--tracking-uri', {uri!r}])")
    assert "torch" not in imported and "ray" not in imported, imported
    out = done.stdout
    assert "val y1 mse" in out and "val y2 auc" in out and "test y1 mse" in out
    assert runs["mmoe"] in out and runs["hard_sharing"] in out
    assert "0.2500" in out and "0.9000" in out  # four significant digits
    assert "Best per strategy" in out and "best y1 mse" in out and "best y2 auc" in out
    csv_done = subprocess.run([sys.executable, "-m", "mtl_search.cli", "report", "--format", "csv", "--tracking-uri", uri],
                              capture_output=True, text=True)
    header, row = csv_done.stdout.splitlines()[:2]
    assert header.split(",")[:2] == ["number", "run_id"] and runs["mmoe"] in row


@pytest.mark.parametrize("command", [["report"], ["report", "--format", "csv"], ["ui"], ["predict", "0123abcd", "rows.csv"],
                                     ["register", "0123abcd", "--name", "m"], ["export", "0123abcd", "--format", "onnx", "--output", "out"]])
def test_reading_commands_in_a_folder_without_a_store_say_so_and_create_nothing(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.csv").write_text("1,2\n")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"no tracking store at {tmp_path / 'mlflow' / 'mlflow.db'}" in err and "mtl-search run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


def test_a_store_that_is_not_complete_is_not_created_or_migrated_by_report(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")  # what a search that has just begun creating its store leaves
    assert main(["report", "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert "not a complete MLflow store" in capsys.readouterr().err
    assert db.read_bytes() == b""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_on_a_port_in_use_exits_2_with_the_message(tmp_path, capsys):
    uri = _store(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port), "--tracking-uri", uri]) == 2
    captured = capsys.readouterr()
    assert f"cannot serve the UI on 127.0.0.1:{port}" in captured.err and "in use" in captured.err and "--port" in captured.err
    assert "MLflow UI on" not in captured.out  # no URL printed for a server that will not run


def test_ui_refuses_a_port_out_of_range_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ui", "--port", "99999"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "a port is 1 to 65535, got '99999'" in err and "Traceback" not in err


def test_serve_prints_the_link_only_once_the_server_answers_and_fails_when_it_cannot_listen(tmp_path, capsys):
    from mtl_search.cli import serve

    port = _free_port()
    answered: list[bool] = []

    def answering() -> None:  # the server is listening now
        with socket.socket() as probe:
            answered.append(probe.connect_ex(("127.0.0.1", port)) == 0)

    listens = (f"import socket, time; s = socket.socket(); time.sleep(1); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(2)")
    assert serve([sys.executable, "-c", listens], ("127.0.0.1", port), answering) == 0
    assert answered == [True]  # once, and only when connections were accepted
    dies = "import sys; sys.exit('OverflowError: bind(): port must be 0-65535')"
    assert serve([sys.executable, "-c", dies], ("127.0.0.1", _free_port()), lambda: answered.append(False)) == 2
    assert answered == [True] and "exited with status 1 before it listened on 127.0.0.1" in capsys.readouterr().err


SERVER_WITH_WORKERS = """
import subprocess, sys, time
# a stand-in for the MLflow server: it starts workers (as uvicorn/gunicorn do), which ignore nothing
workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
print(" ".join(str(w.pid) for w in workers), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone as far as serving goes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_server_and_its_workers(tmp_path):
    pids_file = tmp_path / "pids"
    launcher = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys
        from mtl_search.cli import serve
        sys.exit(serve([sys.executable, "-c", {SERVER_WITH_WORKERS!r}]))
        """)], stdout=open(pids_file, "w"), text=True)
    try:
        deadline = time.monotonic() + 60
        while not pids_file.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [int(p) for p in pids_file.read_text().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "a worker of the server was left running"
    finally:
        if launcher.poll() is None:
            launcher.kill()


@pytest.mark.slow
def test_sigterm_to_mtl_search_ui_leaves_no_mlflow_process(tmp_path):
    uri = _store(tmp_path)
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mtl_search.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        children = subprocess.run(["ps", "-o", "pgid=", "--ppid", str(ui.pid)], capture_output=True, text=True).stdout.split()
        group = int(children[0])
        assert subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split()
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
        time.sleep(1)
        assert subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split() == []
    finally:
        if ui.poll() is None:
            ui.kill()


def test_run_on_an_unreachable_ray_address_exits_2_naming_it_before_recording_anything(workdir, capsys):
    from conftest import tiny_space

    space = tiny_space(workdir, trials=1)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert main(["run", str(space), "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot connect to the Ray cluster at '127.0.0.1:{port}'" in err and "Traceback" not in err
    assert not (workdir / "mlflow" / "mlflow.db").exists()  # refused before the search run was created
