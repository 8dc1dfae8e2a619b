"""Small build folders for the card / preview / validate / publish tests.

Rows go through the real writers (`schema.make_row`, `shards.write_shard`,
`manifest.write_manifest`), so the folders are exactly what a build writes; the reference
columns of the scored variant hold made-up but finite log-probs.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from mdpo_data.format import schema
from mdpo_data.format.manifest import write_manifest
from mdpo_data.format.versions import library_versions
from mdpo_data.format.shards import sha256_file, shard_name, write_shard

SMOKE_FINGERPRINT = {"model": "/cache/tiny-llava-v1", "name": "mdpo-tiny-llava-smoke-test",
                     "dtype": "float32", "max_length": 512}
REAL_FINGERPRINT = {"model": "llava-hf/llava-1.5-7b-hf", "revision": "a272c74", "dtype": "bfloat16",
                    "max_length": 2048}
COLORS = ["red", "green", "blue", "orange", "purple", "black", "yellow", "pink", "gray", "brown"]


def image_bytes(index: int, fmt: str = "PNG", size: tuple[int, int] = (40, 32)) -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 4, size[0] - 4, size[1] - 4), fill=COLORS[index % len(COLORS)])
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def crop_bytes(data: bytes) -> bytes:
    """A 'rejected image': the top-left quarter of the image, resized back."""
    image = Image.open(io.BytesIO(data))
    fmt = image.format
    w, h = image.size
    image = image.convert("RGB").crop((0, 0, w // 2, h // 2)).resize((w, h))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_rows(split: str, n: int, *, scored: bool, strategy: str = "crop:0.01-0.2",
              response_strategy: str = "source", source: str = "demo") -> list[dict]:
    rows = []
    for i in range(n):
        fmt = "PNG" if i % 2 == 0 else "JPEG"
        image = image_bytes(i, fmt)
        row = schema.make_row(
            example_id=f"{split}-{i:04d}",
            source=source,
            source_id=f"{source}-{i}",
            source_row=i,
            seed=1000 + i,
            question=f"What color is the circle in picture {i}? <b>bold</b> & more",
            chosen=f"The circle is {COLORS[i % len(COLORS)]}. " + "It sits in the middle. " * 8,
            rejected=f"The circle is {COLORS[(i + 3) % len(COLORS)]}.",
            image=image,
            rejected_image=crop_bytes(image),
            rejected_image_strategy=strategy,
            rejected_response_strategy=response_strategy,
            metadata={"ratings": [5, 2]},
        )
        if scored:
            row.update({
                schema.REF_CHOSEN: -20.0 - i,
                schema.REF_REJECTED: -30.0 - i,
                schema.REF_CHOSEN_REJECTED_IMAGE: -20.5 - i + (0.8 if i % 3 == 0 else 0.0),
                schema.CHOSEN_TOKENS: 40 + i,
                schema.REJECTED_TOKENS: 8,
            })
        rows.append(row)
    return rows


def write_build(directory: str | Path, *, n_train: int = 5, n_eval: int = 2, scored: bool = True,
                shard_size: int = 3, strategy: str = "crop:0.01-0.2",
                response_strategy: str = "source", source: str = "demo",
                edit: Callable[[str, list[dict]], list[dict]] | None = None,
                fingerprint: dict | None = None) -> Path:
    """A finished build folder: shards of `shard_size` rows per split + manifest.json.

    Scored builds have made-up finite log-probs, except the last train row, which the
    "scorer" skipped (all reference columns null, counted in reference.skipped).

    `edit(split, rows)` may change the rows before they are written (to plant bad data that
    the manifest then faithfully describes).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    splits, written = {}, {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        if n == 0:
            continue
        rows = make_rows(split, n, scored=scored, strategy=strategy,
                         response_strategy=response_strategy, source=source)
        if scored and split == "train":  # the scorer's too-long skip: all reference columns null
            rows[-1].update(dict.fromkeys(schema.REFERENCE_COLUMNS))
        if edit:
            rows = edit(split, rows)
        total = -(-len(rows) // shard_size)
        splits[split] = []
        for index in range(total):
            name = shard_name(split, index, total)
            chunk = rows[index * shard_size:(index + 1) * shard_size]
            count = write_shard(directory / name, [chunk])
            splits[split].append({"file": name, "rows": count, "sha256": sha256_file(directory / name)})
        written[split] = len(rows)
    reference = None
    if scored:
        reference = {
            "scored": True,
            "fingerprint": fingerprint or SMOKE_FINGERPRINT,
            "skipped": {"too_long": 1},
            "columns": list(schema.REF_LOGP_COLUMNS + schema.TOKEN_COLUMNS),
        }
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "command": f"mdpo-data build --source {source} --n {n_train + n_eval} --rejected {strategy}",
        "config": {"source": source, "n": n_train + n_eval, "rejected": strategy, "seed": 0,
                   "shard_size": shard_size, "max_pixels": 40_000_000},
        "rejected_image": {"spec": strategy, "resolved": strategy,
                           "description": "A random crop keeping 1-20% of the image area, resized back."},
        "rejected_response": {"strategy": response_strategy},
        "counts": {"read": 20, "candidates": 12, "skipped": {"non_numeric_rating": 3, "tie": 5},
                   "requested": n_train + n_eval, "sampled": n_train + n_eval,
                   "written": n_train + n_eval, "written_by_split": written},
        "splits": splits,
        "versions": library_versions("datasets", "pyarrow"),
        "reference": reference,
    }
    write_manifest(directory, manifest)
    return directory
