"""The `study` pipeline: the project's own pipelines rerun per point, then five figures.

Each point (``params/study.py``) is a namespaced slice of a project pipeline, built from the
registered pipelines (this package imports none of them): ``study.<point>.<dataset>``, with
``params:<section>`` mapped to ``params:study_points.<point>.<section>``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.params.study import (
    DERIVED_KEY,
    PAIR_PERCENTS,
    QUERY_COUNTS,
    SEEDS,
    TEACHER_POINT,
    TRAINABLE_PARTS,
    pairs_point,
    queries_point,
    trainable_point,
)
from vlv_pipeline.pipelines.study import nodes, plots, report

# the slices of the project's pipelines that a point reruns: the tags those pipelines declare
# on their nodes (a renamed node stays in its slice)
PAIRS = {"synthesize": ("pairs",), "stage2": ("captioner", "baseline")}
QUERIES = {"stage1": ("encoder",)}
TRAINABLE = {"synthesize": ("pair_embeddings",), "stage2": ("captioner",)}
TEACHER = {  # the default recipe's stage 1 and stage 2 on another teacher
    "stage1": ("encoder",),
    "synthesize": ("pair_embeddings",),
    "stage2": ("captioner",),
}
# the figures of the preview (study_<name>_figure): study 5's renders after its own figure
PREVIEW = "data_efficiency queries trainable spatial composition composition_grid teacher".split()
SHARED = {  # the default run's datasets that every point reads as they are
    "raw_images",
    "image_manifest",
    "captioner_credentials",
    "latent_cache",
    "vlv_encoder",
    "embedding_cache_previous",
    "caption_pairs",
    "baseline_captioner",
}


def point(pipelines: dict[str, Pipeline], slices: dict[str, tuple], name: str) -> Pipeline:
    """The nodes ``slices`` selects (per pipeline, those with any of its tags), namespaced
    ``study.<name>``, on the point's parameters."""
    parts = []
    for p, tags in slices.items():
        part = pipelines[p].only_nodes_with_tags(*tags)
        if not part.nodes:
            raise ValueError(
                f"study point {name}: pipeline {p!r} has no node tagged {' or '.join(tags)}; "
                f"tag the nodes the study reruns in pipelines/{p}/pipeline.py"
            )
        parts.append(part)
    nodes = Pipeline(parts)
    free = nodes.inputs()
    return Pipeline(
        nodes,
        namespace=f"study.{name}",
        inputs={d for d in free if d in SHARED},
        parameters={
            p: f"params:{DERIVED_KEY}.{name}.{p.removeprefix('params:')}"
            for p in free
            if p.startswith("params:")
        },
    )


def _node(func, inputs, outputs, name: str) -> Node:
    """A node of the study itself (namespace ``study``, where its points' datasets live)."""
    return Node(func, inputs, outputs, name=name, namespace="study")


def create_pipeline(pipelines: dict[str, Pipeline] | None = None, **kwargs) -> Pipeline:
    if pipelines is None:
        raise TypeError("the study is composed from the registered pipelines: pass `pipelines`")
    pairs = {
        f"{percent}:{seed}": f"study.{pairs_point(percent, seed)}"
        for percent in PAIR_PERCENTS
        for seed in SEEDS
    }
    queries = {str(n): f"study.{queries_point(n)}" for n in QUERY_COUNTS}
    parts = {t: f"study.{trainable_point(t)}" for t in TRAINABLE_PARTS}
    study = Pipeline(
        [
            *(point(pipelines, PAIRS, name.removeprefix("study.")) for name in pairs.values()),
            *(point(pipelines, QUERIES, name.removeprefix("study.")) for name in queries.values()),
            *(point(pipelines, TRAINABLE, name.removeprefix("study.")) for name in parts.values()),
            point(pipelines, TEACHER, TEACHER_POINT),
            Pipeline(
                pipelines["evaluate"].only_nodes("load_eval_data"),
                namespace="study.composition",
                inputs={"raw_images", "image_manifest"},
                parameters={"params:evaluate": f"params:{DERIVED_KEY}.shared.evaluate"},
            ),
            _node(
                nodes.data_efficiency,
                {
                    "params": "params:study",
                    **{f"metrics:{k}": f"{v}.stage2_metrics" for k, v in pairs.items()},
                    **{f"log:{k}": f"{v}.stage2_log" for k, v in pairs.items()},
                    **{f"baseline_log:{k}": f"{v}.stage2_baseline_log" for k, v in pairs.items()},
                },
                ["study_data_efficiency_result", "study_data_efficiency_figure"],
                name="study_data_efficiency",
            ),
            _node(
                nodes.query_count,
                {
                    "params": "params:study",
                    **{f"metrics:{k}": f"{v}.stage1_metrics" for k, v in queries.items()},
                    **{f"log:{k}": f"{v}.stage1_log" for k, v in queries.items()},
                },
                ["study_queries_result", "study_queries_figure"],
                name="study_queries",
            ),
            _node(
                nodes.what_trains,
                {
                    "params": "params:study",
                    **{f"metrics:{k}": f"{v}.stage2_metrics" for k, v in parts.items()},
                    **{f"log:{k}": f"{v}.stage2_log" for k, v in parts.items()},
                },
                ["study_trainable_result", "study_trainable_figure"],
                name="study_trainable",
            ),
            _node(
                nodes.teacher_comparison,
                {
                    "params": "params:study",
                    # the SD-style teacher: the default run itself
                    "stage1_metrics:sd": "stage1_metrics",
                    "stage1_log:sd": "stage1_log",
                    "stage2_metrics:sd": "stage2_metrics",
                    "stage1_metrics:flow": f"study.{TEACHER_POINT}.stage1_metrics",
                    "stage1_log:flow": f"study.{TEACHER_POINT}.stage1_log",
                    "stage2_metrics:flow": f"study.{TEACHER_POINT}.stage2_metrics",
                },
                ["study_teacher_result", "study_teacher_figure"],
                name="study_teacher",
            ),
            _node(
                nodes.spatial_fidelity_study,
                ["eval_metrics", "params:study"],
                ["study_spatial_result", "study_spatial_figure"],
                name="study_spatial",
            ),
            _node(
                nodes.composition_study,
                [
                    "vlv_encoder",
                    "study.composition.eval_data",
                    f"params:{DERIVED_KEY}.shared.evaluate",
                    f"params:{DERIVED_KEY}.shared.t2i",
                    "params:study",
                ],
                [
                    "study_composition_result",
                    "study_composition_figure",
                    "study_composition_grid",
                    "study_composition_grid_figure",
                ],
                name="study_composition",
            ),
            _node(
                report.write_study_report,
                {
                    "params": "params:study",
                    "composition_grid": "study_composition_grid_figure",
                    **{f"result:{k}": f"study_{k}_result" for k in report.STUDY_TITLES},
                    **{f"figure:{k}": f"study_{k}_figure" for k in report.STUDY_TITLES},
                },
                "study_report",
                name="write_study_report",
            ),
            _node(
                plots.plot_study_preview,
                [f"study_{k}_figure" for k in PREVIEW],
                "study_report_preview",
                name="plot_study_preview",
            ),
        ]
    )
    return study
