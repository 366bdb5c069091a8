"""The T2I model is named once per environment (globals.yml `t2i`), and a run whose stages
disagree on it stops before any work, naming every key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlv_pipeline.config import StudyConfigLoader
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.preflight import T2I_KEYS, T2IMismatchError, check_t2i, t2i_disagreement

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))


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


def _named(params: dict) -> dict[str, str]:
    out = {}
    for block, path in T2I_KEYS:
        value = params[block]
        for key in path:
            value = value[key]
        out[block] = value
    return out


@pytest.mark.parametrize(
    ("env", "model"),
    [
        (None, "src/vlv_pipeline/assets/teacher"),
        ("paper", "stabilityai/stable-diffusion-2-1-base"),
        ("rehearsal", "data/rehearsal/06_models/t2i"),
    ],
)
def test_every_environment_names_its_t2i_once_and_every_stage_reads_it(env, model):
    params = _params(env)
    assert set(_named(params).values()) == {model}
    assert t2i_disagreement(params) is None
    if env == "paper":  # captions are rendered by another model: a key of its own
        assert params["evaluate"]["render_t2i"] == "stabilityai/stable-diffusion-3.5-medium"
        assert params["stage2"]["tokenizer"]["pretrained"] == "Qwen/Qwen2.5-3B"


def test_one_runtime_param_moves_every_stage():
    params = _params("paper", {"t2i": "/models/sd-2-1-local"})
    assert set(_named(params).values()) == {"/models/sd-2-1-local"}
    assert params["evaluate"]["render_t2i"] == "stabilityai/stable-diffusion-3.5-medium"


def test_a_disagreement_names_every_key(tmp_path):
    stage1 = Stage1Params.model_validate({**_params(None)["stage1"], "t2i": str(tmp_path)})
    blocks = {"stage1": stage1, **{k: v for k, v in _params(None).items() if k != "stage1"}}
    message = t2i_disagreement(blocks)
    assert message is not None
    for key in ("cache.vae.pretrained", "stage1.t2i", "stage2.t2i", "evaluate.stage1_t2i"):
        assert key in message
    assert str(tmp_path) in message and "globals.yml" in message
    # the same directory spelt two ways is one model
    same = {"stage1": {"t2i": str(tmp_path)}, "stage2": {"t2i": str(tmp_path) + "/."}}
    assert t2i_disagreement(same) is None


def test_check_reads_conf_and_the_pipelines_own_blocks():
    class Loaded:
        def __init__(self, value):
            self.value = value

        def load(self):
            return self.value

    class Pipe:
        def inputs(self):
            return {"params:study_points.p.stage2", "raw_images"}

    conf = _params(None)
    catalog = {"parameters": Loaded(conf)}
    catalog["params:study_points.p.stage2"] = Loaded({"t2i": "elsewhere"})
    with pytest.raises(T2IMismatchError, match="study_points.p.stage2.t2i: elsewhere"):
        check_t2i(Pipe(), catalog)


def test_a_study_point_that_trains_its_own_stage1_may_distil_another_teacher():
    """Study 6 reruns stage 1 and stage 2 on the flow-matching teacher: a run of its own,
    checked for agreement within itself; a point reading the default run's encoder is not."""
    conf = _params(None)
    blocks = {
        **{name: conf[name] for name in ("stage1", "stage2", "evaluate")},
        "study_points.teacher_flow.stage1": {"t2i": "other"},
        "study_points.teacher_flow.stage2": {"t2i": "other"},
    }
    assert t2i_disagreement(blocks) is None
    blocks["study_points.teacher_flow.stage2"] = {"t2i": "a third"}
    message = t2i_disagreement(blocks)
    assert "study_points.teacher_flow.stage2.t2i: a third" in message
    assert "\n  stage1.t2i" not in message  # conf's own run agrees: not listed
    del blocks["study_points.teacher_flow.stage1"]  # now it reads the default run's encoder
    assert "study_points.teacher_flow.stage2.t2i: a third" in t2i_disagreement(blocks)


@pytest.mark.slow
def test_kedro_run_stops_before_any_node_when_evaluate_renders_with_another_model(tmp_path):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [KEDRO, "run", "--pipeline", "evaluate", "--params", f"evaluate.stage1_t2i={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "different T2I models" in out and "evaluate.stage1_t2i" in out
    assert "Running node" not in out and "Traceback" not in out
