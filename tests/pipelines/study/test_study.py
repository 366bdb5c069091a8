"""The study pipeline: derived points, wiring onto the project's own nodes, summaries, study 5."""

import warnings

import pytest
import torch
import yaml

from vlv_pipeline.config import StudyConfigLoader
from vlv_pipeline.models.teachers import load_teacher
from vlv_pipeline.params.study import (
    DERIVED_KEY,
    FLOW_TEACHER,
    POINTS,
    TEACHER_POINT,
    StudyParams,
    expand_points,
    pairs_point,
    queries_point,
    trainable_point,
)
from vlv_pipeline.pipelines.study import nodes, report, stats

BASE = {
    "study": {"size": "full"},
    "t2i": {"model": "src/vlv_pipeline/assets/teacher", "dtype": "float32"},
    "synthesize": {"fraction": 0.1, "seed": 0, "max_images": 50},
    "stage1": {"encoder": {"num_queries": 16}, "training": {"steps": 2000, "batch_size": 64}},
    "stage2": {"trainable": "projector+llm", "training": {"steps": 1000, "seed": 0}},
    "evaluate": {"images": 256, "sampling": {"steps": 25, "batch_size": 128}},
}


def test_each_point_is_conf_with_only_its_own_keys_changed():
    params = expand_points(BASE)
    points = params[DERIVED_KEY]
    assert set(points) == {*POINTS, "shared"}
    p = points[pairs_point(3, 1)]
    assert p["synthesize"] == {"fraction": 0.03, "seed": 1, "max_images": None}
    # the study's fixed stage 2 (psi + LLM, 1000 steps), whatever conf's default trains
    assert p["stage2"]["training"] == {"steps": 1000, "checkpoint_every": 500, "seed": 1}
    assert p["stage2"]["trainable"] == "projector+llm"
    assert p["stage1"] == BASE["stage1"] and p["evaluate"] == BASE["evaluate"]
    assert points[queries_point(77)]["stage1"]["encoder"]["num_queries"] == 77
    assert points[queries_point(77)]["stage1"]["training"]["steps"] == 2000  # equal steps
    lora = points[trainable_point("projector+lora")]["stage2"]
    assert lora["trainable"] == "projector+lora" and lora["training"]["steps"] == 1000
    assert points["shared"]["evaluate"]["images"] == 256  # not shrunk
    assert BASE["stage2"]["training"]["seed"] == 0  # conf itself untouched
    # study 6: the default recipe (conf's own stage 1 and stage 2) on the flow-matching teacher
    teacher = points[TEACHER_POINT]
    assert teacher["t2i"] == {**BASE["t2i"], "model": FLOW_TEACHER}
    assert teacher["stage1"] == BASE["stage1"] and teacher["stage2"] == BASE["stage2"]


def test_small_size_shrinks_every_point_and_keeps_its_overrides():
    points = expand_points({**BASE, "study": {"size": "small"}})[DERIVED_KEY]
    p = points[pairs_point(30, 0)]
    assert p["stage2"]["training"]["steps"] == 2 and p["stage2"]["validation_images"] == 8
    assert p["synthesize"]["fraction"] == 0.3
    q = points[queries_point(4)]["stage1"]
    assert q["training"]["steps"] == 2 and q["encoder"]["num_queries"] == 4
    assert q["validation"]["images"] == 8
    assert points["shared"]["evaluate"]["images"] == 8


def test_conf_without_a_study_is_left_alone_and_a_hand_written_point_is_refused():
    assert expand_points({"stage1": {}}) == {"stage1": {}}
    with pytest.raises(ValueError, match=DERIVED_KEY):
        expand_points({**BASE, DERIVED_KEY: {}})
    with pytest.raises(ValueError, match="size"):
        expand_points({**BASE, "study": {"size": "huge"}})


def test_the_config_loader_derives_points_after_runtime_params(tmp_path):
    for env in ("base", "local"):
        (tmp_path / env).mkdir()
    (tmp_path / "base/parameters.yml").write_text(yaml.safe_dump(BASE))
    loader = StudyConfigLoader(
        str(tmp_path),
        base_env="base",
        default_run_env="local",
        runtime_params={"study": {"size": "small"}},
    )
    points = loader["parameters"][DERIVED_KEY]
    assert points[queries_point(16)]["stage1"]["training"]["steps"] == 2


