"""kedro-viz works offline: `build` writes every pipeline's lineage; `run` serves and stops."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vlv_pipeline.pipeline_registry import register_pipelines

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}


def _expected_nodes() -> dict[str, set[str]]:
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    # kedro-viz names a namespaced node (the study's points) without its namespace
    return {
        name: {n.name.rsplit(".", 1)[-1] for n in p.nodes}
        for name, p in register_pipelines().items()
    }


@pytest.mark.slow
def test_viz_build_writes_every_pipelines_nodes():
    subprocess.run(  # writes build/ (ignored by git) in the project
        [KEDRO, "viz", "build"],
        cwd=ROOT,
        env=ENV,
        check=True,
        capture_output=True,
        timeout=300,
    )
    main = json.loads((ROOT / "build/api/main").read_text())
    expected = _expected_nodes()
    for name, nodes in expected.items():
        pipeline = json.loads((ROOT / f"build/api/pipelines/{name}").read_text())
        names = {n["name"] for n in pipeline["nodes"] if n["type"] == "task"}
        assert nodes <= names, f"{name}: missing {nodes - names}"
    assert {p["id"] for p in main["pipelines"]} >= set(expected)


def _free_port() -> int:
    """A free port below the ephemeral range (kedro-viz refuses ports there in use by clients)."""
    import random

    for port in random.sample(range(42000, 48000), 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 42000-48000")


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/main", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_viz_run_serves_and_stops_with_its_whole_process_group(tmp_path):
    port, log = _free_port(), tmp_path / "viz.log"
    process = subprocess.Popen(
        [KEDRO, "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,  # its own process group: the server's children are in it
    )
    try:
        deadline = time.time() + 180
        while not _serving(port):
            assert process.poll() is None, f"kedro viz run exited: {log.read_text()[-3000:]}"
            assert time.time() < deadline, "kedro viz run did not serve within 180 s"
            time.sleep(1)
        api = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/main").read())
        assert {p["id"] for p in api["pipelines"]} >= {"__default__", "stage2", "evaluate"}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the pid alone would leave children serving
        process.wait(timeout=30)
    deadline = time.time() + 30
    while _serving(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _serving(port), "a kedro viz child process is still serving"
