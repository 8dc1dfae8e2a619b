"""Image decoding we can trust, and the exact bytes that go into a shard.

Every image a build touches comes from a file someone else wrote, so decoding refuses
instead of guessing: an empty file, a non-image, a truncated file (PIL's
LOAD_TRUNCATED_IMAGES is never turned on) and a decompression bomb (pixel count checked
from the header, before any pixel is decoded) each become a counted `BadRow`.

Decoding matches what `datasets` does when it reads a shard back (EXIF orientation applied)
and what `transformers` processors do with transparency (composited on white), so the
pixels a strategy corrupts are the pixels the scorer and the trainer will see.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mdpo_data.sources.records import BadRow

# 40 MP: above any photo a VLM processor keeps (they resize to ~1 MP) and above most phone
# cameras, while one worker's peak memory stays around 1.5 GB (the noise strategy holds a
# few float32 copies). Raise it with `max_pixels=` for unusual data.
DEFAULT_MAX_PIXELS = 40_000_000

# Raster formats of real datasets. Others PIL knows (EPS runs Ghostscript, PSD, ...) are
# refused: a smaller attack surface, and nothing a preference dataset ships.
# (JPEG includes MPO, the multi-picture JPEG of phone cameras: PIL opens it via JPEG.)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_ORIENTATION = 0x0112  # EXIF tag
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def load_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, where: str = ""
) -> tuple[Image.Image, str]:
    """Decode `data` fully into an RGB image; returns (image, format) e.g. (img, "JPEG").

    Raises `BadRow` with reason image_empty, image_corrupt, image_truncated,
    image_too_many_pixels or image_unsupported_mode; `where` names the row in the detail.
    The returned image carries no metadata (`info` is empty), so nothing from the source
    file (ICC profile, EXIF, text chunks) leaks into re-encoded bytes.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by some imported code: truncated "
            "images would decode with gray filler instead of being refused. Set it back to False."
        )
    at = f"{where}: " if where else ""
    if not data:
        raise BadRow("image_empty", f"{at}0 bytes")
    _check_container_length(data, at)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as err:  # PIL's own (higher) limit, hit in open()
        raise BadRow("image_too_many_pixels", f"{at}{err}") from None
    except UnidentifiedImageError:
        raise BadRow(
            "image_corrupt", f"{at}not a {'/'.join(ALLOWED_FORMATS)} image ({len(data)} bytes)"
        ) from None
    except Exception as err:  # PIL raises SyntaxError, OSError, struct.error, ... on bad headers
        raise _decode_error(err, at) from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadRow(
            "image_too_many_pixels",
            f"{at}{width}x{height} = {width * height:,} pixels is over max_pixels={max_pixels:,}",
        )
    fmt = "JPEG" if image.format == "MPO" else image.format  # MPO: a JPEG with extra frames
    try:
        image.load()
        image = _apply_orientation(image)
        image = to_rgb(image)
    except BadRow as err:
        raise BadRow(err.reason, f"{at}{err.detail}") from None
    except MemoryError:
        raise
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, ...
        raise _decode_error(err, at) from None
    image.info = {}
    return image, fmt


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with the same colors: transparency composited on white, 16-bit scaled to 8-bit.

    "I"/"I;16" are taken as 16-bit samples (what 16-bit PNG and TIFF decode to) and scaled
    by 255/65535; "F" follows PIL's convention of 0-255 floats (clipped). ICC profiles are
    not applied, as neither `datasets` nor the processors apply them.
    """
    mode = image.mode
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if mode == "RGB" and not has_alpha:
        return image
    if mode in _SIXTEEN_BIT:
        samples = np.asarray(image).astype(np.float32)
        gray = np.rint(np.clip(samples, 0, 65535) * (255 / 65535)).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as err:  # a mode PIL cannot convert (LAB, YCbCr and CMYK it can)
        raise BadRow("image_unsupported_mode", f"mode {mode}: {err}") from None


def stored_bytes(data: bytes, image: Image.Image, fmt: str) -> bytes:
    """The bytes a shard stores for the CHOSEN image `image` decoded from `data`.

    The original bytes when any reader decodes them to `image` without interpretation: a
    single-frame 8-bit JPEG or PNG in RGB mode, without transparency and without an EXIF/XMP
    rotation. Anything else is re-encoded as PNG (lossless, 8-bit, one frame), so every stored
    image decodes, as is, to the RGB pixels the rejected image was derived from (`datasets`
    gives an RGB image for every row): a 16-bit PNG (PIL opens 48-bit RGB as "RGB"), an APNG
    or a multi-picture JPEG (MPO) is stored as its first frame, never as the original file.
    """
    if fmt in ("JPEG", "PNG"):
        with Image.open(io.BytesIO(data)) as header:  # header only: no pixels decoded
            faithful = (
                header.mode == "RGB"
                and header.size == image.size
                and "transparency" not in header.info
                and getattr(header, "n_frames", 1) == 1
                and (fmt != "PNG" or _png_bit_depth(data) == 8)
                and (not _may_carry_orientation(data, fmt) or _orientation(header) == 1)
            )
        if faithful:
            return data
    return encode(image, "PNG")


def encode(image: Image.Image, fmt: str) -> bytes:
    """Deterministic bytes for a REJECTED image: JPEG q95 if the source was JPEG, else PNG.

    Fixed options (baseline JPEG, 4:2:0 chroma, no optimize pass; PNG zlib level 1) and no
    metadata, so the same image always gives the same bytes with the same Pillow build.
    """
    if image.mode != "RGB":
        raise ValueError(f"encode expects an RGB image, got mode {image.mode}")
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=95, subsampling=2, optimize=False, progressive=False)
    else:
        image.save(buffer, "PNG", compress_level=1, optimize=False, icc_profile=None)
    return buffer.getvalue()


def _png_bit_depth(data: bytes) -> int:
    """Bits per sample from a PNG's IHDR (always the first chunk, at a fixed offset)."""
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else 0


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation (1 = as stored), or None when the EXIF block cannot be read."""
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # malformed EXIF: PIL raises assorted errors
        return None


def _may_carry_orientation(data: bytes, fmt: str) -> bool:
    """False when a PNG has no EXIF/XMP anywhere (PIL's PNG getexif decodes the whole image
    to find a trailing eXIf chunk: 6 ms per image, for a tag almost never there)."""
    if fmt != "PNG":
        return True  # JPEG's EXIF is parsed with the header: the exact check is cheap
    markers = (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp")
    return any(marker in data for marker in markers)


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as EXIF says, like `datasets` does when it decodes a shard's image."""
    if _orientation(image) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _check_container_length(data: bytes, at: str) -> None:
    """WebP (RIFF) states its length up front; libwebp reports a cut file only as 'corrupt'."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 12:
        declared = int.from_bytes(data[4:8], "little") + 8
        if len(data) < declared:
            raise BadRow("image_truncated", f"{at}WebP declares {declared} bytes, has {len(data)}")


def _decode_error(err: Exception, at: str) -> BadRow:
    message = str(err) or type(err).__name__
    if "truncated" in message.lower():
        return BadRow("image_truncated", f"{at}{message}")
    return BadRow("image_corrupt", f"{at}{type(err).__name__}: {message}")
