"""Tiny vision-language models built offline from configs: SMOKE-TEST models, not real ones.

They exist so that the scorer, the trainer and the demo pipeline run end to end on a CPU
with no network. Their weights are random (fixed by a seed): their log-probs mean nothing,
only that the code computes them the same way everywhere.

- `build_tiny_llava`: byte-level BPE tokenizer trained on a small corpus (the demo's colours,
  shapes and numbers), CLIP vision tower (2 layers, 32 px, patch 8 -> 16 image tokens),
  Llama text model (2 layers, hidden 128), ~600-token vocabulary -> about 0.6M parameters, loadable with
  `AutoProcessor` / `AutoModelForImageTextToText` like a Hub checkpoint.
- `build_tiny_qwen2_vl`: a tiny Qwen2-VL, whose image-token count depends on the image size
  (and whose rotary positions are 3-D), to test the size-dependent paths.
- `build_tiny_qwen2_5_vl`, `build_tiny_qwen3_vl`, `build_tiny_idefics3`, `build_tiny_gemma3`:
  the Qwen2.5-VL, Qwen3-VL (deepstack), Idefics3 (SmolVLM) and Gemma 3 architectures, for the
  end-to-end tests of other model families.
- `tiny_model_path`: the tiny LLaVA cached on disk, built once, atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

SMOKE_TEST_NAME = "mdpo-tiny-llava-smoke-test"
SMOKE_TEST_FLAG = "mdpo_smoke_test"  # set to true in the config.json of every tiny model
TINY_LLAVA_VERSION = "v3"  # bump when the build below changes, so caches rebuild

_COLORS = "red green blue yellow orange purple pink brown black white gray".split()
_SHAPES = "circle square triangle star hexagon diamond ellipse rectangle cross heart".split()
_NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()
_CORPUS = [
    "What shape is in the image? What color is the shape? How many shapes are there?",
    "Describe the image in detail. Is there a circle in the picture? Answer yes or no.",
    "The image shows a red circle on a white background. There are two blue squares.",
    "I see three green triangles and one yellow star. The background is black.",
    "There is no hexagon in the image. The diamond is purple and the ellipse is orange.",
    "A large pink heart is in the top left corner, next to a small gray cross.",
    "Yes. No. The answer is four. The shapes are arranged in a row from left to right.",
    "USER: ASSISTANT: user assistant system image picture photo, background corner.",
    " ".join(_COLORS),
    " ".join(_SHAPES),
    " ".join(_NUMBERS),
    " ".join(str(n) for n in range(100)),
] + [f"The {c} {s} is number {n}." for c in _COLORS for s in _SHAPES for n in _NUMBERS[:3]]

LLAVA_TEMPLATE = (  # Vicuna v1 layout: "{system} USER: <image>\n{question} ASSISTANT: {answer}</s>"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for block in message['content'] %}{% if block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for block in message['content'] %}{% if block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for block in message['content'] %}{% if block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for block in message['content'] %}"
    "{% if block['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_MODEL_CARD = """---
tags: [smoke-test, random-weights]
---
# {name}

SMOKE-TEST MODEL with random weights (seed {seed}), built offline by `mdpo_data.demo.tiny`.
It exists to exercise mdpo-toolkit's scoring and training code on a CPU. Its outputs and
log-probs are meaningless. Never publish data scored with it as a real dataset.
"""


def _tokenizer(special_tokens: list[str], *, bos: str, eos: str, pad: str, vocab_size: int = 1024,
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
    core.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad,
                                   extra_special_tokens=named or {})


def _mark_smoke_test(path: Path, name: str, seed: int) -> None:
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config[SMOKE_TEST_FLAG] = True
    config["mdpo_smoke_test_name"] = name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (path / "README.md").write_text(_MODEL_CARD.format(name=name, seed=seed))


def llava(tokenizer, *, chat_template: str, image_size: int, patch_size: int, vision_hidden: int,
          vision_layers: int, hidden_size: int, num_layers: int, max_positions: int, seed: int,
          image_token: str = "<image>"):
    """(model, processor): a LLaVA with the classes of real checkpoints (CLIP vision tower,
    Llama text model, LlavaProcessor), random weights from `seed`. Shared by `tiny` and `demo`."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=chat_template,
        image_token=image_token,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(image_token),
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval(), processor


