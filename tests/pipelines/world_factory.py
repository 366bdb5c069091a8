"""Shared by the pipeline tests: a shapes world on disk, ingested."""

from vlv_pipeline.params.world import WorldParams


def render_and_ingest(root, world: WorldParams):
    """The world rendered into ``root/images`` (+ labels.parquet) and ingested, as the
    `world` and `ingest` pipelines do: ``(source, manifest)``."""
    from vlv_pipeline.datasets.image_source import ImageSourceDataset
    from vlv_pipeline.params.ingest import IngestParams
    from vlv_pipeline.pipelines.ingest.nodes import build_manifest, screen_images
    from vlv_pipeline.pipelines.world.nodes import generate_labels, render_images

    labels = generate_labels(world)
    labels.to_parquet(root / "labels.parquet")
    dataset = ImageSourceDataset(
        kind="folder",
        path=str(root / "images"),
        captions=str(root / "labels.parquet"),
        writable=True,
    )
    dataset.save(render_images(labels, world))
    source = dataset.load()
    params = IngestParams(min_side=8)
    return source, build_manifest(screen_images(source, params), params)
