"""Each stage's pipeline run through Kedro's SequentialRunner on the project's own catalog
(conf/base's entries, every file under tmp_path), as the starter's test_pipeline.py does:
real nodes, tiny models, outputs loaded back through the real datasets. Seconds each; the
slow end-to-end test runs the whole chain through `kedro run`.

The chain: cache -> stage1 -> synthesize -> stage2 -> evaluate, each test on what the one
before wrote (fixtures in that order).
"""

import shutil
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from stage2_factory import stage2_params
from world_factory import render_and_ingest

from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder
from vlv_pipeline.params.cache import CacheParams
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.rating import RatingParams
from vlv_pipeline.params.rerender import RerenderParams
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.params.vqa import VQAParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines import cache, evaluate, stage1, stage2, synthesize

ROOT = Path(__file__).resolve().parents[2]


def _params(tiny_sd: Path, tmp: Path) -> dict:
    probe = AttributeProbe(image_size=16, width=4, hidden=8)
    probe.save_pretrained(tmp / "probe")
    training = {"steps": 2, "batch_size": 4, "learning_rate": 1e-3, "log_every": 1}
    return {
        "t2i": T2IParams(model=str(tiny_sd)),  # the one T2I block every stage takes
        "cache": CacheParams(batch_size=4),  # its VAE: the T2I model's
        "stage1": Stage1Params(
            encoder={
                "backbone": "small",
                "num_queries": 4,
                "small": {"width": 16, "heads": 2, "image_size": 16, "vision_tower": "t2i_vae"},
            },
            training={**training, "checkpoint_every": 2},
            validation={
                "images": 4,
                "grid_images": 2,
                "probe": str(tmp / "probe"),
                "sampling": {"steps": 2, "batch_size": 4},
            },
            checkpoint_dir=str(tmp / "data/06_models/checkpoints/stage1"),
        ),
        "synthesize": SynthesizeParams(fraction=0.5, journal_dir=str(tmp / "journal")),
        "stage2": stage2_params(tiny_sd, tmp / "data"),
        "evaluate": EvaluateParams(
            images=4,  # render_t2i null: the captions render on the T2I model too
            sampling={"steps": 2, "batch_size": 4},
            probe=str(tmp / "probe"),
            grid_images=2,
        ),
        "world": WorldParams(image_size=16, counts={"train": 16, "val": 0, "test": 4}),
        "rating": RatingParams(images=3),
        "vqa": VQAParams(journal_dir=str(tmp / "vqa_journal")),
        "rerender": RerenderParams(guidance=[1.0, 2.0], steps=2, scheduler="DDIMScheduler"),
    }


@pytest.fixture(scope="module")
def catalog(tiny_sd, tmp_path_factory):
    """conf/base's catalog with `data` under tmp_path, a tiny world rendered where
    `raw_images` reads and ingested into `image_manifest`, and tiny typed parameters."""
    tmp = tmp_path_factory.mktemp("wiring")
    conf = tmp / "conf"
    (conf / "local").mkdir(parents=True)
    shutil.copytree(ROOT / "conf/base", conf / "base", ignore=shutil.ignore_patterns("param*"))
    (conf / "base/globals.yml").write_text(f"data: {tmp / 'data'}\nt2i: {tiny_sd}\n")
    loader = OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")
    catalog = DataCatalog.from_config(loader["catalog"], credentials=loader["credentials"])
    world = WorldParams(image_size=16, counts={"train": 16, "val": 0, "test": 4})
    raw = tmp / "data/01_raw/shapes"
    raw.mkdir(parents=True)
    _, manifest = render_and_ingest(raw, world)
    catalog.save("image_manifest", manifest)
    params = _params(tiny_sd, tmp)
    for name, value in params.items():
        catalog[f"params:{name}"] = MemoryDataset(value, copy_mode="assign")
    catalog["parameters"] = MemoryDataset({k: v.model_dump() for k, v in params.items()})
    return catalog


def _run(pipeline, catalog) -> None:
    SequentialRunner().run(pipeline, catalog)


@pytest.fixture(scope="module")
def cached(catalog):
    _run(cache.create_pipeline(), catalog)
    return catalog


@pytest.fixture(scope="module")
def trained_stage1(cached):
    _run(stage1.create_pipeline(), cached)
    return cached


@pytest.fixture(scope="module")
def synthesized(trained_stage1):
    _run(synthesize.create_pipeline(), trained_stage1)
    return trained_stage1


