"""The benchmarks cannot rot: the GPU runbook's tiny mode runs on CPU (its paper sizes build
on meta), and bench_step runs at tiny settings on a synthetic world."""

import json
import os
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


def _bench_step(*args) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/bench_step.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


TINY_STEP = (
    *("--synthetic", "--batch", "4", "--render-batch", "2", "--render-steps", "2"),
    *("--steps", "1", "--warmup", "1", "--profile", "1"),
)


def check_tiny_bench_step(stdout: str, results: dict) -> None:
    """What bench_step prints and writes at ``TINY_STEP``: every section, positive figures."""
    for heading in (
        "gemm: fp32 GFLOP/s",
        "note: synthetic world",
        "stage 1: batch 4",
        "frozen UNet",
        "loop overhead over the bare step",
        "torch.profiler",
        "stage 2: batch 4",
        "baseline (without stage 1): batch 4",
        "render: one evaluate batch of 2 images",
        "levers",
        "baseline: encoder input from the latent cache, real loop",
    ):
        assert heading in stdout, heading
    assert results["gemm"]["ceiling_gflops"] > 0
    assert set(results["gemm"]["gflops"]) == {"1024", "2048"}
    flops = results["stage1"]["flops"]
    assert flops["total_gflop"] > flops["unet_gflop"] > 0
    assert 0 < flops["unet_share"] < 1 and 0 < results["stage1"]["fraction_of_ceiling"]
    assert flops["text_encoder_gflop"] > 0 and "vae_tower_gflop" not in flops  # cached latents
    assert results["baseline"]["flops"]["vae_tower_gflop"] > 0  # the baseline runs its tower
    parts = {"data", "forward", "backward", "optimizer", "grad_norm", "logging", "checkpoint"}
    for section in ("stage1", "stage2", "baseline"):
        r = results[section]
        assert r["batch"] == 4 and r["flops"]["total_gflop"] > 0
        assert min(r["bare"].values()) > 0
        assert r["loop"]["step_s"] > 0 and r["lean_loop"]["step_s"] > 0
        assert r["loop"]["measured_step_s"] > 0 and r["loop"]["profile_top"]
        assert parts <= set(r["loop"]["breakdown"])
        assert r["loop"]["per_call_s"]["checkpoint"] > 0  # the run's last step saves
    render = results["render"]
    assert render["batch"] == 2 and render["steps"] == 2
    assert render["bare_s"] > 0 and render["batch_s"] > 0
    assert render["breakdown"]["UNet"] > 0
    levers = results["levers"]
    assert {"stage1_lean_loop", "baseline_lean_loop", "render_sampler"} <= set(levers)
    # conf/base's baseline reads its encoder's input through the frozen T2I VAE tower
    assert levers["baseline_latent_cache"]["applicable"]
    assert levers["baseline_latent_cache"]["loop"]["ratio"] > 0
    assert levers["render_half_batch"]["batch"] == 1 and levers["render_half_batch"]["ratio"] > 0
    compiled = levers["baseline_compiled_encoder"]  # --compile: timed, or said why not
    if compiled["applicable"]:
        assert compiled["ratio"] > 0 and compiled["first_step_s"] > 0
    else:
        assert compiled["reason"]
    assert all(v["ratio"] > 0 for v in levers.values() if "ratio" in v)


@pytest.mark.slow
def test_bench_step_tiny_prints_every_section_and_writes_its_json(tmp_path):
    """bench_step at tiny settings, on a synthetic world of its own (data/ is not read)."""
    path = tmp_path / "step.json"
    stdout = _bench_step(*TINY_STEP, "--compile", "--json", str(path))
    check_tiny_bench_step(stdout, json.loads(path.read_text()))


def test_bench_step_measures_the_gemm_ceiling_alone(tmp_path):
    path = tmp_path / "gemm.json"
    stdout = _bench_step("--only", "gemm", "--json", str(path))
    assert "ceiling" in stdout and "stage 1" not in stdout
    results = json.loads(path.read_text())
    assert results["gemm"]["ceiling_gflops"] > 0 and "levers" not in results


def test_bench_openai_client_runs_the_hand_written_side_without_the_package():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/bench_openai_client.py"), "--images", "6"]
        + ["--only", "clean", "redirect"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "OPENAI_PATH"},
    )
    assert out.returncode == 0, out.stderr
    rows = {
        line.split()[0]: line.split() for line in out.stdout.splitlines() if "hand-written" in line
    }
    assert rows["clean"][3] == "6"  # every image captioned
    assert rows["redirect"][3] == "0" and "0 sent on" in out.stdout  # the redirect is refused
