"""Image verdicts and normalisation.

One place decides whether a file is a usable image (``inspect_image``) and turns a usable
image into the RGB picture every model sees (``normalise``). Ingest uses both to validate;
downstream stages use ``decode_normalised`` (through ``iter_images``) to get pixels back.

Order of checks for one file, cheapest and most dangerous first:

1. ``empty_file`` - zero bytes;
2. ``not_an_image`` - Pillow does not recognise one of ``ALLOWED_FORMATS``;
3. ``too_many_pixels`` - width * height from the header exceeds ``max_pixels`` (or Pillow's
   own decompression-bomb limit): rejected before any pixel is decoded;
4. ``corrupt`` - ``verify()`` (chunk CRCs for PNG) then a full decode with
   ``LOAD_TRUNCATED_IMAGES`` forced off, then orientation and conversion to RGB;
5. ``too_small`` / ``bad_aspect_ratio`` - policy filters on the decoded, oriented size.

``duplicate`` needs state across files and ``watermarked`` the source's metadata (LAION's
``pwatermark``): both are decided by ``vlv_pipeline.imaging.screening``;
the sources decide, before reading a byte, ``unsupported_extension``, ``unreadable`` and what
their ``ReadPolicy`` refuses (``vlv_pipeline.imaging.reading``): ``too_large``, ``symlink``,
``broken_link``, ``not_a_file``, ``outside_source``, ``hidden`` and ``bad_name``.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)

#: File extensions (lower case, with the dot) that folder and webdataset sources read.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
#: Pillow formats accepted; anything else (TIFF, PSD, ICO, ...) is ``not_an_image``.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_COLOUR_KEY_MODES = frozenset({"P", "L", "RGB", "1"})


class Reason(StrEnum):
    """Why a file was rejected (the ``reason`` column of the rejects report)."""

    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT = "corrupt"
    TOO_SMALL = "too_small"
    TOO_MANY_PIXELS = "too_many_pixels"
    DUPLICATE = "duplicate"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    # LAION's pwatermark at or above ingest.watermark_below (decided by screening.py)
    WATERMARKED = "watermarked"
    UNSUPPORTED_EXTENSION = "unsupported_extension"
    UNREADABLE = "unreadable"
    # refused by the source's ReadPolicy before any byte is read (imaging/reading.py)
    TOO_LARGE = "too_large"  # over ingest.max_file_bytes
    SYMLINK = "symlink"  # a link, not followed (ingest.follow_links is off)
    BROKEN_LINK = "broken_link"  # a followed link that loops or leads nowhere
    NOT_A_FILE = "not_a_file"  # a FIFO, socket or device: never opened
    OUTSIDE_SOURCE = "outside_source"  # a parquet path outside its folder
    HIDDEN = "hidden"  # a name starting with "." (a hidden file or folder)
    BAD_NAME = "bad_name"  # a file name that is not UTF-8


class ImageRejected(Exception):
    """A file is not a usable image; carries the reason and a human-readable detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the manifest records about a kept image.

    ``width``/``height`` are the displayed size (after EXIF orientation); ``mode`` is the
    original Pillow mode; ``format`` is Pillow's format name (JPEG, PNG, ...).
    """

    width: int
    height: int
    mode: str
    format: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of ``inspect_image``: ``info`` when kept, ``reason``/``detail`` when not."""

    reason: Reason | None
    detail: str = ""
    info: ImageInfo | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@contextlib.contextmanager
def strict_pillow() -> Iterator[None]:
    """Make truncated files fail and turn Pillow's bomb warning into an error, temporarily.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is process-global; any library may have switched it
    on. It is forced off inside the block and restored afterwards.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _describe_exc(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_image(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Open ``data`` lazily (header only) and enforce the pixel budget.

    Must run inside ``strict_pillow()``. Raises ``ImageRejected`` with ``empty_file``,
    ``not_an_image``, ``too_many_pixels`` or ``corrupt``; no pixel is decoded here.
    """
    if not data:
        raise ImageRejected(Reason.EMPTY_FILE, "zero bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(
            Reason.NOT_AN_IMAGE,
            f"not a {'/'.join(ALLOWED_FORMATS)} image",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(Reason.TOO_MANY_PIXELS, _describe_exc(exc)) from None
    except Exception as exc:  # any parser failure on a recognised header
        raise ImageRejected(Reason.CORRUPT, _describe_exc(exc)) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(Reason.CORRUPT, f"header size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageRejected(
            Reason.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}",
        )
    return img


