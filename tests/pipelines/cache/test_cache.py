"""The latent cache: incremental, invalidated by a new VAE or resolution, loud when corrupt."""

import pytest
import torch
from diffusers import AutoencoderKL
from kedro.io import DatasetError
from PIL import Image

from vlv_pipeline.datasets.image_source import ImageSourceDataset
from vlv_pipeline.datasets.latent_cache import LatentCacheDataset
from vlv_pipeline.datasets.shard_format import CorruptCacheError
from vlv_pipeline.datasets.shard_store import LatentCache
from vlv_pipeline.imaging.screen_table import screen_images
from vlv_pipeline.params.cache import CacheParams
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.cache.nodes import encode_latents
from vlv_pipeline.pipelines.ingest.nodes import build_manifest

TINY_VAE = dict(
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    block_out_channels=[8, 8],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)


def _write_images(folder, names, seed=0):
    g = torch.Generator().manual_seed(seed)
    for name in names:
        path = folder / "train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(path)


def _manifest(folder):
    source = ImageSourceDataset(kind="folder", path=str(folder)).load()
    params = IngestParams(min_side=8)
    return source, build_manifest(screen_images(source, params), params)


@pytest.fixture
def vae_dir(tmp_path):
    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


# the T2I block the cache node also takes: never read here, as each test names cache.vae
T2I = T2IParams(model="unused: cache.vae is given")


def _params(vae_dir, **kw):
    return CacheParams(vae={"pretrained": str(vae_dir)}, batch_size=2, shard_size=3, **kw)


def test_encodes_everything_once_then_only_new_images(tmp_path, vae_dir):
    images, cache_dir = tmp_path / "images", tmp_path / "cache"
    _write_images(images, [f"{i}.png" for i in range(5)])
    source, manifest = _manifest(images)
    cache = encode_latents(source, manifest, LatentCache(cache_dir), _params(vae_dir), T2I)
    assert len(cache) == 5 and len(cache.shards) == 2  # shards of >= 3, bounded memory
    mean, std = cache.load(manifest["image_id"])
    assert mean.shape == (5, 4, 8, 8) and (std > 0).all()

    # the same latents as encoding directly with the VAE
    vae = AutoencoderKL.from_pretrained(vae_dir)
    first = torch.from_numpy(
        __import__("numpy").asarray(Image.open(images / "train/0.png"), dtype="float32")
    )
    pixels = (first / 127.5 - 1).permute(2, 0, 1)[None]
    row = manifest.index[manifest["source"] == "train/0.png"][0]
    with torch.no_grad():
        torch.testing.assert_close(
            cache.load([manifest.loc[row, "image_id"]])[0], vae.encode(pixels).latent_dist.mean
        )

    _write_images(images, ["5.png", "6.png"], seed=1)
    source, manifest = _manifest(images)
    before = {s["file"] for s in cache.shards}
    cache = encode_latents(source, manifest, LatentCache(cache_dir), _params(vae_dir), T2I)
    assert len(cache) == 7
    new_shards = [s for s in cache.shards if s["file"] not in before]
    assert sum(s["count"] for s in new_shards) == 2  # only the two new images were encoded
    LatentCacheDataset(path=str(cache_dir)).save(cache)


def test_a_new_vae_or_resolution_rebuilds_the_cache(tmp_path, vae_dir):
    images, cache_dir = tmp_path / "images", tmp_path / "cache"
    _write_images(images, ["a.png", "b.png"])
    source, manifest = _manifest(images)
    cache = encode_latents(source, manifest, LatentCache(cache_dir), _params(vae_dir), T2I)
    old_files = {s["file"] for s in cache.shards}
    torch.manual_seed(1)
    AutoencoderKL(**TINY_VAE).save_pretrained(tmp_path / "other_vae")
    rebuilt = encode_latents(
        source, manifest, LatentCache(cache_dir), _params(tmp_path / "other_vae"), T2I
    )
    assert len(rebuilt) == 2 and not old_files & {s["file"] for s in rebuilt.shards}
    assert not any((cache_dir / f).exists() for f in old_files)
    smaller = encode_latents(
        source, manifest, LatentCache(cache_dir), _params(tmp_path / "other_vae", resolution=8), T2I
    )
    assert (
        smaller.fingerprint["resolution"] == 8
        and smaller.load(manifest["image_id"])[0].shape[-1] == 4
    )


