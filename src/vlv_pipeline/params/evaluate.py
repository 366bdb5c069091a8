"""Parameters of the `evaluate` and `caption` pipelines."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.needs import FileNeed, JudgeNeed, KeyNeed, ModelNeed, SourceNeed
from vlv_pipeline.params.synthesize import OpenAICaptionerParams, TransformersCaptionerParams
from vlv_pipeline.params.t2i import T2IParams


class RenderParams(StrictModel):
    scheduler: str | None = "DDIMScheduler"  # null: the pipeline's own (e.g. SD 3.5's)
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(1.0, ge=0)
    seed: int = 0
    batch_size: int = Field(128, ge=1)


CaptionerKind = Literal[
    "trained", "baseline", "reference", "chance", "published", "openai", "transformers", "file"
]
# the column of eval_captions each kind writes, where the kind fixes it (the column contract
# of the evaluate pipeline: vlv, without_stage1, reference, chance)
KIND_COLUMNS = {
    "trained": "vlv",
    "baseline": "without_stage1",
    "reference": "reference",
    "chance": "chance",
    "published": "published",
}
KIND_LABELS = {
    "trained": "VLV captioner",
    "baseline": '"without stage 1"',
    "reference": "reference captions (upper bound)",
    "chance": "chance (another image's reference caption)",
    "published": "VLV (published captioner)",
}
COCO_DOWNLOAD_HINT = (
    "download COCO 2014 val (http://images.cocodataset.org/annotations/"
    "annotations_trainval2014.zip and http://images.cocodataset.org/zips/val2014.zip) and "
    "unzip both into data/01_raw/coco/, or point evaluate.coco.annotations and "
    "evaluate.coco.images at your copy"
)
FILE_ROW_FIX = (
    "write it with `kedro run --pipeline caption --params caption.source=<the evaluation "
    "images>` (user_captions.json), or point it at your {file: caption} JSON"
)
_COLUMN = re.compile(r"[a-z][a-z0-9_]{0,39}")
_RESERVED = {"image_id", *KIND_COLUMNS.values()}


class EvalCaptionerRow(StrictModel):
    """One captioner of the evaluation (a row of Table 1, a column of ``eval_captions``).

    ``kind``: ``trained`` (stage 2's ``vlv_captioner``, column ``vlv``), ``baseline`` (the
    "without stage 1" captioner, ``without_stage1``), ``reference`` (the evaluation set's own
    captions), ``chance`` (another image's reference caption), ``published`` (the authors'
    captioner from ``import_published``), ``openai`` (any OpenAI-compatible VLM, journaled),
    ``transformers`` (a local image-to-text model, journaled), ``file`` (a ``{file: caption}``
    JSON such as the ``caption`` pipeline's ``user_captions.json``).

    ``optional``: a row that cannot be made (no published import, no API key, no caption
    file, no model) is skipped with a warning; otherwise the run stops before it renders."""

    kind: CaptionerKind
    name: str | None = Field(
        None, description="its column in eval_captions (fixed for the project's own kinds)"
    )
    label: str | None = Field(None, description="its row label in the tables")
    optional: bool = False
    openai: OpenAICaptionerParams | None = None
    transformers: TransformersCaptionerParams | None = None
    path: str | None = Field(None, description="kind file: a {file: caption} JSON file")

    @model_validator(mode="after")
    def _consistent(self) -> EvalCaptionerRow:
        fixed = KIND_COLUMNS.get(self.kind)
        if fixed is not None and self.name not in (None, fixed):
            raise ValueError(f"kind {self.kind} is always the column {fixed!r} (drop `name`)")
        if fixed is None:
            if self.name is None:
                raise ValueError(f"kind {self.kind} needs a `name` (its column, e.g. gpt4o)")
            if not _COLUMN.fullmatch(self.name) or self.name in _RESERVED:
                raise ValueError(
                    f"name {self.name!r}: use lower-case letters, digits and _ (at most 40), "
                    f"not one of {sorted(_RESERVED)}"
                )
        for block in ("openai", "transformers"):
            if (getattr(self, block) is not None) != (self.kind == block):
                verb = "needs" if self.kind == block else "takes no"
                raise ValueError(f"kind {self.kind} {verb} `{block}:` block")
        if (self.path is not None) != (self.kind == "file"):
            verb = "needs" if self.kind == "file" else "takes no"
            raise ValueError(f"kind {self.kind} {verb} `path`")
        return self

    def needs(self, where: str) -> list:
        """What the row needs (``where``: ``evaluate.captioners[i]``), unless it is optional
        (the node leaves it out, with a warning, when it cannot be made): a local model, a
        caption file, an API key (its own entry, else the captioner's, as its node reads
        them). The published captioner is a dataset (the preflight's datasets check)."""
        if self.optional:
            return []
        if self.kind == "transformers" and self.transformers is not None:
            return [ModelNeed(f"{where}.transformers.pretrained", self.transformers.pretrained)]
        if self.kind == "file":
            return [FileNeed(f"{where}.path", self.path, FILE_ROW_FIX, problem="no such file")]
        if self.kind == "openai" and self.openai is not None:
            base_url, name = self.openai.base_url, self.column
            return [
                KeyNeed(
                    f"{where} (openai {name}, {base_url})",
                    base_url,
                    f"add `eval_captioners: {{{name}: {{api_key: ...}}}}` (or `captioner: "
                    "{api_key: ...}`) to conf/local/credentials.yml, or mark the row "
                    "`optional: true`",
                    (("eval_captioners", name), ("captioner", None)),
                )
            ]
        return []

    @property
    def column(self) -> str:
        return self.name or KIND_COLUMNS[self.kind]

    @property
    def title(self) -> str:
        """The row's label in the tables."""
        return self.label or KIND_LABELS.get(self.kind) or self.column


DEFAULT_CAPTIONERS = (
    EvalCaptionerRow(kind="trained"),
    EvalCaptionerRow(kind="baseline"),
    EvalCaptionerRow(kind="reference"),
    EvalCaptionerRow(kind="chance"),
)


class CocoParams(StrictModel):
    """An evaluation set from the files COCO publishes: the captions annotation JSON
    (``captions_val2014.json``) and the image folder (``val2014/``)."""

    annotations: str = "data/01_raw/coco/annotations/captions_val2014.json"
    images: str = "data/01_raw/coco/val2014"
    sample: int = Field(30000, ge=2, description="images drawn (the paper: 30K)")
    seed: int = 0
    # the reading policy of every other source (imaging/reading.py): a file over this many
    # bytes is not read; a symbolic link is not followed unless follow_links, and never to
    # a file outside the folder
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1)
    follow_links: bool = False


class EvaluateParams(StrictModel):
    """Reconstruction from embeddings uses the T2I model of ``params:t2i`` (the embeddings
    live in its text space); reconstruction from captions uses ``render_t2i`` (paper: SD 3.5
    Medium; null: the same ``params:t2i`` model). ``t2i_dtype``: the renders' dtype.

    ``source``: ``split`` (the first ``images`` of the manifest's ``split``, by image_id) or
    ``coco`` (a seeded sample of ``coco.sample`` images of a COCO captions file).
    ``captioners``: the rows (see ``EvalCaptionerRow``), in the tables' order."""

    render_t2i: str | None = Field(None, description="renders the captions (null: t2i.model)")
    t2i_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    source: Literal["split", "coco"] = "split"
    split: str = "test"
    images: int = Field(256, ge=2)
    coco: CocoParams = CocoParams()
    captioners: tuple[EvalCaptionerRow, ...] = DEFAULT_CAPTIONERS
    journal_dir: str = Field(
        "data/07_model_output/eval_caption_journal",
        description="the openai and transformers rows' captions, kept as they arrive",
    )
    resolution: int | None = Field(None, gt=0, description="encoder input side, as in stage 1")
    sampling: RenderParams = RenderParams()
    # probe: the shapes world's attribute probe; fid_clip: the paper's FID and CLIP score
    # (weights needed); pixels: pixel error against the originals (offline, any images)
    judge: Literal["probe", "fid_clip", "pixels"] = "probe"
    probe: str | None = None  # the shapes world's attribute probe
    clip_model: str = "openai/clip-vit-large-patch14"
    grid_images: int = Field(8, ge=1)
    chance_seed: int = 0

    @model_validator(mode="after")
    def _rows_apart(self) -> EvaluateParams:
        columns = [row.column for row in self.captioners]
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise ValueError(f"captioners: two rows write the column {twice[0]!r}")
        if self.source == "coco" and self.resolution is None:
            raise ValueError(
                "source coco needs `resolution` (COCO images differ in size; the paper: 384)"
            )
        return self

    def caption_t2i(self, t2i: T2IParams) -> str:
        """The model that renders the captions: ``render_t2i``, else the T2I model."""
        return self.render_t2i or t2i.model

    def captions_on_t2i(self, t2i: T2IParams) -> bool:
        """Whether the captions render on the T2I model itself (as the stages load it)."""
        return self.caption_t2i(t2i) == t2i.model

    def needs(self, block: str) -> list:
        """The caption renderer (the T2I model is ``params:t2i``'s), the judge's models (its probe, or fid_clip's CLIP, packages and
        weights), the COCO files (``source: coco``), and Table 1's rows (``evaluate`` only: a
        study's slice reads the set, never the rows)."""
        found: list = []
        if self.render_t2i is not None:  # null: params:t2i's model, declared there
            found.append(ModelNeed(f"{block}.render_t2i", self.render_t2i))
        if self.judge == "probe" and self.probe is not None:
            found.append(ModelNeed(f"{block}.probe", self.probe))
        if self.judge == "fid_clip":
            found.append(ModelNeed(f"{block}.clip_model", self.clip_model))
        if self.source == "coco":
            found.append(
                FileNeed(f"{block}.coco.annotations", self.coco.annotations, COCO_DOWNLOAD_HINT)
            )
            found.append(
                FileNeed(f"{block}.coco.images", self.coco.images, COCO_DOWNLOAD_HINT, "dir")
            )
        if "." not in block:
            for i, row in enumerate(self.captioners):
                found += row.needs(f"{block}.captioners[{i}]")
        if self.judge == "fid_clip":
            found.append(JudgeNeed(block))
        return found

    def row(self, column: str) -> EvalCaptionerRow | None:
        return next((r for r in self.captioners if r.column == column), None)


class CaptionParams(StrictModel):
    """`kedro run --pipeline caption --params caption.source=PATH`."""

    source: str | None = Field(
        None, description="a folder of images, one image file (or a parquet/webdataset)"
    )
    # folder: a folder, or a path that is not a folder as one image file; file: one file
    kind: Literal["folder", "file", "parquet", "webdataset"] = "folder"
    resolution: int | None = Field(None, gt=0, description="the captioner's input side")
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    num_beams: int | None = Field(None, ge=1)
    # trained: this project's vlv_captioner (stage 2); published: the authors' captioner
    # (`kedro run --pipeline import_published` first)
    model: Literal["trained", "published"] = "trained"
    # auto: bfloat16 on a GPU that supports it (as the official inference), float32 elsewhere
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # cast the LLM's prefix to bfloat16 before generating, as the official generate() does
    # even in fp32 (the published captions were made so). null: on for model published,
    # else as the captioner records (off for stage 2's)
    bf16_prefix: bool | None = None
    # the official inference's clean-up: cut after the last full stop, drop repeated
    # sentences. Off by default: it hides a model that never learned to stop
    postprocess: bool = False
    # what an image to caption must be. Ingest's safety limits apply (params:ingest: bytes,
    # pixels, links, paths); its curation of training data does not (an environment's
    # ingest.min_side / max_aspect_ratio / watermark_below, e.g. conf/paper's 512 px, 0.5-2
    # and pwatermark < 0.5): these two replace ingest's first two for captioning
    min_side: int = Field(8, gt=0, description="shorter sides below this are too_small")
    max_aspect_ratio: float = Field(
        4.0, ge=1.0, allow_inf_nan=False, description="long side / short side above: rejected"
    )

    def needs(self, block: str) -> list:
        """The user's images: ``source`` set and there."""
        return [SourceNeed(block, self.source, self.kind)]