def _save(model, processor, path: Path, name: str, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    _mark_smoke_test(path, name, seed)
    return path


def build_tiny_llava(
    path: str | Path,
    seed: int = 0,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 128,
    num_layers: int = 2,
    tokens: dict | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write a tiny LLaVA (processor + weights) to `path`; the same seed gives the same files.

    Defaults: 16 image tokens, ~0.6M parameters (fast on CPU, large enough for a loss to fall).
    The score benchmark uses image_size=128, patch_size=16 (64 image tokens).
    `tokens` ({"special": [...], "bos", "eos", "pad", "image"}) and `chat_template` give it
    another model family's special tokens and template (the template tests use them).
    """
    path = Path(path)
    tokens = tokens or {"special": ["<unk>", "<s>", "</s>", "<pad>", "<image>"], "bos": "<s>",
                        "eos": "</s>", "pad": "<pad>", "image": "<image>", "unk": "<unk>"}
    tokenizer = _tokenizer(tokens["special"], bos=tokens["bos"], eos=tokens["eos"], pad=tokens["pad"])
    if tokens.get("unk"):
        tokenizer.unk_token = tokens["unk"]
    model, processor = llava(
        tokenizer, chat_template=chat_template or LLAVA_TEMPLATE, image_token=tokens["image"],
        image_size=image_size, patch_size=patch_size, vision_hidden=64, vision_layers=2,
        hidden_size=hidden_size, num_layers=num_layers, max_positions=4096, seed=seed,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Random weights almost never emit </s>: let generation (BPO's weakened answers) also
    # stop at any punctuation token, so the smoke-test model writes short "answers" and a
    # BPO build on it yields rows instead of only `rejected_too_long` skips.
    stops = [tokenizer.eos_token_id] + sorted(
        i for t, i in tokenizer.get_vocab().items()
        if len(t.lstrip("Ġ")) == 1 and t.lstrip("Ġ") in ".,;:!?()-" and i != tokenizer.eos_token_id
    )
    model.generation_config.eos_token_id = stops
    return _save(model, processor, path, SMOKE_TEST_NAME, seed)


def _chatml_tokenizer():
    """The Qwen2-VL family's special tokens on a tiny tokenizer -> (tokenizer, {token: id})."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _tokenizer(special, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    return tokenizer, {name: tokenizer.convert_tokens_to_ids(name) for name in special}


def _qwen_text_config(tokenizer, ids: dict[str, int]) -> dict:
    return {
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def _qwen_token_ids(ids: dict[str, int]) -> dict[str, int]:
    return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"]}


def build_tiny_qwen2_vl(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen2-VL: 4 image tokens per 56x56 px, more for larger images (3-D RoPE)."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    tokenizer, ids = _chatml_tokenizer()
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=_CHATML_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(tokenizer, ids),
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
        **_qwen_token_ids(ids),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    return _save(model, processor, path, "mdpo-tiny-qwen2-vl-smoke-test", seed)


def build_tiny_qwen2_5_vl(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen2.5-VL: the Qwen2-VL tokenizer and processor rules, Qwen2.5's windowed
    vision tower and 3-D RoPE (4 image tokens per 56x56 px)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    tokenizer, ids = _chatml_tokenizer()
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=_CHATML_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer, ids),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 64, "window_size": 56, "fullatt_block_indexes": [1]},
        **_qwen_token_ids(ids),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return _save(model, processor, path, "mdpo-tiny-qwen2.5-vl-smoke-test", seed)


def build_tiny_qwen3_vl(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
    """Write a tiny Qwen3-VL: 16 px patches merged 2x2 (4 image tokens per 64x64 px), interleaved
    3-D RoPE, and deepstack (vision features added to the first two decoder layers).
    `chat_template` defaults to plain ChatML, which renders single-turn prompts as the published
    Qwen3-VL-Instruct template does (no default system message)."""
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    path = Path(path)
    tokenizer, ids = _chatml_tokenizer()
    processor = Qwen3VLProcessor(  # the published processor's rules (patch 16, merge 2, mean 0.5), small sizes
        image_processor=Qwen2VLImageProcessor(
            patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128},
        ),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=chat_template or _CHATML_TEMPLATE,
    )
    text = _qwen_text_config(tokenizer, ids)
    text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                              "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    config = Qwen3VLConfig(
        text_config=text,
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 64, "patch_size": 16, "num_position_embeddings": 64,
                       "deepstack_visual_indexes": [0, 1]},
        **_qwen_token_ids(ids),
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    return _save(model, processor, path, "mdpo-tiny-qwen3-vl-smoke-test", seed)


_GEMMA3_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                   "<end_of_image>", "<image_soft_token>"]


_GEMMA3_TEMPLATE = (  # Gemma 3's turn layout; the system text opens the first user turn
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] != 'system' %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else 'user' }}\n"
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ messages[0]['content'][0]['text'] }}\n\n{% endif %}"
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}<start_of_image>"
    "{% elif block['type'] == 'text' %}{{ block['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_tiny_gemma3(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
    """Write a tiny Gemma 3: SigLIP tower (32 px, patch 8) average-pooled to 4 image tokens between
    <start_of_image>/<end_of_image>, bidirectional attention among them (token_type_ids), one
    sliding and one global decoder layer. `chat_template` defaults to Gemma 3's turn layout."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    path = Path(path)
    tokenizer = _tokenizer(_GEMMA3_SPECIAL, bos="<bos>", eos="<eos>", pad="<pad>", named={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    tokenizer.unk_token = "<unk>"
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in _GEMMA3_SPECIAL}
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                             image_std=[0.5] * 3, do_pan_and_scan=False),
        tokenizer=tokenizer, image_seq_length=4, chat_template=chat_template or _GEMMA3_TEMPLATE,
    )
    config = Gemma3Config(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16,
                     "layer_types": ["sliding_attention", "full_attention"],
                     "max_position_embeddings": 4096, "bos_token_id": ids["<bos>"],
                     "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]], "pad_token_id": ids["<pad>"]},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    return _save(model, processor, path, "mdpo-tiny-gemma3-smoke-test", seed)


_IDEFICS3_TEMPLATE = (  # SmolVLM's published template (Idefics3 architecture)
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_idefics3(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Idefics3 (SmolVLM's architecture and template): one 32x32 px image, no
    splitting, pixel-shuffled to 4 image tokens between <fake_token_around_image> marks."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
               "<end_of_utterance>", "<global-img>"]
    tokenizer = _tokenizer(special, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>")
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=_IDEFICS3_TEMPLATE)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in special}
    config = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<end_of_utterance>"],
                     "pad_token_id": ids["<|im_end|>"], "tie_word_embeddings": False},
        scale_factor=2,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|im_end|>"],
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    return _save(model, processor, path, "mdpo-tiny-idefics3-smoke-test", seed)


def cache_dir() -> Path:
    """$MDPO_CACHE, else ~/.cache/mdpo-toolkit."""
    return Path(os.environ.get("MDPO_CACHE") or Path.home() / ".cache" / "mdpo-toolkit")


def tiny_model_path() -> Path:
    """The tiny LLaVA, built on first use into the cache; concurrent callers are safe."""
    return cached_build(cache_dir() / f"tiny-llava-{TINY_LLAVA_VERSION}", lambda tmp: build_tiny_llava(tmp, seed=0))


def cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, made by `build(folder)` on first use. Built in a temp folder beside the target
    and renamed into place, so a reader never sees a half-written model; a losing racer
    discards its copy."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_smoke_test_model(model) -> bool:
    return bool(getattr(model.config, SMOKE_TEST_FLAG, False))