def test_corrupt_or_missing_shards_name_the_shard(tmp_path, vae_dir):
    images, cache_dir = tmp_path / "images", tmp_path / "cache"
    _write_images(images, ["a.png", "b.png"])
    source, manifest = _manifest(images)
    cache = encode_latents(source, manifest, LatentCache(cache_dir), _params(vae_dir), T2I)
    with pytest.raises(KeyError, match="not in the latent cache"):
        LatentCache(cache_dir).load(["0" * 64])
    shard = cache_dir / cache.shards[0]["file"]
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(CorruptCacheError, match=shard.name):
        LatentCache(cache_dir).load(manifest["image_id"])
    shard.unlink()
    with pytest.raises(CorruptCacheError, match=f"{shard.name} is missing"):
        LatentCache(cache_dir).verify()
    with pytest.raises(CorruptCacheError, match=f"{shard.name} is missing"):
        LatentCache(cache_dir).load(["0" * 64])  # the shard's ids are in the shard itself
    (cache_dir / "index.json").write_text("{not json")
    with pytest.raises(CorruptCacheError, match="index"):
        LatentCache(cache_dir)


def test_dataset_refuses_a_handle_for_another_place(tmp_path):
    dataset = LatentCacheDataset(path=str(tmp_path / "a"))
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="writes to"):
        dataset.save(LatentCache(tmp_path / "b"))
    with pytest.raises(DatasetError, match="no index"):
        dataset.save(LatentCache(tmp_path / "a"))


def test_cache_preview_lists_fingerprint_and_shards(tmp_path, vae_dir):
    images = tmp_path / "images"
    _write_images(images, [f"{i}.png" for i in range(5)])
    source, manifest = _manifest(images)
    encode_latents(source, manifest, LatentCache(tmp_path / "cache"), _params(vae_dir), T2I)
    preview = LatentCacheDataset(path=str(tmp_path / "cache")).preview()
    items = [row[0] for row in preview["data"]]
    assert "fingerprint.weights_sha256" in items and ["images", "5"] in preview["data"]
    assert sum(i.startswith("shard-") for i in items) == 2  # 5 images: a shard of 4, then 1


def test_shards_are_arrow_files_and_an_older_cache_is_rebuilt(tmp_path, vae_dir):
    import json

    from datasets import Dataset

    images, cache_dir = tmp_path / "images", tmp_path / "cache"
    _write_images(images, [f"{i}.png" for i in range(4)])
    source, manifest = _manifest(images)
    cache = encode_latents(source, manifest, LatentCache(cache_dir), _params(vae_dir), T2I)
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["format"] == "arrow"
    # no per-image ids; each shard's size and checksum (issue 26, item 8)
    assert all(set(s) == {"file", "count", "bytes", "checksum"} for s in index["shards"])
    shard = Dataset.from_file(str(cache_dir / index["shards"][0]["file"]))  # plain `datasets`
    assert shard.column_names == ["image_id", "mean", "std"]
    assert len(shard) == index["shards"][0]["count"]
    # the project's earlier layout (safetensors shards, an index without "format")
    (cache_dir / "shard-0123456789ab.safetensors").write_bytes(b"old")
    (cache_dir / "index.json").write_text(
        json.dumps(
            {
                "fingerprint": cache.fingerprint,
                "shards": [{"file": "shard-0123456789ab.safetensors", "count": 4}],
            }
        )
    )
    old = LatentCache(cache_dir)
    with pytest.raises(CorruptCacheError, match="older version of this project.*pipeline cache"):
        old.rows(manifest["image_id"])
    rebuilt = encode_latents(source, manifest, old, _params(vae_dir), T2I)
    assert len(rebuilt) == 4 and not (cache_dir / "shard-0123456789ab.safetensors").exists()


