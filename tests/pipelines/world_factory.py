"""Shared by the pipeline tests: a shapes world on disk, ingested."""

from vlv_pipeline.params.world import WorldParams


def render_and_ingest(root, world: WorldParams):
    """The world rendered into ``root/images`` (+ labels.parquet) and ingested, as the
    `world` and `ingest` pipelines do: ``(source, manifest)``."""
    from vlv_pipeline.datasets.image_source import ImageSourceDataset
    from vlv_pipeline.imaging.screen_table import screen_images
    from vlv_pipeline.params.ingest import IngestParams
    from vlv_pipeline.pipelines.ingest.nodes import build_manifest
    from vlv_pipeline.world.generate import generate_labels, render_images

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


def stage1_data(t2i, root):
    """8 train and 4 test world images of 16 px: rendered into ``root``, ingested, their
    latents cached under the VAE of the T2I directory ``t2i``, then read per item by
    ``load_stage1_data``, as a run makes them."""
    from vlv_pipeline.datasets.shard_store import LatentCache
    from vlv_pipeline.params.cache import CacheParams
    from vlv_pipeline.params.stage1 import Stage1Params
    from vlv_pipeline.params.t2i import T2IParams
    from vlv_pipeline.pipelines.cache.nodes import encode_latents
    from vlv_pipeline.pipelines.stage1.nodes import load_stage1_data

    world = WorldParams(image_size=16, counts={"train": 8, "val": 0, "test": 4})
    source, manifest = render_and_ingest(root, world)
    cache = encode_latents(
        source,
        manifest,
        LatentCache(root / "latents"),
        CacheParams(batch_size=4, shard_size=5),  # the T2I model's own VAE
        T2IParams(model=str(t2i)),
    )
    params = Stage1Params(
        encoder={"backbone": "small", "num_queries": 4},
        training={"steps": 1, "batch_size": 4, "learning_rate": 1e-3},
    )
    return load_stage1_data(source, manifest, cache, params, T2IParams(model=str(t2i)))
