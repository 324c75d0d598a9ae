"""A real two-node Ray cluster on this machine (issue 7): a search with --address runs trials on both nodes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
from conftest import tiny_space
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(args: list[str], temp_dir: str) -> subprocess.Popen:
    """``ray start --block`` in its own process group, so the fixture can end exactly what it started."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def wait_for_nodes(address: str, count: int, timeout: float = 120) -> None:
    script = (f"import ray, time; ray.init(address={address!r}, logging_level='ERROR'); deadline = time.time() + {timeout}\n"
              f"while len([n for n in ray.nodes() if n['Alive']]) < {count} and time.time() < deadline: time.sleep(0.5)\n"
              f"assert len([n for n in ray.nodes() if n['Alive']]) >= {count}")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=timeout + 60, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


@pytest.fixture
def two_node_cluster():
    """A head node and a worker node, one CPU each; yields the head's address and tears both down."""
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [start_node(["--head", f"--port={port}", "--include-dashboard=false"], temp_dir)]
    try:
        wait_for_nodes(address, 1)
        nodes.append(start_node([f"--address={address}"], temp_dir))
        wait_for_nodes(address, 2)
        yield address
    finally:
        for node in reversed(nodes):
            try:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_search_on_a_two_node_cluster_runs_trials_on_both_nodes(two_node_cluster, workdir):
    space = tiny_space(workdir, trials=4)
    run = subprocess.run([sys.executable, "-m", "mtl_search.cli", "run", str(space), "--address", two_node_cluster],
                         cwd=workdir, capture_output=True, text=True, timeout=400, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "mtl_search.cli", "report", "--format", "json"], cwd=workdir,
                            capture_output=True, text=True, check=True)
    trials = json.loads(report.stdout)["trials"]
    assert len(trials) == 4 and all(t["status"] == "finished" and t["device"] == "cpu" for t in trials)
    nodes = {t["node_id"] for t in trials}
    assert len(nodes) == 2  # one CPU per node and two trials at a time: both nodes trained trials

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.data.tags["mtl_search.node_id"] for r in runs if r.data.tags.get("mtl_search.role") == "trial"} == nodes
