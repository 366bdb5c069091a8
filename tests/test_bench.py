"""The GPU runbook cannot rot: its tiny mode runs on CPU, its paper sizes build on meta."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu_smoke.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_gpu_smoke_tiny_prints_one_table():
    lines = [
        line
        for line in _run("--tiny", "--steps", "1").splitlines()
        if line.startswith(("stage 1", "stage 2"))
    ]
    assert len(lines) == 6  # stage 1 and 2 x (ours bf16, ours fp32, reference fp32)
    assert all(line.rstrip().endswith("x") for line in lines)


def test_gpu_smoke_builds_the_paper_sized_architectures():
    counts = {
        line[:18].strip(): float(line[18:].split()[0])
        for line in _run("--count").splitlines()
        if line.strip()
    }
    assert counts["SD-2.1 UNet"] == pytest.approx(865.9, abs=0.5)  # stable-diffusion-2-1-base
    assert counts["Qwen2.5-3B"] == pytest.approx(3085.9, abs=5)
    assert counts["Florence-2-large"] == pytest.approx(770, abs=10)
    assert counts["OpenCLIP-H text"] == pytest.approx(340.4, abs=1)
