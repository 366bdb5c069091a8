"""The `caption` pipeline: a user's folder of images -> versioned captions file."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.caption import nodes
from vlv_pipeline.pipelines.ingest.nodes import screen_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.open_user_images, "params:caption", "user_images", name="open_user_images"),
            Node(
                screen_images,
                ["user_images", "params:ingest"],
                "user_images_screened",
                name="screen_user_images",
            ),
            Node(
                nodes.caption_user_images,
                ["vlv_captioner", "user_images", "user_images_screened", "params:caption"],
                "user_captions",
                name="caption_user_images",
            ),
        ]
    )
