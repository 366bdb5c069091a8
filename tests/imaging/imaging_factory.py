"""Builders of tiny images of every awkward kind (imported by the tests in this folder)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)

# Limits the hostile folder is screened with.
LIMITS = {"min_side": 16, "max_pixels": 1_000_000, "max_aspect_ratio": 4.0}


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def halves(size: tuple[int, int], left, right, mode: str = "RGB") -> Image.Image:
    """``left`` colour on the left half, ``right`` on the right half."""
    img = Image.new(mode, size, left)
    img.paste(Image.new(mode, (size[0] - size[0] // 2, size[1]), right), (size[0] // 2, 0))
    return img


def noise_png(size=(64, 64), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(arr), "PNG")


def patched_ihdr_png(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose IHDR claims ``width`` x ``height`` (CRC recomputed).

    Its pixel data is far too short for that size: decoding it would fail as corrupt,
    so a ``too_many_pixels`` verdict proves the header check came first.
    """
    data = bytearray(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    # signature (8) | length (4) | b"IHDR" (4) | width (4) | height (4) | ... | crc
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    """Stored 80x40, red left / blue right, EXIF orientation 6: displayed 40x80, red on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(halves((80, 40), RED, BLUE), "JPEG", quality=95, exif=exif.tobytes())


def palette_with_transparency() -> bytes:
    """48x48 P image: left half palette index 0 (transparent), right half index 1 (red)."""
    img = Image.new("P", (48, 48), 0)
    img.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    img.paste(1, (24, 0, 48, 48))
    return encode(img, "PNG", transparency=0)


def rgba_half_transparent() -> bytes:
    """48x48 RGBA: left half fully transparent, right half opaque red."""
    img = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    img.paste((*RED, 255), (24, 0, 48, 48))
    return encode(img, "PNG")


def gray16_png() -> bytes:
    """48x48 16-bit grey: left half 0, right half 65535 (opens as I;16)."""
    arr = np.zeros((48, 48), dtype=np.uint16)
    arr[:, 24:] = 65535
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    return encode(img, "PNG")


def animated_gif() -> bytes:
    """Two 32x32 frames: red then blue."""
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


# ref -> (bytes, expected reason or None when kept)
def hostile_files() -> dict[str, tuple[bytes, str | None]]:
    original = encode(halves((40, 40), GREEN, BLUE), "PNG")
    good_png = noise_png((48, 40), seed=1)
    return {
        "empty.jpg": (b"", "empty_file"),
        "notes.jpg": (b"this is not a jpeg\n" * 20, "not_an_image"),
        "truncated.png": (noise_png((64, 64), seed=2)[:3000], "corrupt"),
        "tiny.png": (encode(Image.new("RGB", (4, 4), RED), "PNG"), "too_small"),
        "bomb.png": (patched_ihdr_png(30000, 30000), "too_many_pixels"),
        "bomb_header.png": (patched_ihdr_png(3000, 3000), "too_many_pixels"),
        "a/original.png": (original, None),
        "z/copy.png": (original, "duplicate"),
        "wide.png": (encode(Image.new("RGB", (200, 20), RED), "PNG"), "bad_aspect_ratio"),
        "readme.txt": (b"hello", "unsupported_extension"),
        "movie.mp4": (b"\x00\x00\x00\x18ftypmp42", "unsupported_extension"),
        "palette.png": (palette_with_transparency(), None),
        "gray.png": (encode(Image.new("L", (40, 48), 128), "PNG"), None),
        "cmyk.jpg": (encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"), None),
        "deep.png": (gray16_png(), None),
        "rgba.png": (rgba_half_transparent(), None),
        "rotated.jpg": (exif_rotated_jpeg(), None),
        "UPPER.PNG": (good_png, None),
        "nested/deeper/leaf.webp": (encode(Image.new("RGB", (36, 36), BLUE), "WEBP"), None),
        "anim.gif": (animated_gif(), None),
        "bitmap.BMP": (encode(Image.new("RGB", (30, 20), GREEN), "BMP"), None),
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root
