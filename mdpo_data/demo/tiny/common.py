"""What every tiny model shares: the demo corpus its tokenizer is trained on, ChatML, the
smoke-test label and card, and saving like a Hub checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

SMOKE_TEST_FLAG = "mdpo_smoke_test"  # set to true in the config.json of every tiny model

COLORS = "red green blue yellow orange purple pink brown black white gray".split()
SHAPES = "circle square triangle star hexagon diamond ellipse rectangle cross heart".split()
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()
CORPUS = [
    "What shape is in the image? What color is the shape? How many shapes are there?",
    "Describe the image in detail. Is there a circle in the picture? Answer yes or no.",
    "The image shows a red circle on a white background. There are two blue squares.",
    "I see three green triangles and one yellow star. The background is black.",
    "There is no hexagon in the image. The diamond is purple and the ellipse is orange.",
    "A large pink heart is in the top left corner, next to a small gray cross.",
    "Yes. No. The answer is four. The shapes are arranged in a row from left to right.",
    "USER: ASSISTANT: user assistant system image picture photo, background corner.",
    " ".join(COLORS),
    " ".join(SHAPES),
    " ".join(NUMBERS),
    " ".join(str(n) for n in range(100)),
] + [f"The {c} {s} is number {n}." for c in COLORS for s in SHAPES for n in NUMBERS[:3]]

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for block in message['content'] %}"
    "{% if block['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MODEL_CARD = """---
tags: [smoke-test, random-weights]
---
# {name}

SMOKE-TEST MODEL with random weights (seed {seed}), built offline by `mdpo_data.demo.tiny`.
It exists to exercise mdpo-toolkit's scoring and training code on a CPU. Its outputs and
log-probs are meaningless. Never publish data scored with it as a real dataset.
"""


def train_tokenizer(special_tokens: list[str], *, bos: str, eos: str, pad: str, vocab_size: int = 1024,
               named: dict[str, str] | None = None):
    """A byte-level BPE trained on the tiny corpus, wrapped as a transformers fast tokenizer.
    `named` gives model-specific special tokens their attribute names (Gemma 3's `boi_token`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad,
                                   extra_special_tokens=named or {})


def mark_smoke_test(path: Path, name: str, seed: int) -> None:
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config[SMOKE_TEST_FLAG] = True
    config["mdpo_smoke_test_name"] = name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (path / "README.md").write_text(MODEL_CARD.format(name=name, seed=seed))


def save(model, processor, path: Path, name: str, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    mark_smoke_test(path, name, seed)
    return path


def is_smoke_test_model(model) -> bool:
    return bool(getattr(model.config, SMOKE_TEST_FLAG, False))
