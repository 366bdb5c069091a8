"""Nodes of the `synthesize` pipeline: caption pairs, and the frozen encoder's embedding cache."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from vlv_pipeline.captioners import (
    CaptionerError,
    CaptionFailure,
    CaptionFailuresError,
    truncate,
)
from vlv_pipeline.captioners.credentials import api_key
from vlv_pipeline.captioners.journal import CaptionJournal, FailureJournal, take_over
from vlv_pipeline.captioners.openai_chat import RUN_ONLY_SETTINGS as OPENAI_RUN_ONLY
from vlv_pipeline.datasets.cache_extension import extend_cache
from vlv_pipeline.datasets.fingerprints import embedding_fingerprint
from vlv_pipeline.datasets.shard_store import EmbeddingCache
from vlv_pipeline.distributed import broadcast, rank, share, together, world_size
from vlv_pipeline.errors import InputError, ParameterError
from vlv_pipeline.imaging.sources import iter_images
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.teachers import load_text_side
from vlv_pipeline.params.stage2 import Stage2Params
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.params.t2i import T2IParams

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["image_id", "caption", "captioner", "prompt", "created_at"]

# captioner settings that change how a run goes, not which captions it makes: they are left
# out of the journal's name, so changing them (or their arrival) keeps the captions made
RUN_ONLY_SETTINGS = {"openai": OPENAI_RUN_ONLY}
# what the journal's name left out before (issue 26, review): a journal named that way is
# taken over under today's name, so no caption paid for is paid again
EARLIER_RUN_ONLY_SETTINGS = {"openai": ("deadline_s", "bad_answer_attempts")}
RETRY_FAILED = "`--params synthesize.retry_failed=true`"


def select_images(image_manifest: pd.DataFrame, params: SynthesizeParams) -> pd.DataFrame:
    """A seeded sample (``fraction`` of the split, at most ``max_images``) to caption."""
    rows = image_manifest[image_manifest["split"] == params.split]
    if rows.empty:
        raise ParameterError(
            f"synthesize.split is {params.split!r} but the manifest has no such images "
            f"(splits: {sorted(image_manifest['split'].unique())})"
        )
    n = max(1, math.ceil(params.fraction * len(rows)))
    if params.max_images is not None:
        n = min(n, params.max_images)
    chosen = rows.sample(n=n, random_state=params.seed).sort_values("image_id")
    logger.info("synthesize: captioning %d of %d %s images", n, len(rows), params.split)
    return chosen.reset_index(drop=True)


def make_captioner(params: SynthesizeParams, credentials: dict):
    """The backend object for ``transformers`` or ``openai`` (``manifest`` needs none)."""
    spec = params.captioner
    if spec.backend == "transformers":
        from vlv_pipeline.captioners.hf import TransformersCaptioner

        return TransformersCaptioner(**spec.transformers.model_dump())
    if spec.backend == "openai":
        from vlv_pipeline.captioners.openai_chat import OpenAICaptioner

        return OpenAICaptioner(
            api_key=api_key(credentials, "synthesize", "captioner", spec.openai.base_url),
            stop_after_first_failures=params.stop_after_first_failures,
            **spec.openai.model_dump(),
        )
    raise ValueError(f"no captioner object for backend {spec.backend!r}")


def _setting_key(setting: dict, left_out: dict[str, tuple[str, ...]]) -> str:
    """A hash of the captioner's ``setting``, the run-only settings ``left_out``."""
    setting = {
        name: (
            {k: v for k, v in value.items() if k not in left_out.get(name, ())}
            if isinstance(value, dict)
            else value
        )
        for name, value in setting.items()
    }
    return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:16]


def _journal(params: SynthesizeParams, setting: dict) -> CaptionJournal:
    """One journal per captioner setting (backend, model, prompt, generation): any change
    starts a new journal, so old captions are never reused for a different setting; a change
    of how a run goes (``RUN_ONLY_SETTINGS``: concurrency, timeouts, retries) keeps it. Under
    ``accelerate launch`` each rank appends to its own file beside it."""
    key = _setting_key(setting, RUN_ONLY_SETTINGS)
    return CaptionJournal(
        Path(params.journal_dir) / f"{setting['backend']}-{key}.jsonl",
        rank=rank() if world_size() > 1 else None,
    )


def _take_over_earlier_journal(journal: CaptionJournal, params, setting: dict) -> None:
    """The journal of the same setting named as before (``EARLIER_RUN_ONLY_SETTINGS``, with
    this run's values), its rank files and failures, moved under ``journal``'s name."""
    key = _setting_key(setting, EARLIER_RUN_ONLY_SETTINGS)
    earlier = Path(params.journal_dir) / f"{setting['backend']}-{key}.jsonl"
    if earlier != journal.path and take_over(journal, earlier):
        logger.info(
            "synthesize: the journal %s (named by an earlier version) is now %s; its captions "
            "and failures are kept",
            earlier,
            journal.path,
        )


