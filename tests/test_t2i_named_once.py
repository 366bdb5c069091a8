"""The T2I model is named once per environment (globals.yml `t2i`) and read from one block,
``params:t2i``, by every node that loads it: one ``--params t2i=...`` moves every stage, and
no stage has a key of its own that could name another model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from vlv_pipeline.config import StudyConfigLoader
from vlv_pipeline.params.cache import CacheParams
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.reconstruct import ReconstructParams
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.stage2 import Stage2Params
from vlv_pipeline.params.study import FLOW_TEACHER, TEACHER_POINT
from vlv_pipeline.params.t2i import T2IParams

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))

# every node that loads the T2I model (or its VAE or text side), by pipeline
READERS = {
    "cache": {"encode_latents"},
    "stage1": {"load_stage1_data", "train_stage1", "validate_stage1"},
    "stage2": {"train_stage2", "train_baseline"},
    "synthesize": {"cache_pair_embeddings"},
    "evaluate": {"reconstruct", "rerender_table1"},
    "reconstruct": {"render_reconstructions", "score_reconstructions"},
}
# the keys each stage once had for it: (block, key, its model)
OLD_KEYS = [
    ("stage1", "t2i", Stage1Params),
    ("stage1", "t2i_dtype", Stage1Params),
    ("stage2", "t2i", Stage2Params),
    ("evaluate", "stage1_t2i", EvaluateParams),
    ("reconstruct", "t2i", ReconstructParams),
    ("reconstruct", "t2i_dtype", ReconstructParams),
]


def _params(env: str | None, runtime: dict | None = None) -> dict:
    loader = StudyConfigLoader(
        str(ROOT / "conf"),
        env=env,
        base_env="base",
        default_run_env="local",
        merge_strategy={"parameters": "soft"},
        runtime_params=runtime,
    )
    return loader["parameters"]


@pytest.mark.parametrize(
    ("env", "model"),
    [
        (None, "src/vlv_pipeline/assets/teacher"),
        ("paper", "stabilityai/stable-diffusion-2-1-base"),
        ("rehearsal", "data/rehearsal/06_models/t2i"),
    ],
)
def test_every_environment_names_its_t2i_once_in_one_block(env, model):
    params = _params(env)
    assert T2IParams(**params["t2i"]) == T2IParams(model=model)
    for block, key, _ in OLD_KEYS:  # no stage names it again
        assert key not in params[block]
    assert params["cache"]["vae"] is None  # the cache encodes with the T2I model's VAE
    assert CacheParams(**params["cache"]).vae_spec(T2IParams(**params["t2i"])).model_dump() == {
        "pretrained": model,
        "subfolder": "vae",
        "dtype": "float32",
        "init": None,
    }
    if env == "paper":  # captions are rendered by another model: a key of its own
        assert params["evaluate"]["render_t2i"] == "stabilityai/stable-diffusion-3.5-medium"
        assert params["stage2"]["tokenizer"]["pretrained"] == "Qwen/Qwen2.5-3B"
    else:  # null: the same model
        assert EvaluateParams(**params["evaluate"]).caption_t2i(T2IParams(model=model)) == model


def test_one_runtime_param_moves_every_stage():
    params = _params("paper", {"t2i": "/models/sd-2-1-local"})
    assert params["t2i"] == {"model": "/models/sd-2-1-local", "dtype": "float32"}
    assert params["evaluate"]["render_t2i"] == "stabilityai/stable-diffusion-3.5-medium"
    # a key below it is set as any block's (`--params t2i.dtype=bfloat16`): the model stays
    dtype = _params(None, {"t2i": {"dtype": "bfloat16"}})["t2i"]
    assert dtype == {"model": "src/vlv_pipeline/assets/teacher", "dtype": "bfloat16"}
    both = _params(None, {"t2i": {"model": "/m", "dtype": "bfloat16"}})
    assert both["t2i"] == {"model": "/m", "dtype": "bfloat16"}


def test_every_node_that_loads_the_t2i_takes_the_one_block():
    from vlv_pipeline.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    for name, readers in READERS.items():
        taking = {n.name for n in pipelines[name].nodes if "params:t2i" in n.inputs}
        assert readers <= taking, (name, readers - taking)
    # no node reads a T2I from anywhere else: the only T2I-ish parameter inputs
    inputs = {i for n in pipelines["__default__"].nodes for i in n.inputs}
    assert not {i for i in inputs if i.startswith("params:") and "t2i" in i} - {"params:t2i"}


def test_the_flow_teacher_point_trains_and_evaluates_on_its_own_t2i():
    from vlv_pipeline.pipeline_registry import register_pipelines

    params = _params(None)
    points = params["study_points"]
    assert points[TEACHER_POINT]["t2i"]["model"] == FLOW_TEACHER
    assert points["shared"]["t2i"] == params["t2i"]
    assert points["queries_04"]["t2i"] == params["t2i"]
    study = register_pipelines()["study"]
    mine = [
        n for n in study.nodes if n.namespace and n.namespace.startswith(f"study.{TEACHER_POINT}")
    ]
    taking = {
        n.name.rsplit(".", 1)[-1]
        for n in mine
        if f"params:study_points.{TEACHER_POINT}.t2i" in n.inputs
    }
    assert {"train_stage1", "validate_stage1", "cache_pair_embeddings", "train_stage2"} <= taking
    assert not any("params:t2i" in n.inputs for n in mine)


@pytest.mark.parametrize(("block", "key", "model"), OLD_KEYS)
def test_a_stage_cannot_name_its_own_t2i(block, key, model):
    conf = _params(None)[block]
    with pytest.raises(ValidationError) as error:
        model.model_validate({**conf, key: "another/model"})
    assert key in str(error.value) and "Extra inputs are not permitted" in str(error.value)


@pytest.mark.slow
def test_kedro_run_with_one_t2i_param_reads_it_everywhere(tmp_path):
    """The documented command: `kedro run --params t2i=<dir>`; the preflight names the one
    key (t2i.model) before any node runs."""
    missing = tmp_path / "no-such-t2i"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [KEDRO, "run", "--pipeline", "cache", "--params", f"t2i={missing}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert f"t2i.model = {missing}" in out
    assert "Running node" not in out and "Traceback" not in out
