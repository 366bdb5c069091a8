"""Caption-pair synthesis (manifest backend, journal resume) and the stage-2 embedding cache."""

import base64
import hashlib
import io
import json
import logging
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from stage2_factory import stage2_params

from vlv_pipeline.captioners import CaptionerError, CaptionFailuresError
from vlv_pipeline.captioners.journal import CaptionJournal, FailureJournal
from vlv_pipeline.datasets.shard_store import EmbeddingCache
from vlv_pipeline.imaging.sources import iter_images
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.text_encoder import encode_embeddings
from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder, vae_config_of
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.params.t2i import T2IParams
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
        source,
        manifest,
        pairs.head(5),
        encoder,
        EmbeddingCache(tmp_path / "emb"),
        params,
        synth,
        T2IParams(model=str(tiny_sd)),
    )
    assert len(cache) == 5 and len(cache.shards) == 2
    cache = nodes.cache_pair_embeddings(
        source,
        manifest,
        pairs,
        encoder,
        EmbeddingCache(tmp_path / "emb"),
        params,
        synth,
        T2IParams(model=str(tiny_sd)),
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
        source,
        manifest,
        pairs.head(2),
        encoder,
        EmbeddingCache(tmp_path / "emb"),
        params,
        synth,
        T2IParams(model=str(tiny_sd)),
    )
    assert len(cache) == 2


# ---------------------------------------------------------------- the API under faults (issue 26)

KEY = "sk-node-SECRET-42"


class ChatStub:
    """A chat-completions server on 127.0.0.1 that knows the world's images by their pixels.

    ``behave[image_id]`` (else ``default``) says how it answers an image: ``ok``, ``slow``
    (0.3 s, then a caption), ``500``, ``json`` (invalid JSON), ``empty`` (an empty caption),
    ``401`` or ``400key`` (a bad key, answered with 400 as some endpoints do). ``sent`` counts the requests per image; ``captioned`` lists the images it sent
    a caption for (the answers a real API would bill)."""

    def __init__(self, images: dict):
        self.ids = {image.convert("RGB").tobytes(): i for i, image in images.items()}
        assert len(self.ids) == len(images)
        self.behave: dict[str, str] = {}
        self.default = "ok"
        self.sent: Counter = Counter()
        self.captioned: list[str] = []
        self.in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
        self.httpd.daemon_threads = True
        self.httpd.stub = self
        self.httpd.handle_error = lambda request, address: None
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def settle(self, seconds: float = 5) -> None:
        """Wait until the server has answered every request it got."""
        deadline = time.monotonic() + seconds
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.in_flight

    def answer(self, body: dict) -> tuple[int, bytes]:
        url = body["messages"][0]["content"][1]["image_url"]["url"]
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        image_id = self.ids[image.convert("RGB").tobytes()]
        with self.lock:
            self.sent[image_id] += 1
        how = self.behave.get(image_id, self.default)
        if how == "500":
            return 500, json.dumps({"error": {"message": "internal error"}}).encode()
        if how == "401":
            return 401, json.dumps({"error": {"message": "invalid api key"}}).encode()
        if how == "400key":
            return 400, json.dumps({"error": {"message": "Incorrect API key provided"}}).encode()
        if how == "json":
            return 200, b'{"choices": [{"message": '
        content = "" if how == "empty" else f"caption of {image_id[:8]}"
        if how == "slow":
            time.sleep(0.3)
        if content:
            with self.lock:
                self.captioned.append(image_id)
        return 200, json.dumps({"choices": [{"message": {"content": content}}]}).encode()


class _StubHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        stub: ChatStub = self.server.stub
        with stub.lock:
            stub.in_flight += 1
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, data = stub.answer(body)
        finally:
            with stub.lock:
                stub.in_flight -= 1
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    def log_message(self, format, *args):
        pass


