"""Models that load without Kedro: a saved VLV captioner captions a PIL image in three lines.

``models/model_card.LOAD_SNIPPET`` is those lines (after PIL's import), exactly as the README
and every captioner's model card show them and as ``tests/pipelines/test_load_without_kedro.py``
runs them::

    from PIL import Image
    from vlv_pipeline import Captioner
    captioner = Captioner.from_pretrained("data/06_models/vlv_captioner")
    print(captioner.caption(Image.open("photo.png")))

``Captioner.from_pretrained`` takes a captioner directory (``save_pretrained``'s: the
``vlv_captioner``, ``baseline_captioner`` or ``published_captioner`` folder of a version), a
versioned folder as the catalog writes it (``data/06_models/vlv_captioner``: its latest
version, as ``kedro run`` would load it), or a Hugging Face Hub repo id (``owner/name``: a
published copy, downloaded through ``huggingface_hub``'s cache).

An image is captioned as ``kedro run --pipeline caption`` captions it (its node
``caption_user_images``, through ``models/captioning.caption_kept_images``), with
``params:caption``'s defaults unless told otherwise:

- screened with the same verdicts (``imaging.checks.inspect_image``: not an image, corrupt,
  too many pixels, too small, bad aspect ratio; a file over ``ingest.max_file_bytes`` is
  too large): a refused image raises ``ImageRefusedError`` naming the verdict;
- decoded to RGB (EXIF orientation, transparency on white, the first frame) and resized and
  centre-cropped to the encoder's input side (``resolution=``, else the side the encoder
  records, else the side its ``provenance.json`` records: conf/paper's 384, which its
  ``caption.resolution`` also sets); the published captioner gets the official inference's crop instead
  (``models/published.official_crop``), and its LLM prefix in bfloat16;
- captioned on the GPU when there is one (bfloat16 weights where supported, ``caption.dtype:
  auto``), with the generation settings the model records (``caption.max_new_tokens`` and
  ``num_beams`` override them), cleaned up only with ``postprocess=True``.

An image straight from ``Image.open(path)`` (not yet loaded) is read back from its file, so
it is decoded byte for byte as the pipeline decodes the file (a large JPEG is downscaled while
decoding, as there). An image already in memory (loaded, drawn, converted) is screened and
resized as it is; the caller's image is never changed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vlv_pipeline.errors import InputError, MissingInputError

__all__ = ["Captioner", "ImageRefusedError", "captioner_directory"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CONFIG = "config.json"


class ImageRefusedError(InputError):
    """An image the caption pipeline would not caption: ``reason`` is its verdict (the
    ``rejected`` column of the pipeline's table), ``detail`` what was found."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = str(reason), detail
        super().__init__(f"image refused ({self.reason}): {detail}")


def _latest_version(folder: Path) -> Path | None:
    """The newest ``<folder>/<version>/<folder name>`` that holds a model (Kedro's order:
    version names sort by time), put back from the backup a killed save left."""
    from vlv_pipeline.files import restore_backup

    for version in sorted((p for p in folder.iterdir() if p.is_dir()), reverse=True):
        if version.name.startswith("."):
            continue
        candidate = version / folder.name
        restore_backup(candidate)
        if (candidate / _CONFIG).is_file():
            return candidate
    return None


def captioner_directory(where: str | os.PathLike) -> Path:
    """The captioner directory ``where`` names: a model directory, the versioned folder the
    catalog writes (its latest version), or a Hub repo id (downloaded, or read from the
    Hugging Face cache)."""
    path = Path(where).expanduser()
    if path.is_dir():
        if (path / _CONFIG).is_file():
            return path
        latest = _latest_version(path)
        if latest is not None:
            return latest
        raise MissingInputError(
            f"{path} holds no captioner: neither a model directory ({_CONFIG}) nor a "
            f"versioned folder with one (<version>/{path.name}/{_CONFIG}); train one with "
            "`kedro run --pipeline stage2` or point at a captioner directory"
        )
    if path.exists():
        raise MissingInputError(f"{path} is a file; give a captioner directory")
    if isinstance(where, str) and _HUB_ID.match(where) and not where.startswith((".", "/")):
        return _from_hub(where)
    raise MissingInputError(
        f"no captioner at {where}: train one with `kedro run --pipeline stage2` (it writes "
        "data/06_models/vlv_captioner), or give a captioner directory or a Hub repo id"
    )


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError as error:  # pragma: no cover - a dependency of transformers
        raise MissingInputError(f"{repo_id}: reading a Hub repo needs huggingface_hub") from error
    try:
        return Path(snapshot_download(repo_id, repo_type="model"))
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as error:
        raise MissingInputError(
            f"could not read the Hub repo {repo_id} ({type(error).__name__}: {error}); check the "
            "id, your network (HF_HUB_OFFLINE) and token, or give a local captioner directory"
        ) from error


class Captioner:
    """A saved VLV captioner that captions PIL images as the ``caption`` pipeline does.

    ``caption`` options are ``params:caption``'s keys (``params/evaluate.CaptionParams``:
    ``resolution``, ``batch_size``, ``max_new_tokens``, ``num_beams``, ``dtype``,
    ``bf16_prefix``, ``postprocess``, ``min_side``, ``max_aspect_ratio``); ``ingest``
    ``params:ingest``'s (``max_pixels``, ``max_file_bytes``). ``model`` is not one of them:
    whether the captioner is the published one is read from the directory's record.
    """

    def __init__(
        self,
        model: Any,
        *,
        device: Any = None,
        ingest: dict | None = None,
        **caption: Any,
    ) -> None:
        import torch

        from vlv_pipeline.models.device import inference_device
        from vlv_pipeline.params.evaluate import CaptionParams
        from vlv_pipeline.params.ingest import IngestParams

        record = getattr(model, "provenance", None) or {}
        self.published = record.get("model") == "published_captioner"
        self.params = CaptionParams(**caption, model="published" if self.published else "trained")
        self.ingest = IngestParams(**(ingest or {}))
        dtype = self.params.dtype
        if dtype == "auto":  # as the pipeline's choose_captioner
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            dtype = "bfloat16" if bf16 else "float32"
        self.model = model.to(getattr(torch, dtype)).to(device or inference_device()).eval()
        self.side = self._input_side()

    @classmethod
    def from_pretrained(
        cls, where: str | os.PathLike, *, device: Any = None, **options: Any
    ) -> Captioner:
        """The captioner ``where`` names (``captioner_directory``), ready to caption."""
        from vlv_pipeline.models.captioner import VLVCaptioner

        directory = captioner_directory(where)
        return cls(VLVCaptioner.from_pretrained(directory), device=device, **options)

    def _input_side(self) -> int:
        from vlv_pipeline.errors import ParameterError

        if self.params.resolution:
            return self.params.resolution
        side = getattr(self.model.encoder.config, "image_size", None)
        if side is None:  # a Florence-2 encoder trained here: the side stage 2 fed it
            side = (getattr(self.model, "provenance", None) or {}).get("resolution")
        if side is None:
            raise ParameterError("give resolution=: the captioner does not say its input size")
        return int(side)

    # ----------------------------------------------------------------- images

    def _screen_bytes(self, data: bytes, where: str) -> None:
        from vlv_pipeline.imaging.checks import inspect_image

        verdict = inspect_image(
            data,
            min_side=self.params.min_side,
            max_pixels=self.ingest.max_pixels,
            max_aspect_ratio=self.params.max_aspect_ratio,
        )
        if verdict.reason is not None:
            raise ImageRefusedError(verdict.reason, f"{where}: {verdict.detail}")

    def _from_file(self, path: Path):
        """The image the pipeline's decode gives for the file at ``path``."""
        from vlv_pipeline.imaging.checks import ImageRejected, decode_normalised

        size = path.stat().st_size
        if size > self.ingest.max_file_bytes:
            raise ImageRefusedError(
                "too_large", f"{path}: {size} bytes > max_file_bytes {self.ingest.max_file_bytes}"
            )
        data = path.read_bytes()
        self._screen_bytes(data, str(path))
        try:
            return decode_normalised(data, None if self.published else self.side)
        except ImageRejected as rejected:
            raise ImageRefusedError(rejected.reason, f"{path}: {rejected.detail}") from None

    def _from_memory(self, image):
        """A copy of an in-memory image, screened and normalised as a decoded file would be."""
        from vlv_pipeline.imaging.checks import normalise, resize_and_crop

        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # the first frame, as the pipeline decodes an animation
        rgb = normalise(image.copy())
        width, height = rgb.size
        p, ingest = self.params, self.ingest
        if width * height > ingest.max_pixels:
            raise ImageRefusedError(
                "too_many_pixels", f"{width}x{height} > max_pixels {ingest.max_pixels}"
            )
        if min(width, height) < p.min_side:
            raise ImageRefusedError(
                "too_small", f"{width}x{height}: min side < min_side {p.min_side}"
            )
        ratio = max(width, height) / min(width, height)
        if ratio > p.max_aspect_ratio:
            raise ImageRefusedError(
                "bad_aspect_ratio",
                f"{width}x{height}: aspect ratio {ratio:.2f} > max_aspect_ratio "
                f"{p.max_aspect_ratio}",
            )
        return rgb if self.published else resize_and_crop(rgb, self.side)

    def pixels(self, image) -> Any:
        """``image`` (a PIL image or a path) as the (3, S, S) tensor in [-1, 1] the pipeline
        feeds the captioner."""
        from PIL import Image, ImageFile

        from vlv_pipeline.models.published import official_crop
        from vlv_pipeline.world.data import pil_to_tensor

        if isinstance(image, str | os.PathLike):
            picture = self._from_file(Path(image))
        elif not isinstance(image, Image.Image):
            raise InputError(f"caption() takes a PIL image or a path, not {type(image).__name__}")
        elif isinstance(image, ImageFile.ImageFile) and image.tile and image.filename:
            picture = self._from_file(Path(image.filename))  # untouched since Image.open
        else:
            picture = self._from_memory(image)
        return pil_to_tensor(official_crop(picture, self.side) if self.published else picture)

    # --------------------------------------------------------------- captions

    def caption(self, image) -> str | list[str]:
        """The caption of ``image`` (a PIL image or a path); a list of them gives a list."""
        import torch

        from vlv_pipeline.models.captioning import official_postprocess

        many = isinstance(image, list | tuple)
        images = list(image) if many else [image]
        p = self.params
        generation: dict[str, Any] = {
            k: v
            for k, v in (("max_new_tokens", p.max_new_tokens), ("num_beams", p.num_beams))
            if v is not None
        }
        bf16_prefix = p.bf16_prefix if p.bf16_prefix is not None else self.published or None
        if bf16_prefix is not None:
            generation["bf16_prefix"] = bf16_prefix
        captions: list[str] = []
        clean = official_postprocess if p.postprocess else str
        for start in range(0, len(images), p.batch_size):
            batch = torch.stack([self.pixels(i) for i in images[start : start + p.batch_size]])
            texts = self.model.caption(batch, batch_size=p.batch_size, **generation)
            captions += [clean(t) for t in texts]
        return captions if many else captions[0]

    def __repr__(self) -> str:
        kind = "published" if self.published else "trained"
        return f"Captioner({kind}, input {self.side} px, {self.params.dtype})"
