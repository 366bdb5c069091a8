"""Parameters of Table 2, rated captions (``params:rating``, pipeline `evaluate`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.needs import KeyNeed


class JudgeVLMParams(StrictModel):
    """A vision chat model behind an OpenAI-compatible endpoint (paper: Gemini 2.0 Flash); the
    key comes from Kedro credentials (``judge:`` in conf/local/credentials.yml)."""

    base_url: str
    model: str
    max_concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(60, gt=0, description="each socket operation")
    deadline_s: float = Field(120, gt=0, description="one request in all")
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    max_tokens: int = Field(400, ge=1, description="room for the explanation and the score line")
    bad_answer_attempts: int = Field(2, ge=1)
    image_format: Literal["PNG", "JPEG"] = "PNG"
    stop_after_first_failures: int = Field(
        8, ge=0, description="the first N answers all failures: stop (a bad key); 0: off"
    )


class RatingParams(StrictModel):
    """Which captions are rated, by whom, and how the table reads them."""

    images: int = Field(200, ge=1, description="random images of the evaluation set (paper: 200)")
    seed: int = Field(0, description="the sample, the page's caption order and the bootstrap")
    captioners: list[str] | None = Field(
        None, description="eval_captions columns to rate; null: every one, reference included"
    )
    # rubric: the shapes world's exact scorer (the reference caption is the true scene);
    # vlm: a VLM through an OpenAI-compatible endpoint; none: users' ratings only
    judge: Literal["rubric", "vlm", "none"] = "rubric"
    vlm: JudgeVLMParams | None = None
    journal_dir: str = Field(
        "data/07_model_output/rating_journal",
        description="the VLM judge's answers, journaled as they arrive",
    )
    interval: Literal["t", "bootstrap"] = "t"
    bootstrap_samples: int = Field(10000, ge=100)
    page_image_format: Literal["PNG", "JPEG"] = "PNG"
    ratings: list[str] = Field(
        default_factory=list, description="rating files saved from the page, one per rater"
    )
    complete_ratings: bool = Field(
        True, description="refuse a rating file that leaves an image of the page unrated"
    )

    @field_validator("ratings", mode="before")
    @classmethod
    def _one_path_or_many(cls, value):
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value.strip() else []
        return value

    def needs(self, block: str) -> list:
        """The VLM judge's API key (``judge:`` in the credentials), unless its server is on
        this machine."""
        if self.judge != "vlm" or self.vlm is None:
            return []
        base_url = self.vlm.base_url
        return [
            KeyNeed(
                f"{block}.judge = vlm ({base_url})",
                base_url,
                "add `judge: {api_key: ...}` to conf/local/credentials.yml (or run without the "
                "VLM judge: `--params rating.judge=none`)",
                (("judge", None),),
            )
        ]

    @model_validator(mode="after")
    def _judge_configured(self) -> RatingParams:
        if self.judge == "vlm" and self.vlm is None:
            raise ValueError("judge vlm needs a `vlm:` block (base_url, model)")
        return self