@pytest.fixture
def chat(tiny_world):
    source, manifest = tiny_world
    stub = ChatStub(dict(iter_images(source, manifest, None)))
    thread = threading.Thread(target=stub.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield stub
    stub.httpd.shutdown()
    stub.httpd.server_close()
    thread.join(5)


def _api(tmp_path, stub: ChatStub, concurrency: int = 2, **synthesize) -> SynthesizeParams:
    openai = {
        "base_url": stub.base_url,
        "model": "stub",
        "max_concurrency": concurrency,
        "max_retries": 1,
        "backoff_s": 0.0,
        "timeout_s": 5,
        "bad_answer_attempts": 1,
    }
    return SynthesizeParams(
        fraction=0.5,
        journal_dir=str(tmp_path / "journal"),
        captioner={"backend": "openai", "openai": openai},
        **synthesize,
    )


def _failures_file(params: SynthesizeParams):
    journal = nodes._journal(params, params.captioner.model_dump(mode="json"))
    return journal, journal.path.with_name(f"{journal.path.stem}.failed.jsonl")


def test_bad_answers_are_recorded_skipped_by_reruns_and_retried_on_request(
    tiny_world, chat, tmp_path, caplog
):
    source, manifest = tiny_world
    params = _api(tmp_path, chat, max_failed_fraction=0.5)
    selection = nodes.select_images(manifest, params)
    ids = selection["image_id"].tolist()
    bad = {ids[1]: "500", ids[3]: "json", ids[5]: "empty"}
    chat.behave = {**bad, ids[6]: "slow"}

    with caplog.at_level(logging.INFO, logger="vlv_pipeline"):
        pairs = nodes.synthesize_captions(source, selection, params, {"api_key": KEY})

    assert pairs["image_id"].tolist() == [i for i in ids if i not in bad]  # the run went on
    assert set(pairs["caption"]) == {f"caption of {i[:8]}" for i in ids if i not in bad}
    journal, failures = _failures_file(params)
    recorded = [json.loads(line) for line in failures.read_text().splitlines()]
    reasons = {r["image_id"]: r["reason"] for r in recorded}
    assert sorted(reasons) == sorted(bad)
    assert "HTTP 500" in reasons[ids[1]] and "internal error" in reasons[ids[1]]
    assert "malformed JSON" in reasons[ids[3]] and "empty caption" in reasons[ids[5]]
    assert chat.sent[ids[1]] == 2  # max_retries 1: two tries, then given up
    assert "3 of 8 images failed" in caplog.text and "retry_failed" in caplog.text
    assert KEY not in failures.read_text() and KEY not in caplog.text

    # a rerun sends nothing: the failed images are skipped, not asked again
    sent = sum(chat.sent.values())
    again = nodes.synthesize_captions(source, selection, params, {"api_key": KEY})
    assert sum(chat.sent.values()) == sent
    pd.testing.assert_frame_equal(again, pairs)

    # the server is fixed: retry_failed sends exactly the failed images again
    chat.behave, chat.sent = {}, Counter()
    retried = params.model_copy(update={"retry_failed": True})
    pairs = nodes.synthesize_captions(source, selection, retried, {"api_key": KEY})
    assert chat.sent == Counter(dict.fromkeys(bad, 1))
    assert pairs["image_id"].tolist() == ids
    assert _failures_file(retried)[1] == failures  # the same journal and failures file


def test_more_failures_than_the_fraction_allows_fail_the_run_with_one_message(
    tiny_world, chat, tmp_path
):
    source, manifest = tiny_world
    params = _api(tmp_path, chat, max_failed_fraction=0.2)  # of 8 images, 1 may fail
    selection = nodes.select_images(manifest, params)
    ids = selection["image_id"].tolist()
    chat.behave = {ids[0]: "500", ids[2]: "json", ids[4]: "empty", ids[6]: "500"}

    with pytest.raises(CaptionFailuresError) as info:
        nodes.synthesize_captions(source, selection, params, {"api_key": KEY})

    assert isinstance(info.value, CaptionerError)  # the project's own error type
    text = str(info.value)
    journal, failures = _failures_file(params)
    assert "max_failed_fraction" in text and "0.2" in text
    assert "retry_failed" in text and str(failures) in text and str(journal.path) in text
    assert len(text.splitlines()) <= 4 and KEY not in text
    # every caption the server sent (and billed) is in the journal
    chat.settle()
    assert sorted(journal.read()) == sorted(chat.captioned) and chat.captioned


def test_no_caption_at_all_fails_the_run_whatever_the_fraction(tiny_world, chat, tmp_path):
    source, manifest = tiny_world
    params = _api(tmp_path, chat, max_failed_fraction=1.0, max_images=3)
    selection = nodes.select_images(manifest, params)
    chat.default = "empty"
    with pytest.raises(CaptionFailuresError, match="3 of 3 selected images.*no caption pairs"):
        nodes.synthesize_captions(source, selection, params, {})


def test_a_fatal_error_journals_the_answers_in_flight_first(tiny_world, chat, tmp_path):
    source, manifest = tiny_world
    params = _api(tmp_path, chat, concurrency=3)
    selection = nodes.select_images(manifest, params)
    ids = selection["image_id"].tolist()
    chat.default, chat.behave = "slow", {ids[3]: "401"}

    with pytest.raises(CaptionerError, match="HTTP 401") as info:
        nodes.synthesize_captions(source, selection, params, {"api_key": KEY})

    chat.settle()
    journal, failures = _failures_file(params)
    assert chat.captioned  # answers were in flight when the 401 came
    assert sorted(journal.read()) == sorted(chat.captioned)  # none of them was thrown away
    assert not failures.exists()  # a bad key is not the image's fault: nothing marked failed
    assert str(journal.path) in str(info.value) and KEY not in str(info.value)


def test_a_bad_key_answered_with_400_stops_the_run_before_images_are_marked_failed(
    tiny_world, chat, tmp_path
):
    """A server that answers a bad key with HTTP 400 makes every image look refused: the run
    stops once its first answers are all failures, with the server's message and where the
    key lives, and records no image as failed (the fraction allowed would not have stopped
    it before every image was tried)."""
    source, manifest = tiny_world
    params = _api(tmp_path, chat, max_failed_fraction=1.0, stop_after_first_failures=3)
    selection = nodes.select_images(manifest, params)
    chat.default = "400key"

    with pytest.raises(CaptionerError) as info:
        nodes.synthesize_captions(source, selection, params, {"api_key": KEY})

    assert not isinstance(info.value, CaptionFailuresError)
    text = str(info.value)
    assert "Incorrect API key provided" in text and "HTTP 400" in text
    assert "conf/local/credentials.yml" in text and "stop_after_first_failures" in text
    assert KEY not in text and len(text.splitlines()) <= 3
    chat.settle()
    assert sum(chat.sent.values()) <= 3 + 2 < len(selection)  # 2: max_concurrency in flight
    journal, failures = _failures_file(params)
    assert not failures.exists()  # nothing marked failed: a rerun sends these images again
    chat.default, chat.sent = "ok", Counter()
    pairs = nodes.synthesize_captions(source, selection, params, {"api_key": KEY})
    assert pairs["image_id"].tolist() == selection["image_id"].tolist()


def test_the_first_failures_guard_is_on_by_default_in_conf():
    import yaml

    root = Path(__file__).resolve().parents[3]
    conf = yaml.safe_load((root / "conf/base/parameters_synthesize.yml").read_text())
    conf = conf["synthesize"]
    assert conf["stop_after_first_failures"] == SynthesizeParams().stop_after_first_failures == 8


def test_failures_live_beside_the_journal_and_apart_from_its_captions(tmp_path):
    journal = CaptionJournal(tmp_path / "openai-abc.jsonl")
    failures = FailureJournal.beside(journal)
    assert failures.path.name == "openai-abc.failed.jsonl"
    on_rank = FailureJournal.beside(CaptionJournal(journal.path, rank=1))
    assert on_rank.writes_to.name == "openai-abc.failed.rank1.jsonl"
    journal.append("a", "a caption")
    failures.append("b", "HTTP 500", attempts=3)
    on_rank.append("c", "empty caption")
    assert sorted(journal.read()) == ["a"]  # the failures are not read as captions
    assert journal.files() == [journal.path]
    records = failures.read()
    assert sorted(records) == ["b", "c"] and records["b"]["attempts"] == 3
    assert records["c"]["reason"] == "empty caption"


def _openai(tmp_path, **settings) -> SynthesizeParams:
    openai = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **settings}
    return SynthesizeParams(
        fraction=0.5,
        journal_dir=str(tmp_path / "journal"),
        captioner={"backend": "openai", "openai": openai},
        max_failed_fraction=0.5,
    )


