"""The `cache`, `synthesize`, `evaluate` and `caption` nodes on tiny inputs, in one go.

test_rank_parallel.py runs ``run_stages`` once under `accelerate launch` (2 processes, gloo on
CPU; this file is the script, each rank dumping what the nodes returned to it) and once in
its own process, the single-process reference.

    python rank_worker.py CONFIG.json   # under accelerate launch
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]


def stage_params(config: dict) -> dict:
    """Every stage's parameters; ``config`` names the inputs and where outputs go."""
    from stage2_factory import stage2_params

    from vlv_pipeline.params.cache import CacheParams
    from vlv_pipeline.params.evaluate import CaptionParams, EvaluateParams
    from vlv_pipeline.params.ingest import IngestParams
    from vlv_pipeline.params.synthesize import SynthesizeParams
    from vlv_pipeline.params.t2i import T2IParams

    sd, out = config["tiny_sd"], Path(config["out"])
    evaluate = dict(
        render_t2i=sd,
        images=5,  # 3 + 2 images on 2 ranks; batches of 2 cut them otherwise than 1 process
        sampling={"steps": 2, "batch_size": 2},
        grid_images=4,  # the grid spans both ranks' images
    )
    return {
        "t2i": T2IParams(model=sd),
        "cache": CacheParams(
            vae={"pretrained": sd, "subfolder": "vae"}, batch_size=4, shard_size=6
        ),
        "synthesize": SynthesizeParams(
            fraction=0.5,
            journal_dir=str(out / "journal"),
            captioner={
                "backend": "openai",
                "openai": {
                    "base_url": config["server"],
                    "model": "stub",
                    "max_concurrency": 2,
                    "max_retries": 0,
                },
            },
            embedding_batch_size=2,
            embedding_shard_size=3,
        ),
        "stage2": stage2_params(sd, out),
        "evaluate": EvaluateParams(**evaluate, probe=config["probe"]),
        "evaluate_pixels": EvaluateParams(**evaluate, judge="pixels"),
        "caption": CaptionParams(source=config["user_images"], batch_size=2),
        "ingest": IngestParams(min_side=8, parts_dir=str(out / "parts")),
    }


def run_stages(config: dict) -> dict:
    """The four pipelines' nodes, as their pipelines wire them; what each returned."""
    import pandas as pd

    from vlv_pipeline.datasets.image_source import ImageSourceDataset
    from vlv_pipeline.datasets.shard_store import EmbeddingCache, LatentCache
    from vlv_pipeline.imaging.screen_table import screen_images
    from vlv_pipeline.pipelines.cache.nodes import encode_latents
    from vlv_pipeline.pipelines.caption import nodes as caption
    from vlv_pipeline.pipelines.evaluate import nodes as evaluate
    from vlv_pipeline.pipelines.evaluate.renders import reconstruct
    from vlv_pipeline.pipelines.evaluate.scoring import score_evaluation
    from vlv_pipeline.pipelines.synthesize import nodes as synthesize

    params, out = stage_params(config), Path(config["out"])
    source = ImageSourceDataset(
        kind="folder", path=config["images"], captions=config["labels"]
    ).load()
    manifest = pd.read_parquet(config["manifest"])
    models = torch.load(config["models"], weights_only=False)
    results: dict = {}

    latents = encode_latents(
        source, manifest, LatentCache(out / "latents"), params["cache"], params["t2i"]
    )
    results["latent_ids"] = sorted(latents.image_ids())

    selection = synthesize.select_images(manifest, params["synthesize"])
    pairs = synthesize.synthesize_captions(source, selection, params["synthesize"], {})
    results["pairs"] = pairs
    embeddings = synthesize.cache_pair_embeddings(
        source,
        manifest,
        pairs,
        models["encoder"],
        EmbeddingCache(out / "embeddings"),
        params["stage2"],
        params["synthesize"],
        params["t2i"],
    )
    results["embedding_ids"] = sorted(embeddings.image_ids())

    data = evaluate.load_eval_data(source, manifest, params["evaluate"])
    captions = evaluate.caption_eval_images(
        models["captioner"], models["baseline"], data, params["evaluate"]
    )
    results["eval_captions"] = captions
    for judge in ("evaluate", "evaluate_pixels"):
        renders = reconstruct(models["encoder"], data, captions, params[judge], params["t2i"])
        metrics, samples, grid = score_evaluation(data, captions, renders, params[judge])
        results[judge] = {"metrics": metrics, "samples": samples, "grid": grid}

    user_images = caption.open_user_images(params["caption"])
    screened = screen_images(user_images, params["ingest"])
    results["user_screened"] = screened
    results["user_captions"] = caption.caption_user_images(
        models["captioner"], user_images, screened, params["caption"]
    )
    return results


def main(config_path: str) -> None:
    from accelerate import Accelerator

    config = json.loads(Path(config_path).read_text())
    results = run_stages(config)
    # what a training after these nodes would see: their collectives made Accelerate's state
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    results["world"] = accelerator.num_processes
    torch.save(results, Path(config["out"]) / f"rank{accelerator.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