def test_a_rerun_after_a_killed_multi_process_run_encodes_only_the_rest(tmp_path, vae_dir):
    from vlv_pipeline.datasets.fingerprints import vae_fingerprint

    images, cache_dir = tmp_path / "images", tmp_path / "cache"
    _write_images(images, [f"{i}.png" for i in range(5)])
    source, manifest = _manifest(images)
    # a 2-rank run killed midway: rank 0 had reset the cache, rank 1 had finished one shard
    fingerprint = vae_fingerprint(AutoencoderKL.from_pretrained(vae_dir), None)
    LatentCache(cache_dir).reset(fingerprint)
    finished = manifest["image_id"].tolist()[3:]
    part = LatentCache(cache_dir, part=1)
    part.add(finished, torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8))
    kept = part.shards[0]["file"]
    cache = encode_latents(source, manifest, LatentCache(cache_dir), _params(vae_dir), T2I)
    assert len(cache) == 5 and not cache.part_files()
    assert [s["file"] for s in cache.shards][0] == kept and len(cache.shards) == 2
    assert cache.load(finished)[0].abs().sum() == 0  # kept as written, not encoded again


def test_a_shard_damaged_on_disk_is_refused_and_the_cache_run_rebuilds_it(tmp_path, vae_dir):
    """Issue 26, item 8: bytes changed in the middle of a shard, its size kept."""
    from vlv_pipeline.datasets import shard_store

    images, cache_dir = tmp_path / "images", tmp_path / "cache"
    _write_images(images, [f"{i}.png" for i in range(5)])
    source, manifest = _manifest(images)
    cache = encode_latents(source, manifest, LatentCache(cache_dir), _params(vae_dir), T2I)
    expected = cache.load(manifest["image_id"])[0]
    shard = cache_dir / cache.shards[0]["file"]
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = bytes(256)
    shard.write_bytes(bytes(data))
    shard_store._VERIFIED.clear()  # as a new process would
    with pytest.raises(
        CorruptCacheError,
        match=rf"{shard.name} does not match the checksum.*"
        r"kedro run --pipeline cache",
    ):
        LatentCache(cache_dir).rows(manifest["image_id"])
    rebuilt = encode_latents(source, manifest, LatentCache(cache_dir), _params(vae_dir), T2I)
    assert not shard.exists() and len(rebuilt) == 5
    torch.testing.assert_close(rebuilt.load(manifest["image_id"])[0], expected)


def test_no_shift_is_one_vae_whether_it_says_null_or_zero(vae_dir):
    """SD 3's pipeline needs ``shift_factor`` to be a number: the flow-matching teacher's copy
    of the shipped VAE says 0.0 where the SD-style teacher's says null. Same latents, so the
    same cache; a real shift is another VAE."""
    from vlv_pipeline.datasets.fingerprints import vae_fingerprint

    vae = AutoencoderKL.from_pretrained(vae_dir)
    assert vae.config.shift_factor is None
    plain = vae_fingerprint(vae, None)
    vae.register_to_config(shift_factor=0.0)
    assert vae_fingerprint(vae, None) == plain
    vae.register_to_config(shift_factor=0.1159)
    assert vae_fingerprint(vae, None) != plain


def test_by_default_the_cache_encodes_with_the_t2i_models_own_vae(tmp_path, vae_dir):
    """cache.vae null: ``<t2i.model>/vae`` in float32, the same latents and fingerprint as
    the spec conf used to spell out (so an existing cache stays valid)."""
    import shutil

    t2i = tmp_path / "t2i"
    shutil.copytree(vae_dir, t2i / "vae")
    images = tmp_path / "images"
    _write_images(images, [f"{i}.png" for i in range(3)])
    source, manifest = _manifest(images)
    spelt = CacheParams(vae={"pretrained": str(t2i), "subfolder": "vae", "dtype": "float32"})
    default = CacheParams()
    assert default.vae is None
    assert default.vae_spec(T2IParams(model=str(t2i))) == spelt.vae
    by_default = encode_latents(
        source, manifest, LatentCache(tmp_path / "a"), default, T2IParams(model=str(t2i))
    )
    explicit = encode_latents(source, manifest, LatentCache(tmp_path / "b"), spelt, T2I)
    assert by_default.fingerprint == explicit.fingerprint
    torch.testing.assert_close(
        by_default.load(manifest["image_id"])[0], explicit.load(manifest["image_id"])[0]
    )
