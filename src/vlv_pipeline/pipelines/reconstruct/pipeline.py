"""The `reconstruct` pipeline: a user's images -> renders from their stage-1 caption embeddings
and from their captions, side-by-side sheets, metrics (registered; not in `__default__`)."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.reconstruct import nodes, renders, scores, sheets


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.open_reconstruct_images,
                "params:reconstruct",
                "reconstruct_images",
                name="open_reconstruct_images",
            ),
            Node(
                nodes.screen_reconstruct_images,
                ["reconstruct_images", "params:ingest", "params:reconstruct"],
                "reconstruct_screened",
                name="screen_reconstruct_images",
            ),
            Node(  # after screening: no model is loaded for a source with nothing kept
                nodes.choose_reconstruct_captioner,
                [
                    "caption_trained_captioner",
                    "caption_published_captioner",
                    "params:reconstruct",
                    "reconstruct_screened",
                ],
                "reconstruct_captioner",
                name="choose_reconstruct_captioner",
            ),
            Node(
                nodes.caption_reconstruct_images,
                [
                    "reconstruct_captioner",
                    "reconstruct_images",
                    "reconstruct_screened",
                    "params:reconstruct",
                ],
                "reconstruct_captions",
                name="caption_reconstruct_images",
            ),
            Node(
                renders.render_reconstructions,
                [
                    "reconstruct_encoder",
                    "reconstruct_captioner",
                    "reconstruct_images",
                    "reconstruct_screened",
                    "reconstruct_captions",
                    "params:reconstruct",
                    "params:t2i",
                ],
                "reconstructions",
                name="render_reconstructions",
            ),
            Node(
                scores.score_reconstructions,
                [
                    "reconstructions",
                    "reconstruct_captions",
                    "reconstruct_screened",
                    "params:reconstruct",
                    "params:t2i",
                ],
                ["reconstruct_table", "reconstruct_metrics"],
                name="score_reconstructions",
            ),
            Node(
                sheets.reconstruction_sheets,
                [
                    "reconstructions",
                    "reconstruct_table",
                    "reconstruct_captions",
                    "params:reconstruct",
                ],
                "reconstruct_sheets",
                name="reconstruction_sheets",
            ),
            Node(
                sheets.plot_reconstruct_grid,
                ["reconstructions", "reconstruct_table", "params:reconstruct"],
                "reconstruct_grid",
                name="plot_reconstruct_grid",
            ),
        ]
    )
