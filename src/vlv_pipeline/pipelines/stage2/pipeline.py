"""The `stage2` pipeline: caption pairs + stage 1's encoder -> the VLV captioner (and baseline)."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.stage2 import nodes

# Tags (the study reruns slices by them, study/pipeline.py): `captioner`, the nodes that
# train and judge the VLV captioner; `baseline`, those that train the "without stage 1" one.


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.load_stage2_data,
                ["raw_images", "image_manifest", "caption_pairs", "params:stage2"],
                "stage2_data",
                name="load_stage2_data",
                tags=["captioner", "baseline"],
            ),
            Node(
                nodes.train_stage2,
                [
                    "stage2_data",
                    "vlv_encoder",
                    "embedding_cache",
                    "params:stage2",
                    "params:t2i",
                    "latent_cache",
                ],
                ["vlv_captioner", "stage2_log"],
                name="train_stage2",
                tags=["captioner"],
            ),
            Node(
                nodes.train_baseline,
                ["stage2_data", "params:stage2", "params:stage1", "params:t2i", "latent_cache"],
                ["baseline_captioner", "stage2_baseline_log"],
                name="train_baseline",
                tags=["baseline"],
            ),
            Node(
                nodes.validate_stage2,
                [
                    "vlv_captioner",
                    "baseline_captioner",
                    "stage2_data",
                    "params:stage2",
                    "params:stage1",
                ],
                "stage2_metrics",
                name="validate_stage2",
                tags=["captioner"],
            ),
            Node(
                nodes.card_stage2,
                "stage2_metrics",
                ["vlv_captioner_card", "baseline_captioner_card"],
                name="card_stage2",
            ),
            Node(
                nodes.plot_stage2_loss,
                ["stage2_log", "stage2_baseline_log"],
                "stage2_loss",
                name="plot_stage2_loss",
            ),
        ]
    )