def _exif_transpose(img: Image.Image) -> None:
    """Apply the EXIF orientation in place; a broken EXIF block is ignored, not fatal."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep the stored orientation
        img.load()


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit grey (I;16*, I) or float (F) to 8-bit L; Pillow's convert clips."""
    arr = np.asarray(img)
    if img.mode == "F":
        scaled = np.clip(arr, 0.0, 1.0) * 255.0
    else:  # 16-bit range; "I" from a 16-bit PNG holds 0..65535
        scaled = np.clip(arr.astype(np.float64), 0.0, 65535.0) / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def to_rgb(img: Image.Image, background: Sequence[int] = WHITE) -> Image.Image:
    """Convert any supported mode to RGB, compositing transparency on ``background``."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _high_bit_depth_to_l(img)
    if img.mode in _ALPHA_MODES or (img.mode in _COLOUR_KEY_MODES and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, tuple(background))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Scale the shorter side to ``resolution`` and centre-crop to a square, in one resample."""
    width, height = img.size
    if (width, height) == (resolution, resolution):
        return img
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return img.resize(
        (resolution, resolution),
        Image.Resampling.LANCZOS,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0 if side >= 3 * resolution else None,
    )


def normalise(
    img: Image.Image,
    resolution: int | None = None,
    background: Sequence[int] = WHITE,
) -> Image.Image:
    """EXIF-orient, convert to RGB and (if ``resolution``) resize + centre-crop.

    Animated images give their first frame. ``resolution=None`` keeps the native size.
    """
    if img.tell() != 0:  # multi-frame formats: always the first frame
        img.seek(0)
    img.load()
    _exif_transpose(img)
    rgb = to_rgb(img, background)
    return rgb if resolution is None else resize_and_crop(rgb, resolution)


def inspect_image(
    data: bytes,
    *,
    min_side: int,
    max_pixels: int,
    max_aspect_ratio: float,
) -> Verdict:
    """Decide whether ``data`` is a usable image; never raises for a bad file."""
    with strict_pillow():
        try:
            header = open_image(data, max_pixels=max_pixels)
            mode, fmt = header.mode, header.format or "unknown"
            try:
                header.verify()  # structural checks (PNG chunk CRCs) without decoding
                img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
                rgb = normalise(img)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageRejected(Reason.TOO_MANY_PIXELS, _describe_exc(exc)) from None
            except Exception as exc:  # truncated data, bad CRC, decoder error
                raise ImageRejected(Reason.CORRUPT, _describe_exc(exc)) from None
        except ImageRejected as rejected:
            return Verdict(rejected.reason, rejected.detail)
    width, height = rgb.size
    if min(width, height) < min_side:
        return Verdict(Reason.TOO_SMALL, f"{width}x{height}: min side < min_side {min_side}")
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        return Verdict(
            Reason.BAD_ASPECT_RATIO,
            f"{width}x{height}: aspect ratio {ratio:.2f} > max_aspect_ratio {max_aspect_ratio}",
        )
    return Verdict(None, "", ImageInfo(width, height, mode, fmt))


def decode_normalised(
    data: bytes,
    resolution: int | None = None,
    background: Sequence[int] = WHITE,
) -> Image.Image:
    """Decode an image that ingest kept and return it normalised (RGB, ``resolution``²).

    JPEGs are DCT-downscaled while decoding (Pillow's ``draft``) when they are much larger
    than ``resolution``. Raises ``ImageRejected`` if the bytes are no longer a good image.
    """
    with strict_pillow():
        img = open_image(data)
        try:
            if resolution is not None and img.format == "JPEG":
                scale = resolution / min(img.size)
                if scale < 0.5:
                    img.draft(None, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
            return normalise(img, resolution, background)
        except Exception as exc:
            raise ImageRejected(Reason.CORRUPT, _describe_exc(exc)) from None
