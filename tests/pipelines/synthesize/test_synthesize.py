"""Caption-pair synthesis (manifest backend, journal resume) and the stage-2 embedding cache."""

import pandas as pd
import pytest
import torch
from diffusers import AutoencoderKL
from stage2_factory import stage2_params

from vlv_pipeline.captioners.journal import CaptionJournal
from vlv_pipeline.datasets.latent_cache import EmbeddingCache
from vlv_pipeline.imaging.sources import iter_images
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.text_encoder import encode_embeddings
from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder, vae_config_of
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.pipelines.synthesize import nodes
from vlv_pipeline.world.data import pil_to_tensor


def test_selection_is_a_seeded_subset_of_the_split(tiny_world):
    _, manifest = tiny_world
    a = nodes.select_images(manifest, SynthesizeParams(fraction=0.25))
    assert len(a) == 4 and set(a["split"]) == {"train"}
    assert (
        a["image_id"].tolist()
        == nodes.select_images(manifest, SynthesizeParams(fraction=0.25))["image_id"].tolist()
    )
    other = nodes.select_images(manifest, SynthesizeParams(fraction=0.25, seed=1))
    assert other["image_id"].tolist() != a["image_id"].tolist()
    assert len(nodes.select_images(manifest, SynthesizeParams(fraction=1.0, max_images=3))) == 3
    with pytest.raises(ValueError, match="synthesize.split is 'val'"):
        nodes.select_images(manifest, SynthesizeParams(split="val"))


def test_manifest_backend_gives_versionable_pairs(tiny_world):
    source, manifest = tiny_world
    selection = nodes.select_images(manifest, SynthesizeParams(fraction=0.5))
    pairs = nodes.synthesize_captions(source, selection, SynthesizeParams(), {})
    assert list(pairs.columns) == nodes.PAIR_COLUMNS and len(pairs) == 8
    assert pairs["caption"].tolist() == selection["caption"].tolist()
    no_caption = selection.assign(caption=pd.NA)
    with pytest.raises(ValueError, match="no caption in the manifest"):
        nodes.synthesize_captions(source, no_caption, SynthesizeParams(), {})


class FakeCaptioner:
    """A backend that dies after ``die_after`` captions (like a killed run)."""

    def __init__(self, die_after=None):
        self.die_after, self.seen = die_after, []

    def describe(self):
        return {"captioner": "fake", "model": "fake-1", "prompt": "say"}

    def caption_stream(self, items):
        for n, (image_id, image) in enumerate(items):
            if self.die_after is not None and n == self.die_after:
                raise KeyboardInterrupt("killed")
            self.seen.append(image_id)
            yield image_id, f"{image.size[0]} px image"


def _journaled(tmp_path) -> SynthesizeParams:
    """An API captioner (never called: tests patch make_captioner) journaling to tmp_path."""
    return SynthesizeParams(
        fraction=0.5,
        journal_dir=str(tmp_path / "journal"),
        captioner={"backend": "openai", "openai": {"base_url": "http://x", "model": "m"}},
    )


def test_an_interrupted_synthesis_resumes_from_its_journal(tiny_world, tmp_path, monkeypatch):
    source, manifest = tiny_world
    params = _journaled(tmp_path)
    selection = nodes.select_images(manifest, params)
    first = FakeCaptioner(die_after=3)
    monkeypatch.setattr(nodes, "make_captioner", lambda p, c: first)
    with pytest.raises(KeyboardInterrupt):
        nodes.synthesize_captions(source, selection, params, {})
    journal = CaptionJournal(next((tmp_path / "journal").iterdir()))
    assert sorted(journal.read()) == sorted(first.seen) and len(first.seen) == 3
    second = FakeCaptioner()
    monkeypatch.setattr(nodes, "make_captioner", lambda p, c: second)
    pairs = nodes.synthesize_captions(source, selection, params, {})
    assert len(second.seen) == 5 and not set(second.seen) & set(first.seen)  # nothing twice
    assert pairs["image_id"].tolist() == selection["image_id"].tolist()
    assert set(pairs["caption"]) == {"16 px image"} and set(pairs["captioner"]) == {"fake-1"}


def test_a_rerun_skips_the_captions_any_rank_journaled(tiny_world, tmp_path, monkeypatch):
    """Ranks journal to their own files beside the journal; any later run reads them all."""
    source, manifest = tiny_world
    params = _journaled(tmp_path)
    selection = nodes.select_images(manifest, params)
    ids = selection["image_id"].tolist()
    journal = nodes._journal(params, params.captioner.model_dump(mode="json"))
    assert journal.rank is None and journal.writes_to == journal.path  # one process
    CaptionJournal(journal.path, rank=1).append(ids[0], "by rank 1")
    CaptionJournal(journal.path, rank=0).append(ids[1], "by rank 0")
    with CaptionJournal(journal.path, rank=0).writes_to.open("a") as f:
        f.write('{"image_id": "torn')  # rank 0 was killed mid-line
    assert CaptionJournal(journal.path, rank=0).writes_to.name.endswith(".rank0.jsonl")
    fake = FakeCaptioner()
    monkeypatch.setattr(nodes, "make_captioner", lambda p, c: fake)
    pairs = nodes.synthesize_captions(source, selection, params, {}).set_index("image_id")
    assert sorted(fake.seen) == sorted(ids[2:])
    assert (
        pairs.loc[ids[0], "caption"] == "by rank 1" and pairs.loc[ids[1], "caption"] == "by rank 0"
    )
    assert sorted(journal.read()) == sorted(ids)


def test_embedding_cache_holds_the_frozen_encoders_outputs(tiny_world, tiny_sd, tmp_path):
    source, manifest = tiny_world
    selection = nodes.select_images(manifest, SynthesizeParams(fraction=0.5))
    pairs = nodes.synthesize_captions(source, selection, SynthesizeParams(), {})
    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae")
    encoder = SmallVLVEncoder(
        num_queries=4, out_dim=16, width=16, heads=2, image_size=16, vae_config=vae_config_of(vae)
    ).eval()
    params = stage2_params(tiny_sd, tmp_path)
    synth = SynthesizeParams(embedding_batch_size=2, embedding_shard_size=3)
    cache = nodes.cache_pair_embeddings(
        source, manifest, pairs.head(5), encoder, EmbeddingCache(tmp_path / "emb"), params, synth
    )
    assert len(cache) == 5 and len(cache.shards) == 2
    cache = nodes.cache_pair_embeddings(
        source, manifest, pairs, encoder, EmbeddingCache(tmp_path / "emb"), params, synth
    )
    assert len(cache) == 8 and len(cache.shards) == 3  # only the 3 new images were encoded
    ids = pairs["image_id"].tolist()
    embeddings, conditions = EmbeddingCache(tmp_path / "emb").load(ids)

    images = dict(iter_images(source, manifest, None))
    pixels = torch.stack([pil_to_tensor(images[i]) for i in ids])
    text_encoder = load_component(
        "text_encoder", {"pretrained": str(tiny_sd), "subfolder": "text_encoder"}
    )
    with torch.no_grad():
        torch.testing.assert_close(embeddings, encoder(pixels))
        torch.testing.assert_close(conditions, encode_embeddings(text_encoder, encoder(pixels)))
    # another encoder (a retrained stage 1) invalidates the cache
    with torch.no_grad():
        encoder.queries.add_(1.0)
    cache = nodes.cache_pair_embeddings(
        source, manifest, pairs.head(2), encoder, EmbeddingCache(tmp_path / "emb"), params, synth
    )
    assert len(cache) == 2
