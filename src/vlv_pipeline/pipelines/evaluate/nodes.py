"""Nodes of the `evaluate` pipeline: the evaluation set and its captions.

The set is the test split's first images or a seeded COCO sample (``load_eval_data``,
written down by ``eval_set_ids``); every row of ``evaluate.captioners`` captions it
(``caption_eval_images``), and ``captioner_label`` names each row alike in Tables 1-3. The
reconstructions are in ``renders.py``, their scores in ``scoring.py``, the report in
``report.py``.

Under ``accelerate launch`` each rank captions its own contiguous block of the set
(``distributed.share``); the captions are gathered to every rank in rank order, so every
rank returns the same table as a single process would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import torch

from vlv_pipeline.distributed import each_rank, share
from vlv_pipeline.errors import InputError, ParameterError, UserError
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.params.evaluate import (
    KIND_COLUMNS,
    KIND_LABELS,
    EvalCaptionerRow,
    EvaluateParams,
)
from vlv_pipeline.training.data import ImagePixels
from vlv_pipeline.world.data import to_unit_range

logger = logging.getLogger(__name__)


@dataclass
class EvalData:
    """The evaluation set's ids and reference captions (in memory) and a per-item reader of
    its images (uint8): no stage of evaluate holds the set's pixels. ``files``: each image's
    path in its source (the manifest's ``source``, or the COCO ``file_name``)."""

    image_ids: list[str]
    pixels: ImagePixels | torch.utils.data.Dataset
    references: list[str | None]
    files: list[str] | None = None

    def images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Images ``start:stop`` in [-1, 1]."""
        stop = len(self.image_ids) if stop is None else min(stop, len(self.image_ids))
        return torch.stack([to_unit_range(self.pixels[i]) for i in range(start, stop)])


def load_eval_data(raw_images, image_manifest: pd.DataFrame, params: EvaluateParams) -> EvalData:
    """The evaluation set: ``evaluate.source`` ``split`` takes the first ``images`` images (by
    image_id) of the manifest's ``split``; ``coco`` a seeded sample of ``coco.sample`` images
    of the COCO captions file (``benchmarks/coco.py``), every file checked before any is read."""
    if params.source == "coco":
        return _coco_eval_data(params)
    rows = image_manifest[image_manifest["split"] == params.split].sort_values("image_id")
    if len(rows) < 2:
        raise ParameterError(
            f"evaluate.split {params.split!r} has {len(rows)} images in the manifest; need >= 2"
        )
    rows = rows.head(params.images)
    return EvalData(
        rows["image_id"].astype(str).tolist(),
        ImagePixels.of_manifest(raw_images, rows, params.resolution),
        [None if pd.isna(c) else str(c) for c in rows["caption"]],
        rows["source"].astype(str).tolist(),
    )


def _coco_eval_data(params: EvaluateParams) -> EvalData:
    from vlv_pipeline.benchmarks.coco import (
        CocoPixels,
        coco_policy,
        image_paths,
        read_coco_captions,
        sample_ids,
    )

    coco = read_coco_captions(params.coco.annotations)
    ids = sample_ids(coco, params.coco.sample, params.coco.seed)
    files = [coco.files[i] for i in ids]
    policy = coco_policy(params.coco.max_file_bytes, params.coco.follow_links)
    paths = image_paths(params.coco.images, files, policy)
    logger.info(
        "evaluate: %d of the %d captioned COCO images of %s (seed %d)",
        len(ids),
        len(coco.captions),
        coco.path,
        params.coco.seed,
    )
    return EvalData(
        [str(i) for i in ids],
        CocoPixels(paths, params.resolution, policy),
        [coco.reference(i) for i in ids],
        files,
    )


def eval_set_ids(data: EvalData, previous: dict | None, params: EvaluateParams) -> dict:
    """The evaluation set written down (the versioned ``eval_set_ids``): how it was drawn and
    its image ids and files. The same parameters and source give the same set (the split's
    first images; COCO's seeded sample), so a rerun, and every captioner, sees these images;
    ``previous`` (the latest written) is compared, and a set that differs under the same
    settings (the source changed) is reported."""
    from vlv_pipeline.benchmarks.coco import differs_from

    if params.source == "coco":
        how = {
            "source": "coco",
            "annotations": params.coco.annotations,
            "sample": params.coco.sample,
            "seed": params.coco.seed,
        }
    else:
        how = {"source": "split", "split": params.split, "images": params.images}
    record = {**how, "image_ids": list(data.image_ids), "files": list(data.files or [])}
    why = differs_from(record, previous)
    if why:
        logger.warning("evaluate: %s", why)
    return record


def _chance_order(n: int, seed: int) -> list[int]:
    """A derangement: every image gets another image's caption."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.randperm(n - 1, generator=g)[:1] + 1 + torch.arange(n)) % n).tolist()


def caption_eval_images(
    vlv_captioner,
    baseline_captioner,
    data: EvalData,
    params: EvaluateParams,
    published_captioner=None,
    captioner_credentials: dict | None = None,
    eval_credentials: dict | None = None,
) -> pd.DataFrame:
    """The evaluation images captioned by every row of ``evaluate.captioners``: one column
    each (``vlv``, ``without_stage1``, ``chance``, and the outside rows' names) beside
    ``image_id`` and ``reference``.

    Every row is made ready first (``_ready_rows``: the published captioner loaded, API keys,
    caption files read and matched, local models loaded), so a row that cannot be made stops
    the run before anything is captioned or rendered, or, marked ``optional``, is left out
    with a warning. The project's captioners caption one batch of ``sampling.batch_size``
    images at a time; ``chance`` is another image's reference caption; the ``openai`` and
    ``transformers`` rows are journaled (``benchmarks/captioners.py``). Under ``accelerate
    launch`` each rank captions its own block; every rank gets the table."""
    given = _Given(
        vlv_captioner, baseline_captioner, published_captioner,
        captioner_credentials or {}, eval_credentials or {},
    )  # fmt: skip
    ready = _ready_rows(params, data, given)
    table = pd.DataFrame({"image_id": data.image_ids, "reference": data.references})
    models = {row.column: made for row, made in ready if row.kind in _OWN_MODELS}
    captions = _caption_with_models(models, data, params.sampling.batch_size)
    for row, made in ready:
        if row.kind == "reference":
            continue
        if row.column in captions:
            table[row.column] = captions[row.column]
        elif row.kind == "chance":
            order = _chance_order(len(table), params.chance_seed)
            table["chance"] = [data.references[i] for i in order]
        elif row.kind == "file":
            table[row.column] = made
        else:  # openai, transformers: journaled
            texts = _journaled_row(row, made, data, params)
            if texts is not None:
                table[row.column] = texts
    return table


# the rows whose captioner is one of the project's VLVCaptioner models
_OWN_MODELS = ("trained", "baseline", "published")


def _caption_with_models(models: dict, data: EvalData, batch: int) -> dict[str, list[str]]:
    """``{column: captions}`` of the project's captioners, batch by batch over this rank's
    block of the set, gathered in rank order."""
    if not models:
        return {}
    device = inference_device()
    models = {column: model.to(device) for column, model in models.items()}
    mine = share(len(data.image_ids))

    def caption_mine() -> list[tuple[str, ...]]:
        out: dict[str, list[str]] = {column: [] for column in models}
        for start in range(mine.start, mine.stop, batch):
            pixels = data.images(start, min(start + batch, mine.stop))
            for column, model in models.items():
                out[column] += model.caption(pixels, batch_size=batch)
        return list(zip(*out.values(), strict=True))

    rows = [row for part in each_rank(caption_mine) for row in part]
    return {column: [r[k] for r in rows] for k, column in enumerate(models)}


@dataclass
class _Given:
    """What ``caption_eval_images`` was handed to make its rows of: the project's
    captioners and the credentials (``conf/local/credentials.yml``)."""

    vlv_captioner: object
    baseline_captioner: object
    published_captioner: object
    captioner_credentials: dict
    eval_credentials: dict


def _ready_rows(
    params: EvaluateParams, data: EvalData, given: _Given
) -> list[tuple[EvalCaptionerRow, object]]:
    """``(row, what captions it)`` for every row that can be made: its model, its captioner,
    its captions (a file's), or None (reference, chance). A row that cannot be made stops
    the run with one message listing every such row and what to do, unless it is optional:
    then a warning says why it is left out. References missing (a source without captions)
    leave out the reference and chance rows, which need them."""
    problems: list[str] = []
    ready: list[tuple[EvalCaptionerRow, object]] = []
    have_refs = all(r is not None for r in data.references)
    for index, row in enumerate(params.captioners):
        where = f"evaluate.captioners[{index}] ({row.kind} {row.column!r})"
        try:
            made = _make_row(row, index, data, given, have_refs)
        except UserError as error:
            if row.optional:
                logger.warning("evaluate: %s is left out (optional): %s", where, error)
                continue
            problems.append(f"  - {where}: {error}")
            continue
        if made is _NO_REFERENCES:
            logger.warning(
                "evaluate: %s is left out: the evaluation set has images without a reference "
                "caption",
                where,
            )
            continue
        ready.append((row, made))
    if problems:
        raise InputError(
            f"{len(problems)} of the evaluation's captioners cannot be made (nothing was "
            "captioned or rendered; mark a row `optional: true` to go on without it):\n"
            + "\n".join(problems)
        )
    return ready


_NO_REFERENCES = object()


def _make_row(row: EvalCaptionerRow, index: int, data: EvalData, given: _Given, have_refs: bool):
    """What captions ``row`` (see ``_ready_rows``); a ``UserError`` says why it cannot."""
    from vlv_pipeline.benchmarks import captioners as outside

    if row.kind in ("reference", "chance"):
        return None if have_refs else _NO_REFERENCES
    if row.kind == "trained":
        return given.vlv_captioner
    if row.kind == "baseline":
        return given.baseline_captioner
    if row.kind == "published":
        return _published(given.published_captioner)
    if row.kind == "file":
        files = data.files or data.image_ids
        return outside.match_captions(outside.read_caption_file(row.path), files, row.path)
    key = None
    if row.kind == "openai":
        key = outside.api_key(row, given.captioner_credentials, given.eval_credentials)
        if not key and not outside.loopback(row.openai.base_url):
            raise InputError(
                f"no api key for {row.openai.base_url}: add `eval_captioners: {{{row.column}: "
                "{api_key: ...}}` (or `captioner: {api_key: ...}`) to "
                "conf/local/credentials.yml"
            )
    return outside.make_captioner(row, index, key)


def _published(lazy):
    """The published captioner (``import_published``), loaded now (a ``LazyModel``)."""
    from kedro.io import DatasetError

    from vlv_pipeline.errors import MissingInputError, ModelDirectoryError

    fix = (
        "run `kedro run --pipeline import_published --params import_published.checkpoint=FILE` "
        "with the authors' checkpoint first"
    )
    if lazy is None:
        raise MissingInputError(f"no published captioner was given: {fix}")
    if not callable(lazy):
        return lazy
    try:
        return lazy()
    except (MissingInputError, ModelDirectoryError) as error:  # nothing usable saved there
        where = getattr(lazy, "where", "published_captioner")
        raise MissingInputError(f"{where} has no usable captioner ({error}): {fix}") from error
    except UserError:  # damaged, or made for another setting: its own message says what to do
        raise
    except DatasetError as error:  # no version saved, or no model directory there
        where = getattr(lazy, "where", "published_captioner")
        raise MissingInputError(f"{where} has no usable captioner ({error}): {fix}") from error


def _journaled_row(row: EvalCaptionerRow, captioner, data: EvalData, params) -> list[str] | None:
    """An ``openai`` or ``transformers`` row's captions of every image (journaled), or None
    for an optional row some images got no caption from (a warning says so)."""
    from PIL import Image

    from vlv_pipeline.benchmarks.captioners import journal_of, journaled_captions

    images = "split"
    if params.source == "coco":  # COCO's ids are numbers of one captions file, not content
        from vlv_pipeline.benchmarks.coco import read_coco_captions

        images = f"coco:{read_coco_captions(params.coco.annotations).digest}"
    journal = journal_of(row, params.journal_dir, params.resolution, images)

    def image(i: int):
        return Image.fromarray(data.pixels[i].permute(1, 2, 0).numpy())

    try:
        got, missing = journaled_captions(captioner, journal, data.image_ids, image)
    except UserError as error:
        if not row.optional:
            raise
        logger.warning("evaluate: row %r is left out (optional): %s", row.column, error)
        return None
    if missing:
        message = (
            f"evaluate: the {row.kind} row {row.column!r} has no caption for {len(missing)} of "
            f"{len(data.image_ids)} images (e.g. {missing[0]!r}; the reasons are in "
            f"{journal.path.with_name(journal.path.stem + '.failed.jsonl')}); every row must "
            "caption every image. A rerun asks for them again"
        )
        if row.optional:
            logger.warning("%s; the row is left out (optional)", message)
            return None
        from vlv_pipeline.captioners import CaptionerError

        raise CaptionerError(message)
    return [got[i] for i in data.image_ids]


# eval_captions' fixed columns -> the kind of row that writes them; a kind -> its tables' kind
_KIND_OF_COLUMN = {column: kind for kind, column in KIND_COLUMNS.items()}
_TABLE_KIND = {"trained": "model", "reference": "reference"}


def captioner_label(column: str, params: EvaluateParams | None = None) -> tuple[str, str]:
    """``(label, kind)`` of an ``eval_captions`` column in Tables 1, 2 and 3, so the three
    name each captioner alike: the label of its row of ``evaluate.captioners``
    (``EvalCaptionerRow.title``), or, for a fixed column no row names (e.g. ``reference``,
    which Tables 2 and 3 always rate), its kind's label; a COCO set's own captions, unless
    labelled, are "COCO captions". ``kind``: ``model`` for the trained captioner (first and
    bold in every table), ``reference`` for the reference captions, else ``baseline``.
    ``params`` None: the default rows."""
    row = params.row(column) if params is not None else None
    kind = row.kind if row is not None else _KIND_OF_COLUMN.get(column)
    if row is not None:
        label = row.title
    else:
        label = KIND_LABELS.get(kind, column) if kind is not None else column
    coco = params is not None and params.source == "coco"
    if column == "reference" and coco and (row is None or not row.label):
        label = "COCO captions"
    return label, _TABLE_KIND.get(kind, "baseline")


def caption_columns(captions: pd.DataFrame) -> list[str]:
    """The captioners' columns of ``eval_captions`` (every column but image_id and
    reference), in the table's order."""
    return [c for c in captions.columns if c not in ("image_id", "reference")]
