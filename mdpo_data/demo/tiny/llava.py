"""Tiny LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision models (CLIP or SigLIP towers, Llama,
Mistral or Qwen2 text models)."""

from __future__ import annotations

from pathlib import Path

from mdpo_data.demo.tiny.common import CHATML_TEMPLATE, save, train_tokenizer

SMOKE_TEST_NAME = "mdpo-tiny-llava-smoke-test"
TINY_LLAVA_VERSION = "v3"  # bump when the build below changes, so caches rebuild

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
    tokenizer = train_tokenizer(tokens["special"], bos=tokens["bos"], eos=tokens["eos"], pad=tokens["pad"])
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
    return save(model, processor, path, SMOKE_TEST_NAME, seed)


_LLAMA_TOKENS = {"special": ["<unk>", "<s>", "</s>", "<pad>", "<image>"], "bos": "<s>", "eos": "</s>",
                 "pad": "<pad>", "image": "<image>", "unk": "<unk>"}
_TINY_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]  # any-resolution grids, as 336 px ones scaled down


def build_tiny_llava_next(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
    """Write a tiny LLaVA-NeXT (llava-v1.6-mistral's classes): CLIP tower (32 px, patch 8) on an
    any-resolution grid (a base view plus up to 2x2 tiles, newline tokens between rows), Mistral
    text model; the image-token count depends on the image's size and aspect."""
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    path = Path(path)
    tokenizer = train_tokenizer(_LLAMA_TOKENS["special"], bos="<s>", eos="</s>", pad="<pad>")
    tokenizer.unk_token = "<unk>"
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                image_grid_pinpoints=_TINY_PINPOINTS),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat_template or LLAVA_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                       "projection_dim": 32},
        text_config={"model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 4096, "sliding_window": None,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=_TINY_PINPOINTS, vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    return save(model, processor, path, "mdpo-tiny-llava-next-smoke-test", seed)


def build_tiny_llava_onevision(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
    """Write a tiny LLaVA-OneVision: SigLIP tower (32 px, patch 8: 16 tokens a view, no CLS) on an
    any-resolution grid, Qwen2 text model and ChatML tokens."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tokenizer = train_tokenizer(special, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": 32, "width": 32},
                                                     image_grid_pinpoints=_TINY_PINPOINTS),
        tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32}),
        num_image_tokens=16, vision_feature_select_strategy="full",
        chat_template=chat_template or CHATML_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>"),
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in special}
    config = LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        image_token_index=ids["<image>"], video_token_index=ids["<video>"],
        image_grid_pinpoints=_TINY_PINPOINTS,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    return save(model, processor, path, "mdpo-tiny-llava-onevision-smoke-test", seed)
