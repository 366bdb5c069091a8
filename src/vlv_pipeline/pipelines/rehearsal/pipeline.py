"""The `rehearsal` pipeline: builds the SD-2.1-shaped T2I model that conf/rehearsal uses."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.rehearsal.nodes import build_t2i


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_t2i,
                ["world_tokenizer", "params:rehearsal"],
                "rehearsal_t2i",
                name="build_rehearsal_t2i",
            )
        ]
    )