def _journal_path(params: SynthesizeParams) -> Path:
    return nodes._journal(params, params.captioner.model_dump(mode="json")).path


def _old_journal_path(params: SynthesizeParams) -> Path:
    """The name a journal had before (issue 26, review): the captioner's settings hashed,
    all but ``deadline_s`` and ``bad_answer_attempts`` (the concurrency, timeouts, retries
    included); before those two existed, the same name."""
    setting = params.captioner.model_dump(mode="json")
    setting["openai"] = {
        k: v for k, v in setting["openai"].items() if k not in ("deadline_s", "bad_answer_attempts")
    }
    key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:16]
    return Path(params.journal_dir) / f"openai-{key}.jsonl"


@pytest.mark.parametrize(
    "changed",
    [
        {"max_concurrency": 2},
        {"timeout_s": 5},
        {"max_retries": 0},
        {"backoff_s": 3.5},
        {"deadline_s": 7},
        {"bad_answer_attempts": 4},
    ],
)
def test_settings_that_do_not_change_captions_keep_the_journal(tmp_path, changed):
    """How a run goes (concurrency, timeouts, retries, backoff, deadline, bad answers)
    changes no caption: changing it keeps the journal that holds the captions paid for."""
    assert _journal_path(_openai(tmp_path, **changed)) == _journal_path(_openai(tmp_path))


