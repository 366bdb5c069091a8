"""The `teacher` pipeline (shapes world only): retrains the shipped miniature T2I models + probe.

Nodes tagged ``stable_diffusion`` train the SD-style teacher (its VAE, CLIP + UNet, and the
probe); nodes tagged ``flow_matching`` train the SD 3-shaped one on the shipped VAE, judged
by the shipped probe (``kedro run --pipeline teacher --tags flow_matching``)."""

from kedro.pipeline import Node, Pipeline

from vlv_pipeline.pipelines.teacher import nodes

SD, FLOW = "stable_diffusion", "flow_matching"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.load_world_splits,
                ["raw_images", "image_manifest", "world_labels", "params:world"],
                "teacher_splits",
                name="load_world_splits",
                tags=[SD, FLOW],
            ),
            Node(
                nodes.train_probe,
                ["teacher_splits", "params:teacher", "params:world"],
                ["attribute_probe", "probe_log"],
                name="train_attribute_probe",
                tags=[SD],
            ),
            Node(
                nodes.train_vae,
                ["teacher_splits", "params:teacher"],
                ["teacher_vae", "vae_log"],
                name="train_teacher_vae",
                tags=[SD],
            ),
            Node(
                nodes.train_text_to_image,
                ["teacher_splits", "teacher_vae", "world_tokenizer", "params:teacher"],
                ["teacher_trained", "text_to_image_log"],
                name="train_teacher_text_to_image",
                tags=[SD],
            ),
            Node(
                nodes.evaluate_teacher,
                ["teacher_trained", "attribute_probe", "teacher_splits", "params:teacher"],
                ["teacher_render_scores", "teacher_samples"],
                name="evaluate_teacher",
                tags=[SD],
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
                tags=[SD],
            ),
            Node(
                nodes.train_flow_text_to_image,
                [
                    "teacher_splits",
                    "shipped_teacher_vae",
                    "world_tokenizer",
                    "params:teacher_flow",
                ],
                ["teacher_flow_trained", "teacher_flow_log"],
                name="train_flow_teacher",
                tags=[FLOW],
            ),
            Node(
                nodes.evaluate_flow_teacher,
                ["teacher_flow_trained", "shipped_probe", "teacher_splits", "params:teacher_flow"],
                ["teacher_flow_render_scores", "teacher_flow_samples"],
                name="evaluate_flow_teacher",
                tags=[FLOW],
            ),
            Node(
                nodes.package_flow_teacher,
                [
                    "teacher_flow_trained",
                    "params:teacher_flow",
                    "teacher_flow_log",
                    "teacher_flow_render_scores",
                ],
                ["teacher_flow", "teacher_flow_metrics", "teacher_flow_loss"],
                name="package_flow_teacher",
                tags=[FLOW],
            ),
        ]
    )
