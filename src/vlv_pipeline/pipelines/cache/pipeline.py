"""The `cache` pipeline: image manifest -> VAE posterior shards (incremental)."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.cache.nodes import encode_latents


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                encode_latents,
                [
                    "raw_images",
                    "image_manifest",
                    "latent_cache_previous",
                    "params:cache",
                    "params:t2i",
                ],
                "latent_cache",
                name="encode_latents",
            )
        ]
    )
