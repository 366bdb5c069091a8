"""The `stage1` pipeline: cached latents + images -> trained VLV encoder, grid, curves."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.stage1 import nodes

# Tags: `encoder`, the nodes that train and judge the VLV encoder (the study reruns them per
# point by this tag, study/pipeline.py; `kedro run --tags encoder` runs them alone).


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.load_stage1_data,
                ["raw_images", "image_manifest", "latent_cache", "params:stage1", "params:t2i"],
                "stage1_data",
                name="load_stage1_data",
                tags=["encoder"],
            ),
            Node(
                nodes.train_stage1,
                ["stage1_data", "params:stage1", "params:t2i"],
                ["vlv_encoder", "stage1_log"],
                name="train_stage1",
                tags=["encoder"],
            ),
            Node(
                nodes.validate_stage1,
                ["vlv_encoder", "stage1_data", "params:stage1", "params:t2i"],
                ["stage1_metrics", "stage1_grid"],
                name="validate_stage1",
                tags=["encoder"],
            ),
            Node(nodes.card_stage1, "stage1_metrics", "vlv_encoder_card", name="card_stage1"),
            Node(nodes.plot_stage1_loss, "stage1_log", "stage1_loss", name="plot_stage1_loss"),
        ]
    )
