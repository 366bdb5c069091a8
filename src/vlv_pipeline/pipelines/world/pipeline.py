"""The `world` pipeline: renders the shapes world with captions, labels and tokenizer."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.world.nodes import build_tokenizer
from vlv_pipeline.world.generate import generate_labels, render_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(generate_labels, "params:world", "world_labels", name="generate_world_labels"),
            Node(
                render_images,
                ["world_labels", "params:world"],
                "raw_images",
                name="render_world_images",
            ),
            Node(build_tokenizer, "params:world", "world_tokenizer", name="build_world_tokenizer"),
        ]
    )
