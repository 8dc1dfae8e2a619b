"""Decoding refuses bad files with a counted reason, converts every mode to the right RGB,
and the stored bytes decode (through `datasets`, as the scorer and trainer read them) to the
exact pixels the rejected image was derived from."""

from __future__ import annotations

import io
import struct
import zlib

import datasets
import numpy as np
import pytest
from PIL import Image, ImageFile

from mdpo_data.build.images import DEFAULT_MAX_PIXELS, encode, load_image, stored_bytes
from mdpo_data.sources.records import BadRow


def photo(width: int = 96, height: int = 64) -> Image.Image:
    """A smooth, photo-like RGB image (gradients compress and decode like real photos)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(width: int, height: int, *, complete: bool) -> bytes:
    """An 8-bit RGB PNG of `width` x `height` zero pixels, small on disk.

    complete=False stops the pixel stream after a few rows: decoding it would fail as
    truncated, so getting 'too many pixels' proves the check ran before any decoding.
    """
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte + pixels
    rows = height if complete else 4
    body = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def reason(data: bytes, **kwargs) -> str:
    with pytest.raises(BadRow) as caught:
        load_image(data, **kwargs)
    return caught.value.reason


# ------------------------------------------------------------------ refusals


def test_empty_bytes():
    assert reason(b"") == "image_empty"


@pytest.mark.parametrize(
    "data", [b"not an image at all", bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40]
)
def test_corrupt_bytes(data):
    assert reason(data) == "image_corrupt"


def test_error_names_the_row():
    with pytest.raises(BadRow) as caught:
        load_image(b"garbage", where="silkie row 17")
    assert "silkie row 17" in str(caught.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_truncated_file(fmt):
    data = save(photo(200, 150), fmt)
    assert reason(data[: len(data) // 2]) == "image_truncated"


def test_truncation_is_not_silently_allowed(monkeypatch):
    # Some libraries flip this global on import; truncated images would then decode as gray.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(save(photo(), "PNG"))


def test_bomb_refused_from_the_header_before_decoding():
    side = int((DEFAULT_MAX_PIXELS * 1.2) ** 0.5)
    data = bomb_png(side, side, complete=False)
    assert len(data) < 10_000
    # A decoder would have reported truncation; the header check answered first.
    assert reason(data) == "image_too_many_pixels"


def test_complete_bomb_refused():
    side = int((DEFAULT_MAX_PIXELS * 1.1) ** 0.5)  # valid file of ~44M pixels, ~130 KB
    data = bomb_png(side, side, complete=True)
    assert len(data) < 1_000_000
    assert reason(data) == "image_too_many_pixels"


def test_bomb_above_pil_own_limit_is_counted_too():
    assert reason(bomb_png(30_000, 30_000, complete=False)) == "image_too_many_pixels"
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # untouched


def test_max_pixels_is_a_parameter():
    data = save(photo(100, 100), "PNG")
    assert reason(data, max_pixels=9_999) == "image_too_many_pixels"
    image, _ = load_image(data, max_pixels=10_000)
    assert image.size == (100, 100)


def test_unsupported_formats_are_refused():
    # EPS would run Ghostscript; ICO/PCX/... are not what datasets ship.
    assert reason(save(photo(), "PCX")) == "image_corrupt"


# ------------------------------------------------------------------ modes


def pixel(data: bytes, xy=(0, 0)) -> tuple[int, int, int]:
    image, _ = load_image(data)
    assert image.mode == "RGB"
    return image.getpixel(xy)


def test_rgb_jpeg_and_png_decode_fully():
    source = photo()
    image, fmt = load_image(save(source, "PNG"))
    assert fmt == "PNG" and image.mode == "RGB" and image.info == {}
    assert np.array_equal(np.asarray(image), np.asarray(source))
    image, fmt = load_image(save(source, "JPEG", quality=95))
    assert fmt == "JPEG" and image.size == source.size
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(source, dtype=int)).mean() < 3


def test_rgba_transparent_pixel_becomes_white_and_half_alpha_blends():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue
    rgba.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    data = save(rgba, "PNG")
    assert pixel(data, (0, 0)) == (255, 0, 0)
    assert pixel(data, (1, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in pixel(data, (2, 0)))


def test_la_composites_on_white():
    la = Image.new("LA", (2, 1), (40, 255))
    la.putpixel((1, 0), (40, 0))
    data = save(la, "PNG")
    assert pixel(data, (0, 0)) == (40, 40, 40)
    assert pixel(data, (1, 0)) == (255, 255, 255)


def test_palette_with_and_without_transparency():
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    plain = save(palette_image, "PNG")
    assert pixel(plain, (0, 0)) == (10, 20, 30) and pixel(plain, (1, 0)) == (200, 100, 50)
    transparent = save(palette_image, "PNG", transparency=0)  # index 0 is transparent
    assert pixel(transparent, (0, 0)) == (255, 255, 255)
    assert pixel(transparent, (1, 0)) == (200, 100, 50)
    gif = save(palette_image, "GIF", transparency=0)
    image, fmt = load_image(gif)
    assert fmt == "GIF" and image.getpixel((0, 0)) == (255, 255, 255)


def test_gray_and_bilevel():
    assert pixel(save(Image.new("L", (3, 3), 77), "PNG")) == (77, 77, 77)
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    data = save(bilevel, "PNG")
    assert pixel(data, (0, 0)) == (0, 0, 0) and pixel(data, (1, 0)) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped():
    samples = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    data = save(Image.fromarray(samples), "PNG")  # opens as I;16
    image, _ = load_image(data)
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100,) * 3, (255,) * 3]
    tiff_i = save(Image.fromarray(samples.astype(np.int32)), "TIFF")  # opens as I
    image, _ = load_image(tiff_i)
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]


def test_float_follows_pil_0_255_convention():
    data = save(Image.fromarray(np.array([[12.4, 300.0]], dtype=np.float32), "F"), "TIFF")
    image, _ = load_image(data)
    assert image.getpixel((0, 0)) == (12, 12, 12) and image.getpixel((1, 0)) == (255,) * 3


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    red, green, blue = pixel(save(cmyk, "JPEG", quality=100))
    assert red > 240 and green < 15 and blue < 15


def test_exif_orientation_is_applied():
    source = photo(40, 20)
    source.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    image, fmt = load_image(save(source, "PNG", exif=exif.tobytes()))
    assert fmt == "PNG" and image.size == (20, 40)
    assert image.getpixel((19, 0)) == (255, 0, 0)  # top-left corner went to top-right


# ------------------------------------------------------------------ stored bytes and encode


def decode_like_datasets(data: bytes) -> np.ndarray:
    """How the scorer and trainer will see the stored bytes: the shards' Image feature."""
    return np.asarray(datasets.Image().decode_example({"bytes": data, "path": None}).convert("RGB"))


