"""Verdicts on hostile files and normalisation of awkward modes."""

from __future__ import annotations

import pytest
from imaging_factory import (
    BLUE,
    GREEN,
    LIMITS,
    RED,
    animated_gif,
    encode,
    exif_rotated_jpeg,
    gray16_png,
    halves,
    noise_png,
    palette_with_transparency,
    patched_ihdr_png,
    rgba_half_transparent,
)
from PIL import Image, ImageFile

from vlv_pipeline.imaging import (
    FolderSource,
    Reason,
    Screener,
    decode_normalised,
    inspect_image,
    normalise,
)


def close(pixel, colour, tol=40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour, strict=True))


def test_every_file_of_the_hostile_folder_gets_its_exact_verdict(hostile):
    screener = Screener(**LIMITS)
    verdicts = {
        s.source: s for s in map(screener.screen, FolderSource(hostile.root).iter_records())
    }
    assert {ref: v.reason for ref, v in verdicts.items()} == hostile.expected
    assert verdicts["z/copy.png"].detail == "same bytes as a/original.png"
    assert "max_pixels" in verdicts["bomb_header.png"].detail  # our header check, undecoded
    assert "DecompressionBomb" in verdicts["bomb.png"].detail  # Pillow's own limit
    kept = [v for v in verdicts.values() if v.kept]
    assert screener.counts["kept"] == len(kept) == 11
    assert screener.counts["unsupported_extension"] == 2


def test_kept_images_normalise_to_rgb_at_the_requested_resolution(hostile):
    for ref, reason in hostile.expected.items():
        if reason is None:
            img = decode_normalised(hostile.data[ref], 24)
            assert (img.mode, img.size) == ("RGB", (24, 24)), ref


def test_kept_image_info_records_original_mode_format_and_displayed_size(hostile):
    screener = Screener(**LIMITS)
    info = {
        s.source: s.info for s in map(screener.screen, FolderSource(hostile.root).iter_records())
    }
    assert (info["deep.png"].mode, info["deep.png"].format) == ("I;16", "PNG")
    assert (info["cmyk.jpg"].mode, info["cmyk.jpg"].format) == ("CMYK", "JPEG")
    assert (info["palette.png"].mode, info["anim.gif"].format) == ("P", "GIF")
    assert (info["rotated.jpg"].width, info["rotated.jpg"].height) == (40, 80)
    assert (info["UPPER.PNG"].width, info["UPPER.PNG"].height) == (48, 40)


def test_bomb_is_rejected_from_its_header_without_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for data in (patched_ihdr_png(30000, 30000), patched_ihdr_png(3000, 3000)):
        verdict = inspect_image(data, **LIMITS)
        assert verdict.reason == Reason.TOO_MANY_PIXELS


def test_truncated_files_are_corrupt_even_if_someone_enabled_load_truncated_images(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    jpeg = encode(Image.new("RGB", (64, 64), RED), "JPEG")
    for data in (noise_png((64, 64))[:3000], jpeg[: len(jpeg) // 2]):
        assert inspect_image(data, **LIMITS).reason == Reason.CORRUPT
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_bad_png_crc_is_corrupt():
    data = bytearray(encode(Image.new("RGB", (32, 32), RED), "PNG"))
    data[-20] ^= 0xFF  # inside IDAT / before IEND: the chunk CRC no longer matches
    assert inspect_image(bytes(data), **LIMITS).reason == Reason.CORRUPT


def test_other_pillow_formats_are_not_images():
    tiff = encode(Image.new("RGB", (32, 32), RED), "TIFF")
    assert inspect_image(tiff, **LIMITS).reason == Reason.NOT_AN_IMAGE


def test_exif_orientation_is_applied():
    img = decode_normalised(exif_rotated_jpeg(), 32)
    assert img.size == (32, 32)
    # displayed 40x80, red on top; the centre square keeps red above blue
    assert close(img.getpixel((16, 3)), RED) and close(img.getpixel((16, 28)), BLUE)
    native = decode_normalised(exif_rotated_jpeg(), None)
    assert native.size == (40, 80)
    assert close(native.getpixel((20, 5)), RED) and close(native.getpixel((20, 75)), BLUE)


def test_transparency_is_composited_on_the_background():
    for data in (palette_with_transparency(), rgba_half_transparent()):
        img = decode_normalised(data, None, background=GREEN)
        assert img.mode == "RGB"
        assert img.getpixel((5, 24)) == GREEN and img.getpixel((40, 24)) == RED
        white = decode_normalised(data, None)
        assert white.getpixel((5, 24)) == (255, 255, 255)


def test_la_and_grey_modes():
    la = Image.new("LA", (32, 32), (0, 0))
    la.paste((200, 255), (16, 0, 32, 32))
    img = normalise(Image.open(__import__("io").BytesIO(encode(la, "PNG"))), None, BLUE)
    assert img.getpixel((4, 4)) == BLUE and img.getpixel((28, 4)) == (200, 200, 200)
    grey = decode_normalised(encode(Image.new("L", (32, 32), 77), "PNG"))
    assert grey.mode == "RGB" and grey.getpixel((3, 3)) == (77, 77, 77)


def test_16_bit_grey_is_scaled_not_clipped():
    img = decode_normalised(gray16_png())
    assert img.getpixel((3, 3)) == (0, 0, 0) and img.getpixel((40, 3)) == (255, 255, 255)
    mid = Image.fromarray(__import__("numpy").full((16, 16), 32896, dtype="uint16"))
    assert decode_normalised(encode(mid, "PNG")).getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95)
    img = decode_normalised(data, 16)
    assert img.mode == "RGB" and close(img.getpixel((8, 8)), RED)


def test_animated_gif_gives_its_first_frame():
    assert close(decode_normalised(animated_gif(), 16).getpixel((8, 8)), RED, tol=10)


def test_resize_scales_the_shorter_side_and_crops_the_centre():
    # 90x30: left third red, middle green, right third blue -> centre square is green
    img = Image.new("RGB", (90, 30), RED)
    img.paste(GREEN, (30, 0, 60, 30))
    img.paste(BLUE, (60, 0, 90, 30))
    out = decode_normalised(encode(img, "PNG"), 12)
    assert out.size == (12, 12)
    assert close(out.getpixel((6, 6)), GREEN, tol=5)
    assert close(out.getpixel((1, 6)), GREEN, tol=60) and close(out.getpixel((10, 6)), GREEN, 60)


def test_large_jpeg_is_downscaled_while_decoding():
    data = encode(halves((800, 600), RED, BLUE), "JPEG", quality=90)
    out = decode_normalised(data, 32)
    assert out.size == (32, 32)
    assert close(out.getpixel((4, 16)), RED) and close(out.getpixel((28, 16)), BLUE)


def test_inspect_never_raises_on_garbage():
    for data in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM" + b"\0" * 60, b"RIFF"):
        assert inspect_image(data, **LIMITS).reason in {Reason.NOT_AN_IMAGE, Reason.CORRUPT}


@pytest.mark.parametrize(
    ("size", "reason"),
    [((15, 40), Reason.TOO_SMALL), ((16, 64), None), ((16, 65), Reason.BAD_ASPECT_RATIO)],
)
def test_policy_limits_are_inclusive(size, reason):
    assert inspect_image(encode(Image.new("RGB", size), "PNG"), **LIMITS).reason == reason
