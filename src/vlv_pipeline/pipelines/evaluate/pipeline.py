"""The `evaluate` pipeline: caption the test split, re-render, score, report."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.evaluate import nodes, rating, renders, report, rerender, scoring
from vlv_pipeline.pipelines.evaluate import vqa as vqa_nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.load_eval_data,
                ["raw_images", "image_manifest", "params:evaluate"],
                "eval_data",
                name="load_eval_data",
            ),
            Node(
                nodes.eval_set_ids,
                ["eval_data", "eval_set_ids_previous", "params:evaluate"],
                "eval_set_ids",
                name="eval_set_ids",
            ),
            Node(
                nodes.caption_eval_images,
                [
                    "vlv_captioner",
                    "baseline_captioner",
                    "eval_data",
                    "params:evaluate",
                    "eval_published_captioner",
                    "captioner_credentials",
                    "eval_captioner_credentials",
                ],
                "eval_captions",
                name="caption_eval_images",
            ),
            Node(
                renders.reconstruct,
                ["vlv_encoder", "eval_data", "eval_captions", "params:evaluate", "params:t2i"],
                "eval_renders",
                name="reconstruct",
            ),
            Node(
                scoring.score_evaluation,
                ["eval_data", "eval_captions", "eval_renders", "params:evaluate"],
                ["eval_metrics", "eval_samples", "eval_grid_items"],
                name="score_evaluation",
            ),
            Node(
                rerender.rerender_table1,
                [
                    "eval_data",
                    "eval_captions",
                    "eval_metrics",
                    "params:evaluate",
                    "params:rerender",
                    "params:t2i",
                ],
                ["eval_table1", "eval_table1_companion"],
                name="rerender_table1",
            ),
            Node(
                report.plot_eval_grid,
                ["eval_grid_items", "eval_captions", "params:evaluate"],
                ["eval_grid", "eval_grid_figure"],
                name="plot_eval_grid",
            ),
            Node(
                vqa_nodes.select_vqa_questions,
                ["eval_data", "params:vqa", "params:world"],
                "vqa_questions",
                name="select_vqa_questions",
            ),
            Node(
                vqa_nodes.draw_vqa_examples, "params:vqa", "vqa_examples", name="draw_vqa_examples"
            ),
            Node(
                vqa_nodes.answer_vqa_questions,
                [
                    "vqa_questions",
                    "vqa_examples",
                    "eval_captions",
                    "vqa_credentials",
                    "params:vqa",
                    "params:world",
                ],
                "vqa_answers",
                name="answer_vqa_questions",
            ),
            Node(
                vqa_nodes.vqa_table,
                ["vqa_answers", "vqa_examples", "params:vqa", "params:evaluate"],
                "eval_table3",
                name="vqa_table",
            ),
            Node(
                report.write_report,
                [
                    "eval_metrics",
                    "eval_grid_figure",
                    "stage1_log",
                    "stage2_log",
                    "stage2_baseline_log",
                    "parameters",
                    "eval_table1",
                    "eval_table1_companion",
                    "eval_table2",
                    "eval_table3",
                ],
                "eval_report",
                name="write_report",
            ),
            Node(
                rating.sample_rating_items,
                ["eval_data", "eval_captions", "params:rating"],
                "rating_sample",
                name="sample_rating_items",
            ),
            Node(
                rating.judge_rating_items,
                [
                    "eval_data",
                    "rating_sample",
                    "params:rating",
                    "params:world",
                    "rating_credentials",
                ],
                "rating_judgements",
                name="judge_rating_items",
            ),
            Node(
                rating.write_rating_page,
                ["eval_data", "rating_sample", "params:rating"],
                "rating_page",
                name="write_rating_page",
            ),
            Node(
                rating.read_user_ratings,
                ["rating_sample", "params:rating"],
                "rating_users",
                name="read_user_ratings",
            ),
            Node(
                rating.rating_table,
                [
                    "rating_sample",
                    "rating_judgements",
                    "rating_users",
                    "params:rating",
                    "params:evaluate",
                ],
                "eval_table2",
                name="rating_table",
            ),
            Node(
                report.plot_report_preview,
                ["eval_metrics", "eval_grid_figure"],
                "eval_report_preview",
                name="plot_report_preview",
            ),
        ]
    )