def test_stored_bytes_keeps_rgb_jpeg_and_png_unchanged():
    for fmt in ("JPEG", "PNG"):
        data = save(photo(), fmt)
        image, decoded_fmt = load_image(data)
        assert stored_bytes(data, image, decoded_fmt) is data


def oriented_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return save(photo(30, 20), "JPEG", exif=exif.tobytes())


def transparent_palette_png() -> bytes:
    image = photo().convert("P")
    data = save(image, "PNG", transparency=image.getpixel((0, 0)))
    assert load_image(data)[0].getpixel((0, 0)) == (255, 255, 255)
    return data


def test_rotated_source_decodes_like_datasets_decodes_it():
    for data in (oriented_jpeg(), oriented_png(), xmp_oriented_png()):
        image, _ = load_image(data)
        assert image.size == (20, 30)
        assert np.array_equal(decode_like_datasets(data), np.asarray(image))


def oriented_png() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(photo(30, 20), "PNG", exif=exif.tobytes())


def xmp_oriented_png() -> bytes:
    from PIL import PngImagePlugin

    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    return save(photo(30, 20), "PNG", pnginfo=info)


@pytest.mark.parametrize(
    "make",
    [
        lambda: save(photo().convert("L"), "JPEG"),
        lambda: save(photo().convert("RGBA"), "PNG"),
        lambda: transparent_palette_png(),
        lambda: save(photo(), "WEBP", quality=90),
        lambda: save(photo(), "BMP"),
        lambda: save(Image.new("CMYK", (16, 8), (0, 200, 30, 10)), "JPEG"),
        oriented_jpeg,
        oriented_png,
        xmp_oriented_png,
    ],
    ids=[
        "gray-jpeg", "rgba-png", "palette-transparency", "webp", "bmp", "cmyk-jpeg",
        "exif-rotated-jpeg", "exif-rotated-png", "xmp-rotated-png",
    ],
)
def test_stored_bytes_reencodes_as_png_that_decodes_to_the_same_pixels(make):
    data = make()
    image, fmt = load_image(data)
    stored = stored_bytes(data, image, fmt)
    assert stored != data and stored.startswith(b"\x89PNG")
    assert np.array_equal(decode_like_datasets(stored), np.asarray(image))


def test_kept_bytes_decode_through_datasets_to_the_loaded_pixels():
    data = save(photo(), "JPEG", quality=90)
    image, fmt = load_image(data)
    assert np.array_equal(decode_like_datasets(stored_bytes(data, image, fmt)), np.asarray(image))


def test_encode_is_deterministic_and_follows_the_source_format():
    image = photo()
    jpeg = encode(image, "JPEG")
    assert jpeg.startswith(b"\xff\xd8") and jpeg == encode(image.copy(), "JPEG")
    for fmt in ("PNG", "WEBP", "GIF"):
        png = encode(image, fmt)
        assert png.startswith(b"\x89PNG") and png == encode(image.copy(), fmt)
    lossless = Image.open(io.BytesIO(encode(image, "PNG")))
    assert np.array_equal(np.asarray(lossless), np.asarray(image))
    reloaded, _ = load_image(jpeg)
    assert np.abs(np.asarray(reloaded, dtype=int) - np.asarray(image, dtype=int)).mean() < 3


def test_encode_writes_no_source_metadata():
    source = photo()
    data = save(source, "PNG", icc_profile=b"not really a profile", exif=Image.Exif().tobytes())
    image, _ = load_image(data)
    assert encode(image, "PNG") == encode(source, "PNG")


def test_encode_refuses_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        encode(Image.new("L", (2, 2)), "PNG")


def test_mpo_phone_jpeg_is_a_jpeg():
    first, second = photo(), photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    data = save(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image, fmt = load_image(data)
    assert fmt == "JPEG"
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(first, dtype=int)).mean() < 3
    assert np.array_equal(decode_like_datasets(stored_bytes(data, image, fmt)), np.asarray(image))


def test_lab_tiff_converts_through_a_color_profile():
    data = save(Image.new("LAB", (2, 2), (128, 200, 128)), "TIFF")  # a magenta-ish red
    red, green, blue = pixel(data)
    assert abs(red - 222) <= 2 and abs(green - 34) <= 2 and abs(blue - 123) <= 2
