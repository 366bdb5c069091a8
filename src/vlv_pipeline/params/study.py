"""Parameters of the `study` pipeline (``params:study``) and the points it compares.

The study reruns the project's own pipelines (synthesize, stage 1, stage 2, evaluate) as
namespaced modular pipelines, one namespace per point. A point differs from the default run
only in a few keys (``POINTS``); its full parameters are derived from conf's sections by
``expand_points`` when the configuration is loaded (``settings.StudyConfigLoader``) and live
under the top-level key ``study_points.<point>.<section>``, so each namespaced node reads
ordinary typed ``params:`` and ``kedro viz`` shows what each point ran with.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.params import StrictModel

# Study 1: caption pairs as a percentage of the train images, each with two seeds (the seed
# draws the pairs and initialises stage 2, and the baseline, which trains on the same pairs).
PAIR_PERCENTS = (1, 3, 10, 30)
SEEDS = (0, 1)
# Study 2: the number of queries (caption embeddings) of the stage-1 encoder.
QUERY_COUNTS = (4, 16, 77)
# Study 3: what trains in stage 2 (conf's spelling of `stage2.trainable`).
TRAINABLE_PARTS = ("projector", "projector+llm", "projector+lora", "projector+llm+encoder")
# Study 6: the teacher. The default run distils the SD-style teacher; this point reruns
# stage 1, the pair embeddings and stage 2 of the default recipe on the flow-matching one.
FLOW_TEACHER = "src/vlv_pipeline/assets/teacher_flow"
TEACHER_POINT = "teacher_flow"

DERIVED_KEY = "study_points"


def pairs_point(percent: int, seed: int) -> str:
    return f"pairs_{percent:02d}pct_seed{seed}"


def queries_point(n: int) -> str:
    return f"queries_{n:02d}"


def trainable_point(trainable: str) -> str:
    return "trainable_" + trainable.replace("+", "_")


# The stage 2 the study's protocol fixed (docs/STUDY.md): psi + LLM, 1000 steps. conf/base
# has since trained the encoder too (300 steps); study 3 compares exactly that choice, and
# studies 1 and 3 keep the protocol they were measured with.
STUDY_STAGE2 = {"trainable": "projector+llm", "training": {"steps": 1000, "checkpoint_every": 500}}


def pairs_overrides(percent: int, seed: int) -> dict[str, dict]:
    """Study 1's point: ``percent`` of the train images captioned, drawn and trained at ``seed``."""
    return {
        "synthesize": {"fraction": percent / 100, "seed": seed, "max_images": None},
        # 1% of the train images is fewer pairs than one batch: train on all of them as
        # one batch (the study's table says which batch each point ran)
        "stage2": {
            **STUDY_STAGE2,
            "training": {**STUDY_STAGE2["training"], "seed": seed},
            "batch_at_most_pairs": True,
        },
    }


def _points() -> dict[str, dict[str, dict]]:
    """Every point's overrides, per section of conf."""
    points: dict[str, dict[str, dict]] = {}
    for percent in PAIR_PERCENTS:
        for seed in SEEDS:
            points[pairs_point(percent, seed)] = pairs_overrides(percent, seed)
    for n in QUERY_COUNTS:
        points[queries_point(n)] = {"stage1": {"encoder": {"num_queries": n}}}
    for trainable in TRAINABLE_PARTS:
        points[trainable_point(trainable)] = {"stage2": {**STUDY_STAGE2, "trainable": trainable}}
    # its own T2I block: every node of the point (stage 1, pair embeddings, stage 2) takes it
    points[TEACHER_POINT] = {"t2i": {"model": FLOW_TEACHER}}
    return points


POINTS = _points()
SECTIONS = ("t2i", "synthesize", "stage1", "stage2", "evaluate")


class SmallSize(StrictModel):
    """``size: small``: every study at a token size (CI), never a result."""

    steps: int = Field(2, ge=1)
    batch_size: int = Field(1, ge=1, description="training; 1% of a token world is one pair")
    images: int = Field(8, ge=2)


class StudyParams(StrictModel):
    size: Literal["full", "small"] = "full"
    small: SmallSize = SmallSize()
    composition_pairs: int = Field(128, ge=1, description="study 5: pairs of test images")
    composition_seed: int = 0
    confidence: float = Field(0.95, gt=0, lt=1, description="binomial error bars")


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _small(section: str, params: dict, small: SmallSize) -> dict:
    """The token-size overrides of one section."""
    training = {
        "steps": small.steps,
        "batch_size": small.batch_size,
        "warmup_steps": 0,
        "checkpoint_every": small.steps,
        "log_every": 1,
    }
    if section == "stage1":
        sampling = {"steps": 2, "batch_size": small.images}
        return {
            "training": training,
            "validation": {"images": small.images, "sampling": sampling, "every": None},
        }
    if section == "stage2":
        baseline = {"training": training} if params.get("baseline", {}).get("training") else {}
        return {
            "training": training,
            "validation_images": small.images,
            "generation": {"batch_size": small.images},
            "baseline": baseline,
        }
    if section == "evaluate":
        return {"images": small.images, "sampling": {"steps": 2, "batch_size": small.images}}
    return {}


def expand_points(parameters: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` with ``study_points.<point>.<section>`` added (see the module doc).

    Only when conf has a ``study`` section; a section missing from conf is left out of the
    points (the pipelines that need it fail with Kedro's own message).
    """
    if "study" not in parameters:
        return parameters
    if DERIVED_KEY in parameters:
        raise ParameterError(
            f"parameters: `{DERIVED_KEY}` is written by the study from `study` and the "
            "pipelines' sections; remove it from conf"
        )
    study = StudyParams.model_validate(parameters["study"])
    derived: dict[str, dict] = {}
    for point, overrides in POINTS.items():
        derived[point] = {}
        for section in SECTIONS:
            if not isinstance(parameters.get(section), dict):
                continue
            params = _merge(parameters[section], overrides.get(section, {}))
            if study.size == "small":  # shrunk after the point's own keys (its steps too)
                params = _merge(params, _small(section, params, study.small))
            derived[point][section] = params
    small = {s: _small(s, parameters.get(s, {}), study.small) for s in SECTIONS}
    shared = {
        s: _merge(parameters[s], small[s]) if study.size == "small" else parameters[s]
        for s in SECTIONS
        if isinstance(parameters.get(s), dict)
    }
    return {**parameters, DERIVED_KEY: {**derived, "shared": shared}}
