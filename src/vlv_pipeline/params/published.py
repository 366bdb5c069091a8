"""Parameters of the `import_published` pipeline (``params:import_published``)."""

from __future__ import annotations

from pydantic import Field

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.components import ComponentSpec
from vlv_pipeline.params.needs import PublishedCheckpointNeed, component_needs


class PublishedGeneration(StrictModel):
    """The official inference's generation: 4 beams, 300 new tokens, stop early, the
    prefix cast to bfloat16 before the LLM (recorded in the imported captioner)."""

    max_new_tokens: int = Field(300, ge=1)
    num_beams: int = Field(4, ge=1)
    early_stopping: bool = True
    # the official generate() casts the LLM's prefix to bfloat16 even in an fp32 run: the
    # published captions were made that way
    bf16_prefix: bool = True


class ImportParams(StrictModel):
    """Where the published checkpoint is, and the configs and tokenizers of its components
    (only their config.json and tokenizer files are read: the weights are the checkpoint's)."""

    checkpoint: str | None = Field(
        None, description="the published .pt/.bin/.safetensors file, or a folder of shards"
    )
    florence2: ComponentSpec = Field(description="Florence-2-large's config (native transformers)")
    florence2_tokenizer: ComponentSpec = Field(description="Florence-2's tokenizer, for the prompt")
    # the task prompt the official inference gives Florence-2 (<MORE_DETAILED_CAPTION>)
    prompt: str = "Describe with a paragraph what is shown in the image."
    text_encoder: ComponentSpec = Field(description="SD 2.1's CLIP text encoder config")
    llm: ComponentSpec = Field(description="Qwen2.5-3B's config")
    tokenizer: ComponentSpec = Field(description="Qwen2.5-3B's tokenizer")
    # the official inference centre-crops images to 384 px, then Florence-2's processor
    # resizes the crop to 768 px before normalising
    crop_size: int = Field(384, gt=0)
    input_size: int | None = Field(768, gt=0)
    generation: PublishedGeneration = PublishedGeneration()

    def needs(self, block: str) -> list:
        """Its components' configs and tokenizers (no weights: those are the checkpoint's),
        and the published checkpoint."""
        found = []
        for name in ("florence2", "florence2_tokenizer", "text_encoder", "llm", "tokenizer"):
            found += component_needs(f"{block}.{name}", getattr(self, name), weights=False)
        return [*found, PublishedCheckpointNeed(f"{block}.checkpoint", self.checkpoint)]
