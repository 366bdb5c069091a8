"""The `caption` pipeline: a user's folder of images -> versioned captions (parquet, JSON)."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.models.captioning import choose_captioner
from vlv_pipeline.pipelines.caption import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.open_user_images, "params:caption", "user_images", name="open_user_images"),
            Node(
                nodes.screen_user_images,
                ["user_images", "params:ingest", "params:caption"],
                "user_images_screened",
                name="screen_user_images",
            ),
            Node(
                choose_captioner,
                ["caption_trained_captioner", "caption_published_captioner", "params:caption"],
                "user_captioner",
                name="choose_captioner",
            ),
            Node(
                nodes.caption_user_images,
                ["user_captioner", "user_images", "user_images_screened", "params:caption"],
                "user_captions",
                name="caption_user_images",
            ),
            Node(nodes.captions_json, "user_captions", "user_captions_json", name="captions_json"),
        ]
    )
