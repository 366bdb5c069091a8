"""Parameters of the `stage2` pipeline (``params:stage2``): teach an LLM to read embeddings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.components import ComponentSpec
from vlv_pipeline.params.needs import component_needs
from vlv_pipeline.params.stage1 import EncoderParams
from vlv_pipeline.params.training import TrainParams

TRAINABLE = Literal["projector", "projector+llm", "projector+lora", "projector+llm+encoder"]
PARTS = frozenset({"projector", "llm", "lora", "encoder"})


def trainable_parts(trainable: str) -> frozenset[str]:
    """The parts a `stage2.trainable` value names (``"projector+llm"`` -> {projector, llm}):
    code asks ``"encoder" in parts``, never searches the string."""
    parts = frozenset(trainable.split("+"))
    if not parts <= PARTS:
        raise ValueError(
            f"stage2.trainable {trainable!r} names unknown parts {sorted(parts - PARTS)}"
        )
    return parts


class LoraParams(StrictModel):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class GenerationParams(StrictModel):
    max_new_tokens: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=1)


class BaselineParams(StrictModel):
    """The paper's "without stage 1": the same LLM and psi on the same pairs, from an encoder
    of the stage-1 architecture that never had stage 1 (trained here with psi and the LLM).

    ``training`` is stage 2's ``training`` with the keys given here replaced (conf/base sets
    the baseline's own learning rate and warm-up, tuned in docs/STUDY.md "Tuning the
    baseline"); steps, batch and seed stay stage 2's unless named here too.
    """

    encoder: EncoderParams | None = None  # default: stage 1's encoder settings
    training: TrainParams | None = None  # default: stage 2's


class Stage2Params(StrictModel):
    """Stage 2 on the text encoder of ``params:t2i`` (its nodes take that block)."""

    llm: ComponentSpec = Field(description="the causal LM: {pretrained: ...} or {init: {...}}")
    tokenizer: ComponentSpec = Field(description="its tokenizer: {pretrained, subfolder}")
    resolution: int | None = Field(None, gt=0, description="encoder input side, as in stage 1")
    trainable: TRAINABLE = "projector+llm"
    lora: LoraParams = LoraParams()
    max_caption_tokens: int = Field(64, ge=2)
    training: TrainParams
    generation: GenerationParams = GenerationParams()
    baseline: BaselineParams = BaselineParams()
    validation_images: int = Field(256, ge=1)
    # fewer pairs than training.batch_size: true trains on all of them as one batch (each
    # step sees every pair once; the log says which batch ran); false refuses such a run
    batch_at_most_pairs: bool = False
    # also caption the validation images while training, every this many steps (BLEU-4,
    # ROUGE-L, CIDEr and a captioned grid to the trackers); null: only after training
    validation_every: int | None = Field(None, ge=1)
    checkpoint_dir: str = "data/06_models/checkpoints/stage2"

    def needs(self, block: str) -> list:
        """The LLM, its tokenizer (configs only), the baseline's encoder (the T2I model:
        ``params:t2i``)."""
        found = component_needs(f"{block}.llm", self.llm)
        found += component_needs(f"{block}.tokenizer", self.tokenizer)
        if self.baseline.encoder is not None:
            found += self.baseline.encoder.needs(f"{block}.baseline.encoder")
        return found

    @model_validator(mode="before")
    @classmethod
    def _baseline_training_overrides_stage2s(cls, data):
        """``baseline.training`` holds only what differs from ``training``: merge the two."""
        if not isinstance(data, dict):
            return data
        baseline, training = data.get("baseline"), data.get("training")
        if not isinstance(baseline, dict) or not isinstance(training, dict):
            return data
        overrides = baseline.get("training")
        if isinstance(overrides, dict):
            data = {**data, "baseline": {**baseline, "training": {**training, **overrides}}}
        return data

    @property
    def parts(self) -> frozenset[str]:
        """What trains, as a set of parts (``trainable_parts``)."""
        return trainable_parts(self.trainable)

    @model_validator(mode="after")
    def _lora_only_with_peft(self) -> Stage2Params:
        if "lora" in self.parts:
            try:
                import peft  # noqa: F401
            except ImportError as error:
                raise ValueError(
                    "trainable: projector+lora needs peft (pip install peft)"
                ) from error
        return self
