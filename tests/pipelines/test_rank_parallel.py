"""`cache`, `synthesize`, `evaluate` and `caption` under `accelerate launch` with 2 processes
(gloo on CPU): each rank does its share, and what comes out equals a single-process run.

One launch runs all four stages (rank_worker.py); the same function, run in this process,
is the reference. Each rank starts from what a killed earlier run left: a part of the latent
cache and a journal of captions written by rank 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from rank_worker import run_stages, stage_params
from stage2_factory import trained_captioners
from world_factory import render_and_ingest

from vlv_pipeline.captioners.journal import CaptionJournal
from vlv_pipeline.datasets.fingerprints import vae_fingerprint
from vlv_pipeline.datasets.shard_store import EmbeddingCache, LatentCache
from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.synthesize import nodes as synthesize
from vlv_pipeline.world.data import pil_to_tensor

WORKER = Path(__file__).with_name("rank_worker.py")
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
ROOT = Path(__file__).resolve().parents[2]
LAUNCH = [ACCELERATE, "launch", "--config_file", str(ROOT / "conf/accelerate/cpu_2proc.yaml")]
CRASHED_CAPTIONS = 2  # captions in rank 1's journal before it was killed
CRASHED_LATENTS = 2  # images in rank 1's finished shard


class StubCaptioner(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint on 127.0.0.1 whose caption names the image it got
    (a hash of the image sent); it counts the requests per image."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.daemon_threads = True
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        url = body["messages"][0]["content"][1]["image_url"]["url"]
        image = hashlib.sha256(url.encode()).hexdigest()[:12]
        with self.server.lock:
            self.server.requests[image] += 1
        answer = {"choices": [{"message": {"role": "assistant", "content": f"image {image}"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def server():
    stub = StubCaptioner()
    thread = threading.Thread(target=stub.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield stub
    stub.shutdown()
    stub.server_close()


def _user_images(folder: Path) -> str:
    g = torch.Generator().manual_seed(3)
    folder.mkdir()
    for i in range(5):
        pixels = (torch.rand(20 + i, 24, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    # copies of 1.png (rank 0's block) in rank 1's block: rank 1 keeps 4b.png on its own
    # and finds 4c.png a copy of it; merged, both are duplicates of 1.png
    for copy in ("4b.png", "4c.png"):
        (folder / copy).write_bytes((folder / "1.png").read_bytes())
    return str(folder)


def _crashed_run(config: dict, manifest: pd.DataFrame) -> None:
    """What a 2-rank run killed midway leaves: rank 1's finished shard of latents (index part
    unmerged) and its journal of the first captions."""
    params = stage_params(config)
    out = Path(config["out"])
    vae = load_component("vae", params["cache"].vae).eval()
    LatentCache(out / "latents").reset(vae_fingerprint(vae, None))
    rows = manifest.tail(CRASHED_LATENTS)
    source = config["source"]
    pixels = torch.stack([pil_to_tensor(i) for _, i in source.iter_images(rows)])
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    part = LatentCache(out / "latents", part=1)
    part.add(rows["image_id"].tolist(), posterior.mean, posterior.std)
    setting = params["synthesize"].captioner.model_dump(mode="json")
    journal = synthesize._journal(params["synthesize"], setting)
    selection = synthesize.select_images(manifest, params["synthesize"])
    for image_id in selection["image_id"].head(CRASHED_CAPTIONS):
        CaptionJournal(journal.path, rank=1).append(image_id, f"killed run's caption {image_id}")


@pytest.fixture(scope="module")
def runs(tiny_sd, server, tmp_path_factory):
    """(the two ranks' results, the single-process results, their configs, request counts)."""
    tmp = tmp_path_factory.mktemp("ranks")
    world = WorldParams(image_size=16, counts={"train": 16, "val": 0, "test": 6})
    (tmp / "world").mkdir()
    (tmp / "train").mkdir()
    source, manifest = render_and_ingest(tmp / "world", world)
    manifest.to_parquet(tmp / "manifest.parquet")
    encoder, captioner, baseline, *_ = trained_captioners(
        (source, manifest), tiny_sd, tmp / "train"
    )
    torch.save(
        {"encoder": encoder, "captioner": captioner, "baseline": baseline}, tmp / "models.pt"
    )
    AttributeProbe(image_size=16, width=4, hidden=8).save_pretrained(tmp / "probe")
    shared = {
        "tiny_sd": str(tiny_sd),
        "images": str(tmp / "world/images"),
        "labels": str(tmp / "world/labels.parquet"),
        "manifest": str(tmp / "manifest.parquet"),
        "models": str(tmp / "models.pt"),
        "probe": str(tmp / "probe"),
        "server": server.base_url,
        "user_images": _user_images(tmp / "mine"),
    }
    configs = {name: {**shared, "out": str(tmp / name)} for name in ("ranks", "single")}
    for config in configs.values():
        Path(config["out"]).mkdir()
        _crashed_run({**config, "source": source}, manifest)
    config_path = tmp / "ranks.json"
    config_path.write_text(json.dumps(configs["ranks"]))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    launch = subprocess.run(
        [*LAUNCH, str(WORKER), str(config_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-5000:]
    requests = {"ranks": Counter(server.requests)}
    server.requests.clear()
    single = run_stages(configs["single"])
    requests["single"] = Counter(server.requests)
    ranks = [
        torch.load(Path(configs["ranks"]["out"]) / f"rank{r}.pt", weights_only=False)
        for r in (0, 1)
    ]
    # a training after these nodes would still see both processes (a bare PartialState() on a
    # machine without CUDA once left Accelerate's state non-distributed)
    assert [r["world"] for r in ranks] == [2, 2]
    return ranks, single, configs, requests


@pytest.mark.slow
def test_cache_ranks_encode_their_shares_into_one_index(runs):
    ranks, single, configs, _ = runs
    merged = LatentCache(Path(configs["ranks"]["out"]) / "latents")
    reference = LatentCache(Path(configs["single"]["out"]) / "latents")
    assert not merged.part_files() and not reference.part_files()
    ids = sorted(reference.image_ids())
    assert len(ids) == 22 and sorted(merged.image_ids()) == ids
    assert ranks[0]["latent_ids"] == ranks[1]["latent_ids"] == single["latent_ids"] == ids
    assert len(merged) == 22  # every image once
    for got, want in zip(merged.load(ids), reference.load(ids), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # rank 1's shard from the killed run was kept, and the rest was shared out: 20 images,
    # 10 per rank, in shards of 8 and 2 (batches of 4, shards of at least 6)
    assert [s["count"] for s in merged.shards] == [CRASHED_LATENTS, 8, 2, 8, 2]


@pytest.mark.slow
def test_synthesize_ranks_caption_each_image_once_and_share_the_embedding_cache(runs):
    ranks, single, configs, requests = runs
    pending = 8 - CRASHED_CAPTIONS  # fraction 0.5 of 16, less what the killed run captioned
    assert sum(requests["ranks"].values()) == len(requests["ranks"]) == pending  # once each
    assert requests["ranks"] == requests["single"]
    compared = ["image_id", "caption", "captioner", "prompt"]
    for rank in ranks:
        pd.testing.assert_frame_equal(rank["pairs"][compared], single["pairs"][compared])
    assert single["pairs"]["caption"].str.startswith("killed run's").sum() == CRASHED_CAPTIONS
    journal_dir = Path(configs["ranks"]["out"]) / "journal"
    per_file = {
        p.name.split(".")[-2]: len(p.read_text().splitlines()) for p in journal_dir.iterdir()
    }
    assert per_file == {"rank0": 3, "rank1": CRASHED_CAPTIONS + 3}  # 6 pending: 3 per rank

    merged = EmbeddingCache(Path(configs["ranks"]["out"]) / "embeddings")
    reference = EmbeddingCache(Path(configs["single"]["out"]) / "embeddings")
    ids = sorted(single["pairs"]["image_id"])
    assert (
        ranks[0]["embedding_ids"] == ranks[1]["embedding_ids"] == ids == sorted(merged.image_ids())
    )
    assert len(merged) == 8 and not merged.part_files()
    for got, want in zip(merged.load(ids), reference.load(ids), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_evaluate_ranks_score_their_renders_into_the_same_metrics(runs):
    ranks, single, *_ = runs
    for rank in ranks:
        pd.testing.assert_frame_equal(rank["eval_captions"], single["eval_captions"])
        for judge in ("evaluate", "evaluate_pixels"):
            got, want = rank[judge], single[judge]
            assert got["metrics"]["captions"] == want["metrics"]["captions"]
            assert got["metrics"]["images"] == want["metrics"]["images"] == 5
            assert list(got["metrics"]["reconstruction"]) == list(want["metrics"]["reconstruction"])
            for name, row in want["metrics"]["reconstruction"].items():
                for key, value in row.items():
                    if key in ("frechet_probe", "mse", "psnr"):
                        assert got["metrics"]["reconstruction"][name][key] == pytest.approx(
                            value, rel=1e-4, abs=1e-6
                        ), (judge, name, key)
                    else:  # rates over the images, and what the row is
                        assert got["metrics"]["reconstruction"][name][key] == value, (name, key)
            pd.testing.assert_frame_equal(got["samples"], want["samples"])
            assert (
                list(got["grid"])
                == list(want["grid"])
                == [
                    "original",
                    "from_embeddings",
                    "from_caption",
                ]
            )
            for row, images in want["grid"].items():
                assert images.shape[0] == 4  # 3 images of rank 0, 1 of rank 1
                torch.testing.assert_close(got["grid"][row], images, rtol=0, atol=1e-4)
    probe = single["evaluate"]["metrics"]["reconstruction"]["from_embeddings"]
    assert {"exact_scene", "frechet_probe"} <= set(probe)


@pytest.mark.slow
def test_caption_ranks_caption_their_shares_into_one_table(runs):
    ranks, single, *_ = runs
    table = single["user_captions"]
    # one verdict per row: the copies keep their duplicate verdict and get no caption;
    # the broken file has none either
    assert table["caption"].notna().sum() == 5 and table["rejected"].notna().sum() == 3
    copies = table.set_index("file").loc[["4b.png", "4c.png"]]
    assert (copies["rejected"] == "duplicate").all()
    assert (copies["detail"] == "same bytes as 1.png").all()
    for rank in ranks:  # ingest's screening, split among ranks, gives the same verdicts
        pd.testing.assert_frame_equal(rank["user_captions"], table)
        pd.testing.assert_frame_equal(rank["user_screened"], single["user_screened"])
    assert not any((Path(runs[2]["ranks"]["out"]) / "parts").glob("*"))  # parts removed