@pytest.mark.parametrize(
    "changed",
    [
        {"prompt": "Say what you see."},
        {"model": "m2"},
        {"max_tokens": 50},
        {"base_url": "http://127.0.0.1:2/v1"},
    ],
)
def test_settings_that_change_captions_start_a_new_journal(tmp_path, changed):
    assert _journal_path(_openai(tmp_path, **changed)) != _journal_path(_openai(tmp_path))


def _write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_a_journal_named_the_old_way_is_still_read(tiny_world, tmp_path, monkeypatch):
    """A journal (its rank files and failures too) written before the run settings left its
    name is taken over under the new name: nothing in it is captioned again, now or after
    the concurrency changes."""
    source, manifest = tiny_world
    params = _openai(tmp_path, max_concurrency=4)
    selection = nodes.select_images(manifest, params)
    ids = selection["image_id"].tolist()
    old = _old_journal_path(params)
    assert old != _journal_path(params)
    made = "2026-01-01T00:00:00+00:00"
    _write(old, [{"image_id": ids[0], "caption": "paid for", "created_at": made}])
    _write(
        old.with_name(f"{old.stem}.rank1.jsonl"),
        [{"image_id": ids[1], "caption": "paid for on rank 1", "created_at": made}],
    )
    _write(
        old.with_name(f"{old.stem}.failed.jsonl"),
        [{"image_id": ids[2], "reason": "HTTP 400", "attempts": 1, "created_at": made}],
    )
    fake = FakeCaptioner()
    monkeypatch.setattr(nodes, "make_captioner", lambda p, c: fake)
    pairs = nodes.synthesize_captions(source, selection, params, {}).set_index("image_id")
    assert sorted(fake.seen) == sorted(ids[3:])  # the old captions and failure are kept
    assert pairs.loc[ids[0], "caption"] == "paid for"
    assert pairs.loc[ids[1], "caption"] == "paid for on rank 1"
    assert pairs.loc[ids[0], "created_at"] == made and ids[2] not in pairs.index
    assert not any(p.name.startswith(old.stem) for p in old.parent.iterdir())
    # the concurrency changes: still the same journal, nothing sent again
    again = FakeCaptioner()
    monkeypatch.setattr(nodes, "make_captioner", lambda p, c: again)
    nodes.synthesize_captions(source, selection, _openai(tmp_path, max_concurrency=1), {})
    assert again.seen == []


def test_an_old_journal_beside_a_new_one_is_merged_into_it(tiny_world, tmp_path, monkeypatch):
    source, manifest = tiny_world
    params = _openai(tmp_path)
    selection = nodes.select_images(manifest, params)
    ids = selection["image_id"].tolist()
    new, old = _journal_path(params), _old_journal_path(params)
    _write(new, [{"image_id": ids[0], "caption": "new", "created_at": "t"}])
    with new.open("a") as f:
        f.write('{"image_id": "torn')  # a killed run's last line
    _write(old, [{"image_id": ids[1], "caption": "old", "created_at": "t"}])
    fake = FakeCaptioner()
    monkeypatch.setattr(nodes, "make_captioner", lambda p, c: fake)
    pairs = nodes.synthesize_captions(source, selection, params, {}).set_index("image_id")
    assert sorted(fake.seen) == sorted(ids[2:])
    assert pairs.loc[ids[0], "caption"] == "new" and pairs.loc[ids[1], "caption"] == "old"
    assert not old.exists()