def synthesize_captions(
    raw_images, selection: pd.DataFrame, params: SynthesizeParams, credentials: dict
) -> pd.DataFrame:
    """Caption pairs (image_id, caption, captioner, prompt, created_at) for the selection.

    Captions are journaled as they arrive; images already in the journal are not captioned
    again. Under ``accelerate launch`` each rank captions its own contiguous block of the
    images still to do (each image once, across ranks) into its own journal file, and every
    rank then reads all of them: every rank returns the whole table.
    """
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if params.captioner.backend == "manifest":
        missing = selection["caption"].isna()
        if missing.any():
            raise ParameterError(
                f"captioner backend `manifest`: {int(missing.sum())} selected images have no "
                f"caption in the manifest (e.g. {selection.loc[missing, 'image_id'].iloc[0]}); "
                "choose the transformers or openai backend"
            )
        pairs = pd.DataFrame(
            {
                "image_id": selection["image_id"],
                "caption": selection["caption"].astype(str),
                "captioner": "manifest",
                "prompt": "",
                "created_at": now,
            }
        )
        return pairs[PAIR_COLUMNS]
    if params.captioner.backend == "pairs_dataset":
        return _pairs_from_dataset(selection, params, now)
    setting = params.captioner.model_dump(mode="json")
    journal = _journal(params, setting)
    failures = FailureJournal.beside(journal)
    together(lambda: _take_over_earlier_journal(journal, params, setting) if rank() == 0 else None)
    # every rank has its captioner and has read the journals before any rank appends to them
    captioner, done, failed = together(
        lambda: (make_captioner(params, credentials), journal.read(), failures.read())
    )
    described = captioner.describe()
    ids = selection["image_id"]
    skipped = set() if params.retry_failed else set(failed) - set(done)
    pending = selection[~ids.isin(done) & ~ids.isin(skipped)]
    mine = pending.iloc[share(len(pending))]
    n_skipped = int(ids.isin(skipped).sum())
    # more failures than this (of the whole selection) fail the run
    allowed = math.floor(params.max_failed_fraction * len(selection) + 1e-9)
    logger.info(
        "synthesize: %d captions already in %s, %d images skipped as failed in an earlier run "
        "(%s sends them again), %d to go",
        int(ids.isin(done).sum()),
        journal.path,
        n_skipped,
        RETRY_FAILED,
        len(pending),
    )

    def caption_mine() -> None:
        # failures of the selection seen from this rank: once over the allowance, the run
        # fails whatever the other images do, so no more are sent
        seen = n_skipped
        stop = False

        def feed():
            for item in iter_images(raw_images, mine, None):
                if stop:
                    return
                yield item

        if not len(mine):
            return
        try:
            for image_id, result in tqdm(
                captioner.caption_stream(feed()), total=len(mine), desc="captions", unit="img"
            ):
                if not isinstance(result, CaptionFailure):
                    journal.append(image_id, result)
                    continue
                failures.append(image_id, result.reason, result.attempts)
                seen += 1
                logger.warning("synthesize: no caption for image %r: %s", image_id, result.reason)
                if seen > allowed and not stop:
                    stop = True
                    logger.error(
                        "synthesize: %d images failed, more than synthesize.max_failed_fraction "
                        "= %g of %d allows (%d): sending no more images (the answers on their "
                        "way are still journaled)",
                        seen,
                        params.max_failed_fraction,
                        len(selection),
                        allowed,
                    )
        except CaptionerError as error:
            raise CaptionerError(
                f"{error}\nThe captions made so far are kept in {journal.path}; a rerun sends "
                "only the images still to do."
            ) from None

    together(caption_mine)
    if len(pending):
        done, failed = journal.read(), failures.read()
    captioned = [i for i in ids if i in done]
    lost = [i for i in ids if i not in done and i in failed]
    if len(lost) > allowed or (lost and not captioned):
        example = lost[0]
        reason = truncate(failed[example]["reason"], 200)
        share_text = f"{len(lost) / len(selection):.1%}"
        verdict = (
            f"more than synthesize.max_failed_fraction = {params.max_failed_fraction:g} "
            f"allows (at most {allowed})"
            if len(lost) > allowed
            else "so there are no caption pairs"
        )
        raise CaptionFailuresError(
            f"synthesize: {len(lost)} of {len(selection)} selected images failed to caption "
            f"({share_text}), {verdict}; the reasons are in {failures.path}"
            f"{' and its .rank<r> files' if world_size() > 1 else ''} "
            f"(e.g. {example!r}: {reason}). The {len(captioned)} captions made are kept in "
            f"{journal.path}. Fix the cause, then rerun with {RETRY_FAILED} to send the "
            "failed images again, or raise synthesize.max_failed_fraction to go on without "
            "them."
        )
    unaccounted = [i for i in ids if i not in done and i not in failed]
    if unaccounted:
        raise CaptionerError(
            f"synthesize: {len(unaccounted)} selected images have neither a caption nor a "
            f"recorded failure (e.g. {unaccounted[0]!r}); rerun `kedro run --pipeline "
            "synthesize` to caption them"
        )
    if lost:
        logger.warning(
            "synthesize: %d of %d images failed (at most %d allowed by "
            "synthesize.max_failed_fraction); the caption pairs go on without them. The reasons "
            "are in %s; later runs skip these images, %s sends them again",
            len(lost),
            len(selection),
            allowed,
            failures.path,
            RETRY_FAILED,
        )
    else:
        logger.info("synthesize: %d of %d images captioned, 0 failed", len(captioned), len(ids))
    records = [done[i] for i in captioned]
    return pd.DataFrame(
        {
            "image_id": [r["image_id"] for r in records],
            "caption": [r["caption"] for r in records],
            "captioner": described.get("model", described["captioner"]),
            "prompt": described.get("prompt", ""),
            "created_at": [r["created_at"] for r in records],
        }
    )[PAIR_COLUMNS]


