"""`import_published`: the published checkpoint -> `published_captioner` (versioned)."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.import_published import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.import_published_captioner,
                "params:import_published",
                "published_captioner",
                name="import_published_captioner",
            )
        ]
    )