@pytest.fixture(scope="module")
def trained_stage2(synthesized):
    _run(stage2.create_pipeline(), synthesized)
    return synthesized


def test_cache_pipeline_writes_the_latent_cache(cached):
    latents = cached.load("latent_cache")
    assert sorted(latents.image_ids()) == sorted(cached.load("image_manifest")["image_id"])


def test_stage1_pipeline_writes_a_loadable_encoder_and_its_reports(trained_stage1):
    encoder = trained_stage1.load("vlv_encoder")  # a versioned model directory, reloaded
    assert isinstance(encoder, SmallVLVEncoder) and encoder.config.num_queries == 4
    log = trained_stage1.load("stage1_log")
    assert [e["step"] for e in log["history"]] == [1, 2]
    metrics = trained_stage1.load("stage1_metrics")
    assert metrics["images"] == 4 and 0 <= metrics["reconstruction"]["exact_scene"] <= 1


def _card(catalog, name: str):
    """The model card of the model directory ``name`` this run saved, parsed as the Hub
    parses it; and its text."""
    from huggingface_hub import ModelCard

    text = catalog.load(f"{name}_card")
    directory = Path(catalog._datasets[name]._get_load_path())
    assert (directory / "README.md").read_text() == text  # the saved version's own card
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temporaries
    return ModelCard(text), text


def test_stage1_writes_the_encoders_card_with_its_validation(trained_stage1):
    card, text = _card(trained_stage1, "vlv_encoder")
    assert card.data.library_name == "vlv-pipeline"
    assert card.data.pipeline_tag == "image-feature-extraction"
    metrics = trained_stage1.load("stage1_metrics")["reconstruction"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == pytest.approx({k: float(v) for k, v in metrics.items()})
    assert "Not measured yet" not in text and "`validate_stage1`: 4 images" in text
    assert "Trained on **16 images**" in text  # the world's train split
    assert '"learning_rate": 0.001' in text  # every training parameter


def test_stage2_writes_each_captioners_card_with_its_validation(trained_stage2):
    from vlv_pipeline.models.model_card import LOAD_SNIPPET

    metrics = trained_stage2.load("stage2_metrics")
    for name, key in (("vlv_captioner", "vlv"), ("baseline_captioner", "without_stage1")):
        card, text = _card(trained_stage2, name)
        assert card.data.pipeline_tag == "image-to-text"
        assert LOAD_SNIPPET.strip() in text  # the README's lines
        assert "Trained on **8 image-caption pairs**" in text
        results = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert results["exact_scene"] == metrics[key]["exact_scene"]
        assert metrics[key]["samples"][0]["caption"] in text
        assert "08_reporting/eval_metrics.json" in text  # where evaluate's numbers land


def test_synthesize_pipeline_writes_pairs_and_their_embeddings(synthesized):
    pairs = synthesized.load("caption_pairs")
    assert len(pairs) == 8 and pairs["caption"].str.len().min() > 0
    embeddings = synthesized.load("embedding_cache")
    assert sorted(embeddings.image_ids()) == sorted(pairs["image_id"])


def test_stage2_pipeline_writes_both_captioners_and_their_scores(trained_stage2):
    for name in ("vlv_captioner", "baseline_captioner"):
        captioner = trained_stage2.load(name)
        assert callable(captioner.caption)
    metrics = trained_stage2.load("stage2_metrics")
    assert {"vlv", "without_stage1"} <= set(metrics)
    assert trained_stage2.load("stage2_log")["pairs"] == 8


def test_evaluate_pipeline_writes_the_report(trained_stage2):
    _run(evaluate.create_pipeline(), trained_stage2)
    metrics = trained_stage2.load("eval_metrics")
    assert set(metrics["captions"]) == {"vlv", "without_stage1", "chance"}
    assert "from_embeddings" in metrics["reconstruction"]
    html = trained_stage2.load("eval_report")
    assert "VLV captioner" in html and "upper bound" in html
    assert trained_stage2.load("eval_table3")["key"] == "table3"  # Table 3, caption-only VQA
    table1 = trained_stage2.load("eval_table1")  # Table 1, re-rendered over the guidance sweep
    assert table1["rows"][0]["label"] == "VLV captioner" and len(table1["columns"]) == 2
    ids = trained_stage2.load("eval_captions")["image_id"].tolist()
    assert trained_stage2.load("eval_set_ids")["image_ids"] == ids  # the set, written down
    for title in ("Table 1", "Table 2: rated captions", "Table 3: caption-only VQA"):
        assert title in html  # the report shows the three tables
