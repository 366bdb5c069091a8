"""A training process killed with SIGKILL resumes from its last checkpoint when rerun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("crash_worker.py")


def _run(directory, result, sleep, **kw):
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(directory), str(result), str(sleep)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,
    )


def test_sigkill_then_rerun_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    reference = _run(tmp_path / "ref", tmp_path / "ref.json", 0.0)
    assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()[-2000:]
    expected = json.loads((tmp_path / "ref.json").read_text())

    run_dir = tmp_path / "run"
    victim = _run(run_dir, tmp_path / "first.json", 0.05)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint-10").is_dir():
        assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint-10 within 120 s"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL and not (tmp_path / "first.json").exists()
    done = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    assert done and done[-1] < 40  # killed mid-run

    again = _run(run_dir, tmp_path / "second.json", 0.0)
    assert again.wait(timeout=120) == 0, again.stderr.read().decode()[-2000:]
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["resumed_from"] == done[-1]
    assert second["steps"] == list(range(1, 41))  # the same 40 steps, history carried over
    # model AND optimizer state came back: the result equals the uninterrupted run's
    assert second["weight"] == pytest.approx(expected["weight"], abs=1e-6)