def test_the_study_reruns_the_projects_own_nodes_on_each_points_parameters():
    from vlv_pipeline.pipeline_registry import register_pipelines
    from vlv_pipeline.pipelines.stage1 import nodes as stage1_nodes
    from vlv_pipeline.pipelines.stage2 import nodes as stage2_nodes

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dotted dataset name outside its namespace
        pipelines = register_pipelines()
    study = pipelines["study"]
    assert not set(study.nodes) & set(pipelines["__default__"].nodes)
    assert "study.study_report" not in pipelines["__default__"].all_outputs()
    by_name = {n.name: n for n in study.nodes}
    train = by_name[f"study.{pairs_point(1, 0)}.train_stage2"]
    assert train.func is stage2_nodes.train_stage2  # the node itself, not a copy
    assert f"params:{DERIVED_KEY}.{pairs_point(1, 0)}.stage2" in train.inputs
    assert train.outputs == [
        f"study.{pairs_point(1, 0)}.{o}" for o in ("vlv_captioner", "stage2_log")
    ]
    stage1 = by_name[f"study.{queries_point(77)}.train_stage1"]
    assert stage1.func is stage1_nodes.train_stage1
    assert stage1.inputs[-2:] == [
        f"params:{DERIVED_KEY}.{queries_point(77)}.{block}" for block in ("stage1", "t2i")
    ]
    # the default run's datasets are read as they are; the points' own stay in their namespace
    assert {"raw_images", "image_manifest", "latent_cache", "vlv_encoder", "eval_metrics"} <= (
        study.inputs()
    )
    assert all(o.startswith("study") for o in study.all_outputs())
    report_inputs = set(by_name["study.write_study_report"].inputs)
    assert {f"study_{k}_{d}" for k in report.STUDY_TITLES for d in ("result", "figure")} < (
        report_inputs
    )


def test_wilson_intervals_are_honest_at_the_edges():
    zero = stats.rate(0.0, 256, 0.95)
    assert zero["low"] == 0.0 and 0.010 < zero["high"] < 0.02  # not an empty interval at 0%
    half = stats.rate(0.5, 256, 0.95)
    assert half["high"] - 0.5 == pytest.approx(0.5 - half["low"])
    assert half["high"] - half["low"] == pytest.approx(2 * 1.96 * (0.25 / 256) ** 0.5, rel=0.02)
    assert stats.rate(1.0, 256, 0.95)["high"] == pytest.approx(1.0)


def _stage2_metrics(vlv, baseline):
    return {"images": 256, "vlv": {"exact_scene": vlv}, "without_stage1": {"exact_scene": baseline}}


def test_data_efficiency_rows_follow_the_pairs_and_keep_both_seeds():
    inputs = {}
    for percent, pairs in ((1, 40), (30, 1200)):
        for seed in (0, 1):
            key = f"{percent}:{seed}"
            inputs[f"metrics:{key}"] = _stage2_metrics(0.5 + percent / 100, 0.1)
            inputs[f"log:{key}"] = {"pairs": pairs, "batch_size": min(pairs, 64), "seconds": 40.0}
            inputs[f"baseline_log:{key}"] = {"pairs": pairs, "seconds": 250.0}
    result, figure = nodes.data_efficiency(StudyParams(), **inputs)
    assert [(r["pairs"], r["seed"]) for r in result["rows"]] == [
        (40, 0),
        (40, 1),
        (1200, 0),
        (1200, 1),
    ]
    assert result["rows"][-1]["vlv"]["rate"] == pytest.approx(0.8)
    assert len(figure.axes[0].containers) == 4  # VLV and the baseline, per seed
    tables = report.study_tables({"data_efficiency": result, **_other_results()})
    assert tables["data_efficiency"][1][0][3] == "40"  # all 40 pairs as one batch
    assert tables["data_efficiency"][1][2][:5] == ["1200", "30", "0", "64", "80.0 (74.7-84.4)"]


def test_the_teacher_study_sets_each_teachers_reconstructions_beside_its_captions():
    def stage1(exact):
        return {"images": 256, "reconstruction": {"exact_scene": exact, "attributes": 0.97}}

    def stage2(exact):
        return {"images": 256, "vlv": {"exact_scene": exact}}

    result, figure = nodes.teacher_comparison(
        StudyParams(),
        **{
            "stage1_metrics:sd": stage1(0.86),
            "stage1_log:sd": {"seconds": 420.0, "history": [{"step": 1200}]},
            "stage2_metrics:sd": stage2(0.85),
            "stage1_metrics:flow": stage1(0.5),
            "stage1_log:flow": {"seconds": 360.0, "history": [{"step": 1200}]},
            "stage2_metrics:flow": stage2(0.25),
        },
    )
    sd, flow = result["rows"]
    assert (sd["teacher"], flow["teacher"]) == ("sd", "flow")
    assert flow["reconstruction"]["rate"] == 0.5 and flow["captions"]["rate"] == 0.25
    assert sd["stage1_s_per_step"] == pytest.approx(0.35)
    assert len(figure.axes[0].containers) >= 2  # reconstructions and captions
    rows = report.study_tables(
        {**_other_results(), "data_efficiency": {"rows": []}, "teacher": result}
    )["teacher"][1]
    assert rows[1][:2] == ["SD 3-style (MMDiT, flow)", "50.0 (43.9-56.1)"]


