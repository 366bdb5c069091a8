"""The `teacher` pipeline (shapes world only): retrains the shipped miniature T2I + probe."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.teacher import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.load_world_splits,
                ["raw_images", "image_manifest", "world_labels", "params:world"],
                "teacher_splits",
                name="load_world_splits",
            ),
            Node(
                nodes.train_probe,
                ["teacher_splits", "params:teacher", "params:world"],
                ["attribute_probe", "probe_log"],
                name="train_attribute_probe",
            ),
            Node(
                nodes.train_vae,
                ["teacher_splits", "params:teacher"],
                ["teacher_vae", "vae_log"],
                name="train_teacher_vae",
            ),
            Node(
                nodes.train_text_to_image,
                ["teacher_splits", "teacher_vae", "world_tokenizer", "params:teacher"],
                ["teacher_trained", "text_to_image_log"],
                name="train_teacher_text_to_image",
            ),
            Node(
                nodes.evaluate_teacher,
                ["teacher_trained", "attribute_probe", "teacher_splits", "params:teacher"],
                ["teacher_render_scores", "teacher_samples"],
                name="evaluate_teacher",
            ),
            Node(
                nodes.package_teacher,
                [
                    "teacher_trained",
                    "params:teacher",
                    "vae_log",
                    "text_to_image_log",
                    "probe_log",
                    "teacher_render_scores",
                ],
                ["teacher", "teacher_metrics", "teacher_loss"],
                name="package_teacher",
            ),
        ]
    )
