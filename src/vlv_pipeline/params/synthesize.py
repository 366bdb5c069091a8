"""Parameters of the `synthesize` pipeline (``params:synthesize``): caption-pair synthesis."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.needs import KeyNeed, ModelNeed

DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024  # imaging.reading's, as ingest.max_file_bytes


class TransformersCaptionerParams(StrictModel):
    """A local image-to-text model (``captioners/hf.py``)."""

    pretrained: str
    prompt: str = "<MORE_DETAILED_CAPTION>"
    kind: Literal["florence2", "image-text-to-text"] = "florence2"
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    num_beams: int = Field(1, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class OpenAICaptionerParams(StrictModel):
    """An OpenAI-compatible chat-completions endpoint; the key comes from Kedro credentials."""

    base_url: str
    model: str
    prompt: str = "Describe this image in one detailed paragraph."
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    max_tokens: int = Field(300, ge=1)
    bad_answer_attempts: int = Field(
        2, ge=1, description="answers without a usable caption before an image is given up on"
    )
    deadline_s: float = Field(
        120, gt=0, description="one request in all (timeout_s bounds each socket operation)"
    )


class PairsDatasetParams(StrictModel):
    """Caption pairs someone already made, from a local copy of an image-caption dataset
    (the authors' 6M Gemini pairs: ``captioners/pairs_dataset.py``)."""

    path: str = Field(
        description="a parquet file, a folder of parquet files (found anywhere below it, as a "
        "hub download's data/*.parquet), or a `datasets` save_to_disk folder"
    )
    split: str = Field("train", description="the split of a DatasetDict saved with save_to_disk")
    caption_column: str = "caption"
    image_column: str | None = Field(
        "image",
        description="the images: encoded bytes, or the Hugging Face Image struct (bytes, or "
        "a path relative to the data file's folder); needed by match: sha256",
    )
    key_column: str | None = Field(
        None, description="a name per row (e.g. img2dataset's key); needed by match: source|key"
    )
    match: Literal["sha256", "source", "key"] = Field(
        "sha256",
        description="sha256: the sha256 of the image bytes is the manifest's image_id (the "
        "same files went through ingest); source: key_column is the manifest's `source` ref; "
        "key: key_column is the file name of that ref up to its first dot (img2dataset's key)",
    )
    captioner: str = Field(
        "pairs_dataset", description="what caption_pairs' captioner column says (who captioned)"
    )
    max_file_bytes: int = Field(
        DEFAULT_MAX_FILE_BYTES,
        ge=1,
        description="a cell, parquet footer or page larger than this is not read",
    )
    follow_links: bool = Field(
        False,
        description="read data files that are symbolic links (a Hugging Face cache snapshot "
        "links its files to blobs); off: refused, unread",
    )

    @model_validator(mode="after")
    def _columns_for_the_match(self) -> PairsDatasetParams:
        if self.match == "sha256" and self.image_column is None:
            raise ValueError("match: sha256 needs image_column (the images' bytes)")
        if self.match != "sha256" and self.key_column is None:
            raise ValueError(f"match: {self.match} needs key_column")
        return self


class CaptionerParams(StrictModel):
    backend: Literal["manifest", "transformers", "openai", "pairs_dataset"] = "manifest"
    transformers: TransformersCaptionerParams | None = None
    openai: OpenAICaptionerParams | None = None
    pairs_dataset: PairsDatasetParams | None = None

    def needs(self, block: str) -> list:
        """The chosen backend's: a local model (transformers), an API key (openai, unless its
        server is on this machine)."""
        if self.backend == "transformers" and self.transformers is not None:
            return [ModelNeed(f"{block}.transformers.pretrained", self.transformers.pretrained)]
        if self.backend == "openai" and self.openai is not None:
            base_url = self.openai.base_url
            return [
                KeyNeed(
                    f"{block}.backend = openai ({base_url})",
                    base_url,
                    "add `captioner: {api_key: ...}` to conf/local/credentials.yml",
                    (("captioner", None),),
                )
            ]
        return []

    @model_validator(mode="after")
    def _backend_configured(self) -> CaptionerParams:
        if self.backend != "manifest" and getattr(self, self.backend) is None:
            raise ValueError(f"backend {self.backend} needs a `{self.backend}:` block")
        return self


class SynthesizeParams(StrictModel):
    captioner: CaptionerParams = CaptionerParams()
    split: str = "train"
    fraction: float = Field(0.1, gt=0, le=1, description="share of the split to caption")
    max_images: int | None = Field(None, ge=1, description="cap on images captioned")
    seed: int = 0
    journal_dir: str = Field(
        "data/03_primary/caption_journal",
        description="captions persisted as they arrive; a rerun skips images already done",
    )
    retry_failed: bool = Field(
        False, description="send again the images an earlier run recorded as failed"
    )
    max_failed_fraction: float = Field(
        0.05, ge=0, le=1, description="more failed images than this share fail the run"
    )
    stop_after_first_failures: int = Field(
        8,
        ge=0,
        description="a run whose first N answers all fail, before any caption, stops with the "
        "server's message and records nothing failed (a bad key some servers answer with HTTP "
        "400 looks like N refused images); 0: off",
    )
    embedding_batch_size: int = Field(256, ge=1)
    embedding_shard_size: int = Field(4096, ge=1)

    def needs(self, block: str) -> list:
        return self.captioner.needs(f"{block}.captioner")