def _pairs_from_dataset(
    selection: pd.DataFrame, params: SynthesizeParams, now: str
) -> pd.DataFrame:
    """The selected images' captions from a local image-caption dataset (the authors' pairs:
    ``captioners/pairs_dataset.py``). An image the dataset does not have gets no pair (the
    paper captioned 6M of its 40M images), so select generously (``fraction: 1.0``); none
    at all is an error. Rank 0 reads the dataset; every rank returns the same table."""
    from vlv_pipeline.captioners.pairs_dataset import SETTING, PairsDataset

    dataset = PairsDataset(**params.captioner.pairs_dataset.model_dump())
    read = together(lambda: dataset.captions_for(selection) if rank() == 0 else None)
    found, tally = broadcast(read)
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(tally.skipped.items()))
    met = f"{tally.rows} rows read{f', not used: {skipped}' if skipped else ''}"
    captioned = [i for i in selection["image_id"] if i in found]
    if not captioned:
        raise InputError(
            f"{SETTING}: none of the {len(selection)} selected images is in {dataset.path} "
            f"({met}; matched by {dataset.match}). By sha256 the dataset's image bytes must be "
            "the very files ingest read (its id is their sha256); otherwise match by key or "
            f"source ({SETTING}.match, key_column)"
        )
    logger.info(
        "synthesize: %d of %d selected images have a caption in %s (matched by %s; %s); the "
        "other %d get no pair",
        len(captioned),
        len(selection),
        dataset.path,
        dataset.match,
        met,
        len(selection) - len(captioned),
    )
    return pd.DataFrame(
        {
            "image_id": captioned,
            "caption": [found[i] for i in captioned],
            "captioner": dataset.captioner,
            "prompt": "",
            "created_at": now,
        }
    )[PAIR_COLUMNS]


@torch.no_grad()
def cache_pair_embeddings(
    raw_images,
    image_manifest: pd.DataFrame,
    caption_pairs: pd.DataFrame,
    vlv_encoder,
    embedding_cache_previous: EmbeddingCache,
    params: Stage2Params,
    synth: SynthesizeParams,
    t2i: T2IParams,
) -> EmbeddingCache:
    """The frozen encoder's caption embeddings and text-encoder outputs of the paired images.

    Keyed by image_id under a fingerprint of the encoder's weights, so a retrained stage 1
    rebuilds it; images already cached are skipped. When stage 2 trains the encoder the
    cache cannot serve it, and nothing is computed. Under ``accelerate launch`` each rank
    encodes its own contiguous block of the images still to do, on its own device, into its
    own shards, merged into one index at the end (as the `cache` pipeline does).
    """
    cache = embedding_cache_previous
    if "encoder" in params.parts:
        logger.info("stage 2 trains the VLV encoder: the embedding cache is bypassed")
        if cache.fingerprint is None:  # an empty cache, so the catalog has one to save
            together(lambda: cache.reset({"bypassed": True}) if rank() == 0 else None)
            cache = type(cache)(cache.path)
        return cache
    device = inference_device()
    text_encoder = load_text_side(t2i.model, device=device)
    vlv_encoder = vlv_encoder.eval().to(device)
    paired = image_manifest[image_manifest["image_id"].isin(caption_pairs["image_id"])]
    if len(paired) != caption_pairs["image_id"].nunique():
        raise InputError(
            "some caption pairs name images that are not in the manifest; rerun "
            "`kedro run --pipeline synthesize` after `ingest`"
        )

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = vlv_encoder(pixels.to(device))
        return embeddings, text_encoder.condition(embeddings).states

    return extend_cache(
        cache,
        embedding_fingerprint(vlv_encoder, text_encoder.text_encoders(), params.resolution),
        paired,
        raw_images,
        params.resolution,
        encode,
        synth.embedding_batch_size,
        synth.embedding_shard_size,
        "embedding cache",
    )
