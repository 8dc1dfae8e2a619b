"""What a shard stores for odd chosen images and oversized rejected ones, through the real CLI.

Rule (docs/data.md): the stored chosen image is one 8-bit frame. A 16-bit PNG, an APNG, an
animated GIF/WebP, a multi-page TIFF or a multi-picture JPEG (MPO) is stored as its first frame,
re-encoded as 8-bit PNG; a plain 8-bit RGB JPEG/PNG keeps its bytes. A rejected image larger than
--max-pixels (an albumentations pipeline that resizes up) is a counted skip, so the build always
passes its own `validate`.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from cli_helpers import rows_of, run_cli
from fixtures import make_mdpo_json

from cli_helpers import manifest_json
from mdpo_data.format.schema import image_bytes


def _frames(colors, size=(24, 16)):
    return [Image.new("RGB", size, color) for color in colors]


def _save(image, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_48bit(seed=0, size=(24, 16)) -> bytes:
    """A 16-bit-per-sample RGB PNG (Pillow opens it as 8-bit "RGB"; it cannot write one)."""
    samples = np.random.default_rng(seed).integers(0, 65536, (size[1], size[0], 3)).astype(">u2")
    raw = b"".join(b"\x00" + samples[y].tobytes() for y in range(size[1]))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", size[0], size[1], 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _animated(fmt, **kwargs):
    first, *rest = _frames([(200, 30, 30), (30, 200, 30), (30, 30, 200)])
    return _save(first, fmt, save_all=True, append_images=rest, **kwargs)


IMAGES = {
    "png16_rgb": png_48bit,
    "png16_gray": lambda: _save(Image.fromarray(np.full((16, 24), 40000, np.uint16)), "PNG"),
    "apng": lambda: _animated("PNG", duration=100, loop=0),
    "gif_animated": lambda: _animated("GIF", duration=100, loop=0),
    "webp_animated": lambda: _animated("WEBP", duration=100, lossless=True),
    "tiff_pages": lambda: _animated("TIFF"),
    "mpo": lambda: _animated("MPO", quality=95),
}


def _first_frame_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("kind", list(IMAGES))
def test_multi_frame_and_16_bit_chosen_images_are_stored_as_one_8_bit_frame(tmp_path, kind):
    built = make_mdpo_json(tmp_path / "src", rows=2, seed=1)
    data = IMAGES[kind]()
    for record in built.records:  # every row's image becomes the odd file
        (built.images / os.path.basename(record["img_path"])).write_bytes(data)
    out = tmp_path / "o"
    run_cli("build", "--source", "pairs", "--source-path", built.data, "--image-root", built.images,
            "--n", 2, "--workers", 1, "--quiet", "--out", out)
    rows = rows_of(out)
    assert len(rows) == 2
    for row in rows:
        stored = image_bytes(row["images"])
        assert stored != data
        with Image.open(io.BytesIO(stored)) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert getattr(image, "n_frames", 1) == 1 and not getattr(image, "is_animated", False)
        assert stored[24] == 8  # IHDR bit depth
        if kind not in ("png16_rgb", "png16_gray", "mpo"):  # lossless sources: exact first frame
            assert np.array_equal(_first_frame_rgb(stored), _first_frame_rgb(data))
    assert run_cli("validate", out).returncode == 0


def test_a_plain_8_bit_jpeg_keeps_its_bytes(tmp_path):
    built = make_mdpo_json(tmp_path / "src", rows=2, seed=2)
    out = tmp_path / "o"
    run_cli("build", "--source", "pairs", "--source-path", built.data, "--image-root", built.images,
            "--n", 2, "--workers", 1, "--quiet", "--out", out)
    originals = {p.read_bytes() for p in built.images.iterdir()}
    assert {image_bytes(r["images"]) for r in rows_of(out)} <= originals


@pytest.mark.slow
def test_a_pipeline_drawing_over_max_pixels_is_a_counted_skip(tmp_path):
    A = pytest.importorskip("albumentations")
    pipeline = tmp_path / "up.yaml"
    A.save(A.Compose([A.Resize(height=400, width=400, p=1.0)]), str(pipeline), data_format="yaml")
    out = tmp_path / "o"
    proc = run_cli("build", "--source", "demo", "--n", 4, "--demo-size", 20, "--quiet", "--workers", 1,
                   "--rejected", f"albumentations:{pipeline}", "--max-pixels", 100_000,
                   "--out", out, check=False)
    assert "Traceback" not in proc.stderr
    manifest = manifest_json(out)
    assert manifest["counts"]["skipped_by_stage"]["images"] == {"rejected_image_too_many_pixels": 4}
    assert manifest["counts"]["written"] == 0
    # under the limit the same pipeline builds, and the build passes its own validate
    run_cli("build", "--source", "demo", "--n", 4, "--demo-size", 20, "--quiet", "--workers", 1,
            "--rejected", f"albumentations:{pipeline}", "--max-pixels", 200_000, "--out", tmp_path / "ok")
    assert run_cli("validate", tmp_path / "ok").returncode == 0
