"""conf/paper's optimisation and data filter are the paper's (arXiv 2507.07104 section 4.1)
and the official scripts' (train_stage1.sh, configs/deepspeed_fp32.json, train_VLV_stage2.py);
what still differs is in docs/DEPARTURES.md."""

from pathlib import Path

from kedro.config import OmegaConfigLoader

from vlv_pipeline import settings
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.stage2 import Stage2Params
from vlv_pipeline.params.synthesize import SynthesizeParams

ROOT = Path(__file__).resolve().parents[2]


def _parameters(env: str) -> dict:
    loader = OmegaConfigLoader(str(ROOT / "conf"), env=env, **settings.CONFIG_LOADER_ARGS)
    return loader["parameters"]


def test_stage1_is_adamw_with_decay_on_every_weight_and_a_cosine_without_warm_up():
    training = Stage1Params(**_parameters("paper")["stage1"]).training
    assert (training.learning_rate, training.lr_schedule, training.warmup_steps) == (
        5e-5,
        "cosine",
        0,
    )
    assert training.min_learning_rate == 0.0
    assert training.betas == (0.9, 0.99) and training.weight_decay == 0.01
    assert training.decay_norms_and_biases  # the official optimizer decays every parameter
    assert training.steps == 200_000
    assert training.batch_size * training.gradient_accumulation == 512


def test_stage2_and_its_baseline_decay_linearly_from_1e5_without_warm_up():
    stage2 = Stage2Params(**_parameters("paper")["stage2"])
    for training in (stage2.training, stage2.baseline.training):
        assert (training.learning_rate, training.lr_schedule, training.warmup_steps) == (
            1e-5,
            "linear",
            0,
        )
        # torch's AdamW as the official script builds it: betas (0.9, 0.999), wd 0.01
        assert training.betas == (0.9, 0.999) and training.weight_decay == 0.01
        assert training.decay_norms_and_biases and training.mixed_precision == "bf16"
    assert stage2.training.steps == 100_000 and stage2.max_caption_tokens == 300


def test_ingest_keeps_what_the_paper_keeps():
    ingest = IngestParams(**_parameters("paper")["ingest"])
    assert (ingest.min_side, ingest.max_aspect_ratio, ingest.watermark_below) == (512, 2.0, 0.5)


def test_the_synthesis_prompt_asks_for_what_the_papers_does_and_leaves_room():
    openai = SynthesizeParams(**_parameters("paper")["synthesize"]).captioner.openai
    for asked in ("setting", "relative", "clothing", "pose", "lighting", "shadows", "mood"):
        assert asked in openai.prompt
    assert "\n" not in openai.prompt
    assert openai.max_tokens > 300  # the paper's captions average 227 tokens; a cap cuts them


def test_the_default_runs_keep_their_schedule():
    base = _parameters("base")
    for block in ("stage1", "stage2"):
        training = base[block]["training"]
        assert training.get("lr_schedule", "cosine") == "cosine"
    assert IngestParams(**base["ingest"]).watermark_below is None


def test_the_baseline_changes_only_what_it_names_of_stage2s_training():
    """conf/base's baseline has its own tuned rate and warm-up and keeps its 1000 steps while
    stage 2 trains 300 with the encoder; batch and seed (which the study's points set on
    stage2.training) stay stage 2's."""
    raw = _parameters("base")["stage2"]
    raw["training"] = {**raw["training"], "seed": 7}
    stage2 = Stage2Params(**raw)
    baseline, training = stage2.baseline.training, stage2.training
    assert (baseline.learning_rate, baseline.warmup_steps) == (3e-4, 200)
    assert (training.learning_rate, training.warmup_steps) == (1e-3, 50)
    assert (baseline.steps, training.steps) == (1000, 300)
    same = ("batch_size", "seed", "lr_schedule", "weight_decay", "max_grad_norm")
    assert {k: getattr(baseline, k) for k in same} == {k: getattr(training, k) for k in same}
    assert baseline.seed == 7
    paper = Stage2Params(**_parameters("paper")["stage2"])
    assert paper.baseline.training.steps == 10_000
    assert paper.baseline.training.gradient_accumulation == paper.training.gradient_accumulation