def _other_results():
    return {
        "queries": {"rows": []},
        "trainable": {"rows": []},
        "spatial": {"rows": []},
        "composition": {"variants": {}},
        "teacher": {"rows": []},
    }


def test_the_report_sets_each_studys_table_under_its_title_and_marks_a_token_run():
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(1, 1))
    results = {**_other_results(), "data_efficiency": {"rows": []}}
    studies = {f"result:{k}": {**results[k], "paper": f"claim {k}"} for k in report.STUDY_TITLES}
    studies |= {f"figure:{k}": figure for k in report.STUDY_TITLES}
    page = report.write_study_report(StudyParams(size="small"), figure, **studies)
    assert [t for t in report.STUDY_TITLES.values() if f"<h2>{t}</h2>" in page] == list(
        report.STUDY_TITLES.values()
    )
    assert page.count("<table>") == 6 and "claim teacher" in page
    assert "these are not results" in page
    plt.close(figure)


def test_spatial_study_refuses_an_evaluation_without_spatial_readings():
    with pytest.raises(ValueError, match="--pipeline evaluate"):
        nodes.spatial_fidelity_study(
            {"images": 4, "reconstruction": {"from_caption": {"exact_scene": 1.0}}}, StudyParams()
        )


@pytest.fixture(scope="module")
def t2i(tiny_sd):
    return load_teacher(str(tiny_sd), "float32")


def test_a_half_padded_as_the_model_pads_keeps_the_halfs_conditions(t2i):
    """The T2I pads a short prompt with its pad token; the text encoder is causal, so the
    control [A's first half ; padding] conditions the first half exactly as A's full
    embeddings do, and only the padded positions differ."""
    torch.manual_seed(0)
    full = torch.randn(2, 16, t2i.width)
    padding = nodes.padding_embeddings(t2i, 8)
    pad_id = t2i.tokenizer.pad_token_id
    assert torch.equal(padding[3], t2i.text_encoder.get_input_embeddings().weight[pad_id])
    padded = torch.cat([full[:, :8], padding.expand(2, -1, -1)], 1)
    a, b = t2i.condition(full).states, t2i.condition(padded).states
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-5)
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-3)


def test_the_study_selects_its_slices_by_the_tags_the_stages_declare():
    """A renamed stage node stays in the study; a stage that stops tagging says so."""
    from kedro.pipeline import Node, Pipeline

    from vlv_pipeline.pipelines.study.pipeline import QUERIES, point

    def encode(x):
        return x

    renamed = Pipeline([Node(encode, "a", "b", name="a_new_name", tags=["encoder"])])
    built = point({"stage1": renamed}, QUERIES, "queries_04")
    assert [n.name for n in built.nodes] == ["study.queries_04.a_new_name"]
    untagged = Pipeline([Node(encode, "a", "b", name="train_stage1")])
    with pytest.raises(ValueError, match="no node tagged encoder"):
        point({"stage1": untagged}, QUERIES, "queries_04")


def test_a_study_point_that_changes_only_stage_2s_own_keys_shares_the_baseline_folder():
    """Study 1's points change stage 2's own keys (psi + LLM, 1000 steps), which the "without
    stage 1" baseline does not read: on the same pairs (10% at seed 0 until conf/base moved to
    15%) it resumes the default run's baseline folder; another baseline schedule or seed does
    not."""
    from pathlib import Path

    from vlv_pipeline import settings
    from vlv_pipeline.params.stage2 import Stage2Params
    from vlv_pipeline.params.t2i import T2IParams
    from vlv_pipeline.pipelines.stage2.nodes import CaptionerRun, _run_directory

    conf = Path(__file__).resolve().parents[3] / "conf"
    loader = StudyConfigLoader(str(conf), **settings.CONFIG_LOADER_ARGS)
    parameters = loader["parameters"]
    t2i = T2IParams(**parameters["t2i"])

    def baseline_folder(stage2: dict, training: dict | None = None) -> str:
        params = Stage2Params(**stage2)
        schedule = params.baseline.training or params.training
        if training:
            schedule = schedule.model_copy(update=training)
        run = CaptionerRun("stage2_baseline", "projector+llm+encoder", schedule)
        return _run_directory(params, t2i, run, "encoder-sha", "pairs-sha")

    # the pairs reach the folder through their hash (the same here: the same pairs)
    point = parameters[DERIVED_KEY][pairs_point(10, 0)]
    assert point["stage2"]["trainable"] != parameters["stage2"]["trainable"]
    assert baseline_folder(point["stage2"]) == baseline_folder(parameters["stage2"])
    assert baseline_folder(parameters["stage2"]) != baseline_folder(
        parameters["stage2"], {"learning_rate": 1e-4}
    )
    seed1 = parameters[DERIVED_KEY][pairs_point(10, 1)]["stage2"]
    assert baseline_folder(seed1) != baseline_folder(parameters["stage2"])
