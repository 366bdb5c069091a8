"""The evaluation's outside captioners: rows of Table 1 that this project did not train.

- ``openai``: any OpenAI-compatible VLM through the project's client (``captioners/
  openai_chat.py``: no redirect followed, a deadline per request, retries); ``transformers``:
  a local image-to-text model (``captioners/hf.py``). Both are journaled
  (``captioners/journal.py``): each caption is appended, flushed and fsynced as it arrives,
  under ``evaluate.journal_dir``, in a journal named by the row's backend and a hash of what
  makes its captions (model, prompt, endpoint or generation settings, and the side of the
  images it is shown), never by how a run goes (concurrency, timeouts, retries). A killed run
  keeps every caption, and the next run asks only for the images still missing, so no image
  is paid for twice. An image the captioner gave up on is recorded beside the journal
  (``.failed.jsonl``) and asked again by the next run: every row needs every image.
- ``file``: a ``{file: caption}`` JSON the user brings, in the official inference's format
  (the ``caption`` pipeline's ``user_captions.json``, whose ``rejected`` entry is skipped).
  Its keys are matched to the evaluation images' files, by path, else by file name.

What each row shows a captioner is the evaluated image itself (``evaluate.resolution``), the
same pixels every other row is captioned from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from PIL import Image

from vlv_pipeline.benchmarks.json_files import load_json
from vlv_pipeline.captioners import CaptionerError, CaptionFailure
from vlv_pipeline.captioners.journal import CaptionJournal, FailureJournal
from vlv_pipeline.captioners.openai_chat import RUN_ONLY_SETTINGS, OpenAICaptioner
from vlv_pipeline.distributed import rank, share, together, world_size
from vlv_pipeline.errors import InputError
from vlv_pipeline.imaging.reading import DEFAULT_MAX_FILE_BYTES
from vlv_pipeline.params.evaluate import EvalCaptionerRow

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# the rubbish bin of the caption pipeline's JSON: {file: "reason: detail"} of files it refused
REJECTED_KEY = "rejected"
STOP_AFTER_FIRST_FAILURES = 8


def loopback(url: str) -> bool:
    """``url`` is a server on this machine (no key needed)."""
    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


def api_key(row: EvalCaptionerRow, captioner_credentials: dict, eval_credentials: dict):
    """The key of an ``openai`` row: ``eval_captioners.<row name>.api_key`` of the
    credentials (``conf/local/credentials.yml``), else synthesize's (``captioner.api_key``)."""
    own = (eval_credentials or {}).get(row.column)
    if isinstance(own, dict) and own.get("api_key"):
        return own["api_key"]
    return (captioner_credentials or {}).get("api_key") or None


# --------------------------------------------------------------------------- caption files


def read_caption_file(path: str | os.PathLike) -> dict[str, str]:
    """``{file: caption}`` from a JSON file (the ``rejected`` entry left out)."""
    path = Path(path)
    document = load_json(
        path,
        DEFAULT_MAX_FILE_BYTES,
        missing=f"no caption file at {path}: write one with `kedro run --pipeline caption "
        f"--params caption.source=<the evaluation images>` (user_captions.json) or point "
        "the row's `path` at yours",
    )
    if not isinstance(document, dict):
        raise InputError(
            f"{path}: a {type(document).__name__}, not a {{file: caption}} object as the "
            "official inference and the caption pipeline write"
        )
    captions = {}
    for key, value in document.items():
        if key == REJECTED_KEY and isinstance(value, dict):
            continue
        if not isinstance(value, str):
            raise InputError(f"{path}: the caption of {key!r} is {type(value).__name__}, not text")
        captions[str(key)] = value.strip()
    return captions


def match_captions(captions: dict[str, str], files: Sequence[str], path) -> list[str]:
    """The caption of every one of ``files`` (the evaluation images' relative paths): the
    entry of the same path, else the only entry of the same file name. Refuses a file with no
    caption (naming the first few), so every row covers exactly the same images."""
    by_name: dict[str, list[str]] = {}
    for key in captions:
        by_name.setdefault(PurePosixPath(key.replace("\\", "/")).name, []).append(key)
    out, missing, ambiguous = [], [], []
    for name in files:
        if name in captions:
            out.append(captions[name])
            continue
        keys = by_name.get(PurePosixPath(name).name, [])
        if len(keys) == 1:
            out.append(captions[keys[0]])
        else:
            (ambiguous if keys else missing).append(name)
            out.append("")
    if missing or ambiguous:
        parts = []
        if missing:
            parts.append(f"no caption for {len(missing)} of them (e.g. {', '.join(missing[:3])})")
        if ambiguous:
            parts.append(
                f"{len(ambiguous)} file names that several entries share (e.g. {ambiguous[0]}): "
                "use paths relative to the image folder as keys"
            )
        raise InputError(
            f"{path}: the evaluation set has {len(files)} images and the file gives "
            + "; ".join(parts)
        )
    empty = [f for f, c in zip(files, out, strict=True) if not c]
    if empty:
        raise InputError(f"{path}: an empty caption for {len(empty)} images (e.g. {empty[0]})")
    return out


