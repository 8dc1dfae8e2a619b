"""Small build folders and tiny models for the score/log-prob tests (no build command needed).

Rows are written with the contract's own helpers (schema.make_row, shards.write_shard,
manifest.write_manifest); images are real PNG/JPEG bytes drawn with Pillow.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from mdpo_data.format import schema

from mdpo_data.format import shards
from mdpo_data.format.manifest import write_manifest

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]


def image_bytes(seed: int, *, size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", size, rng.choice(COLORS))
    draw = ImageDraw.Draw(image)
    x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
    draw.ellipse([x, y, x + size[0] // 3, y + size[1] // 3], fill=rng.choice(COLORS))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def make_row(i: int, *, long: bool = False, size=(48, 40)) -> dict:
    rng = random.Random(i)
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    other = rng.choice([c for c in COLORS if c != color])
    chosen = f"The {shape} is {color}." + (" It is a large shape." * rng.randrange(3))
    rejected = f"There is a {other} {rng.choice(SHAPES)}."
    if long:
        chosen = " ".join([chosen] * 40)
    return schema.make_row(
        example_id=f"ex-{i:04d}",
        source="test",
        source_id=str(i),
        source_row=i,
        seed=i,
        question=f"What color is the {shape}?" + (" Answer briefly." if i % 2 else ""),
        chosen=chosen,
        rejected=rejected,
        image=image_bytes(i, size=size, fmt="PNG" if i % 3 else "JPEG"),
        rejected_image=image_bytes(10_000 + i, size=size),
        rejected_image_strategy="crop:0.01-0.2",
    )


def make_build(directory: Path, shard_rows=(3, 2), eval_rows=(2,), long_rows=(), sizes=None,
               edit=None) -> Path:
    """A build folder: train shards of `shard_rows` rows, eval shards, manifest; unscored.
    `edit(row) -> row` changes each row before it is written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    splits, i = {}, 0
    for split, counts in (("train", shard_rows), ("eval", eval_rows)):
        entries = []
        for index, count in enumerate(counts):
            rows = []
            for _ in range(count):
                size = sizes[i % len(sizes)] if sizes else (48, 40)
                row = make_row(i, long=i in long_rows, size=size)
                rows.append(edit(row) if edit else row)
                i += 1
            name = shards.shard_name(split, index, len(counts))
            shards.write_shard(directory / name, [rows])
            entries.append({"file": name, "rows": count, "sha256": shards.sha256_file(directory / name)})
        if entries:
            splits[split] = entries
    write_manifest(directory, {
        "format_version": schema.FORMAT_VERSION,
        "config": {"test": True},
        "counts": {"written": i},
        "splits": splits,
        "reference": None,
    })
    return directory


# --------------------------------------------------------------------------- tiny models


def load(path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def manual_logp(model, processor, image, question: str, response: str, *, system=None,
                end_of_turn=None) -> tuple[float, int]:
    """Independent reference: one unbatched forward over prompt + response + end-of-turn,
    full log_softmax in fp32.

    The text is the template's generation prompt P, the template's own characters between P
    and the response text (e.g. LLaVA's space), the response, then `end_of_turn` (default:
    the tokenizer's EOS). The response tokens are those after the longest common token prefix
    of (P + those characters) and the whole text, both processed with the image.
    """
    import torch

    prompt_messages = schema.prompt_messages(question, system)
    if image is None:
        for message in prompt_messages:
            message["content"] = [b for b in message["content"] if b["type"] != "image"]
    prompt = processor.apply_chat_template(prompt_messages, add_generation_prompt=True)
    conversation = processor.apply_chat_template(prompt_messages + schema.response_messages(response))
    assert conversation.startswith(prompt)
    at = conversation.index(response.strip(), len(prompt))
    head = conversation[:at]
    text = head + response.strip() + (end_of_turn or processor.tokenizer.eos_token)
    images = None if image is None else [image]  # the processor converts to RGB itself
    full_inputs = processor(text=[text], images=images, return_tensors="pt")
    head_ids = processor(text=[head], images=images, return_tensors="pt")["input_ids"][0]
    ids = full_inputs["input_ids"][0]
    n = 0
    while n < min(len(ids), len(head_ids)) and ids[n] == head_ids[n]:
        n += 1
    with torch.no_grad():
        logits = model(**full_inputs).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    total = sum(float(logp[t - 1, ids[t]]) for t in range(n, len(ids)))
    return total, len(ids) - n
