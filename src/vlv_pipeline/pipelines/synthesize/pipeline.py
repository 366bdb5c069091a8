"""The `synthesize` pipeline: a sample of images -> caption pairs -> the stage-2 embedding cache."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.synthesize import nodes

# Tags (the study reruns slices by them, study/pipeline.py): `pairs`, the nodes that make the
# caption pairs and their embeddings; `pair_embeddings`, the embedding cache alone.


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.select_images,
                ["image_manifest", "params:synthesize"],
                "pair_selection",
                name="select_images",
                tags=["pairs"],
            ),
            Node(
                nodes.synthesize_captions,
                ["raw_images", "pair_selection", "params:synthesize", "captioner_credentials"],
                "caption_pairs",
                name="synthesize_captions",
                tags=["pairs"],
            ),
            Node(
                nodes.cache_pair_embeddings,
                [
                    "raw_images",
                    "image_manifest",
                    "caption_pairs",
                    "vlv_encoder",
                    "embedding_cache_previous",
                    "params:stage2",
                    "params:synthesize",
                    "params:t2i",
                ],
                "embedding_cache",
                name="cache_pair_embeddings",
                tags=["pairs", "pair_embeddings"],
            ),
        ]
    )