# --------------------------------------------------------------------------- journaled rows


def _setting(row: EvalCaptionerRow, resolution: int | None, images: str) -> dict:
    if row.kind == "openai":
        block = {k: v for k, v in row.openai.model_dump().items() if k not in RUN_ONLY_SETTINGS}
    else:
        block = row.transformers.model_dump()
    return {"backend": row.kind, row.kind: block, "image_side": resolution, "images": images}


def journal_of(
    row: EvalCaptionerRow, journal_dir: str, resolution: int | None, images: str = "split"
) -> CaptionJournal:
    """The journal of an ``openai`` or ``transformers`` row: ``<backend>-<hash>.jsonl`` under
    ``journal_dir``, the hash over what makes its captions (``_setting``) and what the image
    ids mean (``images``: ``split``, whose ids are the images' sha256, or ``coco:<digest of
    the captions file>``, whose ids are only that file's numbers). Under ``accelerate
    launch`` each rank appends to its own file beside it."""
    setting = json.dumps(_setting(row, resolution, images), sort_keys=True)
    key = hashlib.sha256(setting.encode()).hexdigest()[:16]
    return CaptionJournal(
        Path(journal_dir) / f"{row.kind}-{key}.jsonl", rank=rank() if world_size() > 1 else None
    )


def make_captioner(row: EvalCaptionerRow, index: int, key: str | None):
    """The backend object of an ``openai`` or ``transformers`` row (loads a local model)."""
    if row.kind == "transformers":
        from vlv_pipeline.captioners.hf import TransformersCaptioner

        return TransformersCaptioner(**row.transformers.model_dump())
    captioner = OpenAICaptioner(
        api_key=key, stop_after_first_failures=STOP_AFTER_FIRST_FAILURES, **row.openai.model_dump()
    )
    # its messages name this row's settings, not synthesize's
    captioner.label = f"evaluate captioner {row.column!r}"
    captioner.settings = f"evaluate.captioners[{index}].openai"
    captioner.guard_setting = f"the row's `optional` (evaluate.captioners[{index}])"
    return captioner


def journaled_captions(
    captioner,
    journal: CaptionJournal,
    image_ids: Sequence[str],
    image: Callable[[int], Image.Image],
) -> tuple[dict[str, str], list[str]]:
    """Captions of every image (``image(i)`` is image ``i``), journaled as they arrive; an
    image already in the journal is not asked again. Under ``accelerate launch`` each rank
    asks for its own block of the images still missing. Returns ``({image_id: caption},
    ids of the images without one)``, the same on every rank."""
    failures = FailureJournal.beside(journal)
    done = together(journal.read)
    pending = [i for i, image_id in enumerate(image_ids) if image_id not in done]
    block = share(len(pending))
    mine = pending[block.start : block.stop]
    logger.info(
        "evaluate: %d captions already in %s, %d to ask for",
        len(image_ids) - len(pending),
        journal.path,
        len(pending),
    )

    def ask() -> None:
        if not mine:
            return
        items = ((image_ids[i], image(i)) for i in mine)
        try:
            for image_id, result in captioner.caption_stream(items):
                if isinstance(result, CaptionFailure):
                    failures.append(image_id, result.reason, result.attempts)
                    logger.warning("evaluate: no caption for image %r: %s", image_id, result.reason)
                else:
                    journal.append(image_id, result)
        except CaptionerError as error:
            raise CaptionerError(
                f"{error}\nThe captions made so far are kept in {journal.path}; a rerun asks "
                "only for the images still to do."
            ) from None

    together(ask)
    done = journal.read() if pending else done
    captions = {i: done[i]["caption"] for i in image_ids if i in done}
    return captions, [i for i in image_ids if i not in captions]
