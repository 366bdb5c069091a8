"""Model cards (models/model_card.py): rendered with a node's model, saved with it, their
evaluation rewritten in place by ModelCardDataset (datasets/model_card.py). Seconds each."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from kedro.io.core import Version

from vlv_pipeline.datasets.model_card import ModelCardDataset
from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.errors import ModelDirectoryError
from vlv_pipeline.models.model_card import card_or_none, encoder_card
from vlv_pipeline.models.model_card_evaluation import (
    stage1_evaluation,
    stage2_evaluation,
    update_evaluation,
    with_evaluation,
)
from vlv_pipeline.models.model_card_parts import CARD, EVALUATION_START
from vlv_pipeline.models.provenance import encoder_record
from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder
from vlv_pipeline.params.stage1 import Stage1Params

ROOT = Path(__file__).resolve().parents[2]
TEACHER = "src/vlv_pipeline/assets/teacher"  # conf/base's t2i, relative to the project
STAGE1_METRICS = {
    "split": "test",
    "images": 8,
    "sampling": {"scheduler": "DDIMScheduler", "steps": 2, "guidance": 1.0, "seed": 0},
    "num_queries": 4,
    "reconstruction": {"exact_scene": 0.25, "attributes": 0.5},
}
STAGE2_METRICS = {
    "images": 4,
    "generation": {"max_new_tokens": 8, "num_beams": 1, "batch_size": 8},
    "vlv": {
        "samples": [{"image_id": "a", "caption": "a red circle", "reference": "a red square"}],
        "captions": 4,
        "exact_scene": 0.5,
    },
}


@pytest.fixture
def encoder(monkeypatch):
    """A shapes-world encoder (the shipped teacher's width) with its card, as stage 1 makes it."""
    monkeypatch.chdir(ROOT)
    params = Stage1Params(
        encoder={"backbone": "small", "num_queries": 4, "small": {"width": 16, "heads": 2}},
        training={"steps": 3, "batch_size": 2, "learning_rate": 1e-3},
    )
    model = SmallVLVEncoder(
        num_queries=4, out_dim=64, image_size=32, width=16, heads=2, stem_channels=(8, 8, 16)
    )
    model.provenance = encoder_record(model, t2i=TEACHER, resolution=None)
    log = {"history": [{"step": 3, "loss": 0.5}], "seconds": 90.0, "trainable_parameters": 10}
    source = {"kind": "folder", "path": str(ROOT / "data/01_raw/shapes/images")}
    model.model_card = encoder_card(model, params, log, {"images": 12, "source": source}, TEACHER)
    return model


def test_the_encoders_card_says_what_it_is_and_how_it_trained(encoder):
    card = ModelCard(encoder.model_card)
    assert card.data.library_name == "vlv-pipeline"
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert "shapes-world" in card.data.tags  # distilled from the shipped teacher
    assert card.data.license == "other"
    text = card.text
    assert "4 continuous caption embeddings of width\n64" in text
    assert "**12 images**" in text and "`data/01_raw/shapes/images`" in text  # not absolute
    assert "| learning rate | 0.001 |" in text and "| last logged loss | 0.5 |" in text
    assert "knows that world's shapes" in text  # the shapes world's limits
    assert "Not measured yet: `validate_stage1`" in text
    assert not card.data.eval_results


def test_a_model_directory_is_saved_with_its_card(encoder, tmp_path):
    dataset = ModelDirectoryDataset(
        filepath=str(tmp_path / "vlv_encoder"),
        load_class="vlv_pipeline.models.vlv_encoder.VLVEncoder",
        version=Version(None, "2026-01-01T00.00.00.000Z"),
    )
    dataset.save(encoder)
    saved = tmp_path / "vlv_encoder/2026-01-01T00.00.00.000Z/vlv_encoder"
    assert (saved / CARD).read_text() == encoder.model_card
    encoder.model_card = None  # a model without one (a teacher, a tokenizer) gets none
    plain = ModelDirectoryDataset(
        filepath=str(tmp_path / "plain"), load_class="vlv_pipeline.models.vlv_encoder.VLVEncoder"
    )
    plain.save(encoder)
    assert not (tmp_path / "plain" / CARD).exists()


def test_validation_replaces_the_evaluation_and_the_model_index(encoder, tmp_path):
    (tmp_path / CARD).write_text(encoder.model_card)
    first = stage1_evaluation(STAGE1_METRICS)
    update_evaluation(tmp_path, first)
    update_evaluation(tmp_path, {**first, "metrics": {"exact_scene": 0.75}})  # run again
    card = ModelCard.load(tmp_path / CARD)
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("exact_scene", 0.75)
    ]
    result = card.data.eval_results[0]
    assert (result.task_type, result.dataset_split) == ("image-feature-extraction", "test")
    assert card.text.count(EVALUATION_START) == 1 and "Not measured yet" not in card.text
    assert "| exact_scene | 0.75 |" in card.text and "8 images of the `test` split" in card.text
    assert "## Training" in card.text  # the rest of the card as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == [CARD]  # no temporary left


def test_a_captioners_evaluation_shows_its_scores_and_some_captions():
    evaluation = stage2_evaluation(STAGE2_METRICS, "vlv")
    assert evaluation["metrics"] == {"exact_scene": 0.5}  # counts and samples are not scores
    card = ModelCard(with_evaluation("---\nlibrary_name: vlv-pipeline\n---\n# x\n", evaluation))
    assert card.data.eval_results[0].task_type == "image-to-text"
    assert "| a red circle | a red square |" in card.text
    assert stage2_evaluation(STAGE2_METRICS, "without_stage1") is None  # not scored


def test_the_card_dataset_writes_the_version_this_run_saved(encoder, tmp_path):
    folder = tmp_path / "vlv_encoder"
    for version in ("2026-01-01T00.00.00.000Z", "2026-02-01T00.00.00.000Z"):
        ModelDirectoryDataset(
            filepath=str(folder),
            load_class="vlv_pipeline.models.vlv_encoder.VLVEncoder",
            version=Version(None, version),
        ).save(encoder)
    evaluation = stage1_evaluation(STAGE1_METRICS)
    older = ModelCardDataset(
        filepath=str(folder), version=Version(None, "2026-01-01T00.00.00.000Z")
    )
    older.save(evaluation)  # this run saved the older one: its card, not the latest's
    assert (
        "| exact_scene | 0.25 |"
        in (folder / "2026-01-01T00.00.00.000Z/vlv_encoder" / CARD).read_text()
    )
    assert (
        "Not measured yet" in (folder / "2026-02-01T00.00.00.000Z/vlv_encoder" / CARD).read_text()
    )
    # a run that saved none (`kedro run --nodes card_stage1`): the latest version's
    ModelCardDataset(filepath=str(folder), version=Version(None, "2027-01-01T00.00.00.000Z")).save(
        evaluation
    )
    latest = ModelCardDataset(filepath=str(folder), version=Version(None, None)).load()
    assert "| exact_scene | 0.25 |" in latest
    with pytest.raises(ModelDirectoryError, match="run the pipeline that saves it first"):
        ModelCardDataset(filepath=str(tmp_path / "none"), version=Version(None, None)).save(
            evaluation
        )


def test_a_card_that_cannot_be_rendered_costs_the_card_not_the_model(caplog):
    def broken():
        raise KeyError("num_queries")

    with caplog.at_level(logging.WARNING):
        assert card_or_none(broken) is None
    assert "could not write the model card (broken)" in caplog.text
