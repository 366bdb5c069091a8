"""``ingest``: raw_images -> image_manifest (versioned) + ingest_rejects (versioned)."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.imaging.screen_table import screen_images
from vlv_pipeline.pipelines.ingest.nodes import build_manifest, build_rejects


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                screen_images,
                inputs=["raw_images", "params:ingest"],
                outputs="ingest_screened",
                name="screen_images",
            ),
            Node(
                build_manifest,
                inputs=["ingest_screened", "params:ingest"],
                outputs="image_manifest",
                name="build_image_manifest",
            ),
            Node(
                build_rejects,
                inputs="ingest_screened",
                outputs="ingest_rejects",
                name="build_ingest_rejects",
            ),
        ]
    )
