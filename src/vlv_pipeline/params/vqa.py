"""Parameters of the paper's Table 3, caption-only VQA (``params:vqa``, pipeline `evaluate`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.needs import FileNeed, KeyNeed

DEFAULT_INSTRUCTION = (
    "Each description below stands in for an image. Answer the question about the image "
    "from its description and common knowledge, in a few words (often one), lower case, with "
    "no explanation."
)

# Where a user downloads Table 3's files (datasets[].name -> page).
VQA_DOWNLOADS = {
    "vqav2": "https://visualqa.org/download.html",
    "okvqa": "https://okvqa.allenai.org/download.html",
}
VQA_TRAIN_CAPTIONS_HINT = (
    "download COCO 2014's annotations (http://images.cocodataset.org/annotations/"
    "annotations_trainval2014.zip holds captions_train2014.json; docs/PAPER.md: Reproduce the paper's "
    "tables) or correct the path in conf (vqa.datasets[].train_captions)"
)


class VQADatasetParams(StrictModel):
    """One benchmark in the official VQA file format (VQAv2, OK-VQA): the validation questions
    and annotations asked about, and, for shots > 0, the training questions and annotations
    the examples are drawn from with COCO's captions of the training images."""

    name: str = Field(description="column key, e.g. vqav2 or okvqa (the paper's numbers' keys)")
    label: str | None = Field(None, description="the table's header; null: the name")
    questions: str
    annotations: str
    train_questions: str | None = None
    train_annotations: str | None = None
    train_captions: str | None = Field(
        None, description="COCO captions JSON of the training images (the examples' captions)"
    )

    @field_validator("name")
    @classmethod
    def _a_key(cls, name: str) -> str:
        if not name or not name.replace("_", "").isalnum() or name != name.lower():
            raise ValueError(f"dataset name {name!r}: lower-case letters, digits and _ only")
        return name


class AnswererParams(StrictModel):
    """A text chat model behind an OpenAI-compatible endpoint (the paper: DeepSeek-V3); the
    key comes from ``answerer: {api_key}`` in conf/local/credentials.yml."""

    base_url: str
    model: str
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0)
    max_answer_words: int = Field(
        6, ge=1, description="a longer answer is unusable: asked again, then recorded failed"
    )
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60, gt=0)
    deadline_s: float = Field(120, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    bad_answer_attempts: int = Field(2, ge=1)
    stop_after_first_failures: int = Field(8, ge=0)


class VQAParams(StrictModel):
    """``source: shapes``: questions generated from each test image's true scene, answered
    from each caption by the world's caption parser (no LLM, no shots). ``source: files``: the
    official VQA files of ``datasets``, answered by ``answerer`` with 0..k examples."""

    source: Literal["shapes", "files"] = "shapes"
    seed: int = 0
    max_questions: int | None = Field(
        None, ge=1, description="per dataset: a seeded sample of the questions asked; null: all"
    )
    shots: list[int] = Field(default_factory=lambda: [0, 4, 32])
    datasets: list[VQADatasetParams] = Field(default_factory=list)
    answerer: AnswererParams | None = None
    instruction: str = DEFAULT_INSTRUCTION
    journal_dir: str = Field(
        "data/03_primary/vqa_journal",
        description="answers persisted as they arrive; a rerun asks only what is not there",
    )
    retry_failed: bool = False
    max_failed_fraction: float = Field(0.02, ge=0, le=1)
    bootstrap_resamples: int = Field(1000, ge=10)

    def needs(self, block: str) -> list:
        """Table 3 from the official files (``source: files``): every dataset's questions and
        annotations, and, for shots > 0, its training questions, annotations and COCO
        captions (the examples); the answering LLM's key, unless its server is on this
        machine."""
        if self.source != "files":
            return []
        keys = ["questions", "annotations"]
        if max(self.shots) > 0:
            keys += ["train_questions", "train_annotations", "train_captions"]
        found: list = []
        for i, dataset in enumerate(self.datasets):
            page = VQA_DOWNLOADS.get(dataset.name, "the dataset's site")
            for key in keys:
                fix = (
                    VQA_TRAIN_CAPTIONS_HINT
                    if key == "train_captions"
                    else f"download it ({page}; docs/PAPER.md: Reproduce the paper's tables) or "
                    f"correct the path in conf ({block}.datasets[{i}].{key})"
                )
                found.append(FileNeed(f"{block}.datasets[{i}].{key}", getattr(dataset, key), fix))
        if self.answerer is not None and self.answerer.base_url:
            base_url = self.answerer.base_url
            found.append(
                KeyNeed(
                    f"{block}.answerer ({base_url})",
                    base_url,
                    "add `answerer: {api_key: ...}` to conf/local/credentials.yml",
                    (("answerer", None),),
                )
            )
        return found

    @field_validator("shots")
    @classmethod
    def _shots(cls, shots: list[int]) -> list[int]:
        if not shots or any(k < 0 for k in shots) or len(set(shots)) != len(shots):
            raise ValueError("shots must be distinct counts >= 0, at least one")
        return sorted(shots)

    @model_validator(mode="after")
    def _files_need_what_they_read(self) -> VQAParams:
        if self.source != "files":
            return self
        if not self.datasets:
            raise ValueError("source files needs at least one entry in datasets")
        if self.answerer is None:
            raise ValueError("source files needs an `answerer:` block (base_url, model)")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must differ: {names}")
        if max(self.shots) > 0:
            for d in self.datasets:
                missing = [
                    key
                    for key in ("train_questions", "train_annotations", "train_captions")
                    if getattr(d, key) is None
                ]
                if missing:
                    raise ValueError(
                        f"datasets[{d.name}]: shots {self.shots} need {', '.join(missing)} "
                        "(the examples come from the training questions)"
                    )
        return self
