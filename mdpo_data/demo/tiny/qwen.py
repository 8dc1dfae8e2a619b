"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL models: size-dependent image-token counts and 3-D
multimodal rotary positions (M-RoPE)."""

from __future__ import annotations

from pathlib import Path

from mdpo_data.demo.tiny.common import CHATML_TEMPLATE, save, train_tokenizer


def _chatml_tokenizer():
    """The Qwen2-VL family's special tokens on a tiny tokenizer -> (tokenizer, {token: id})."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = train_tokenizer(special, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
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


def build_tiny_qwen2_vl(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
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
        chat_template=chat_template or CHATML_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(tokenizer, ids),
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
        **_qwen_token_ids(ids),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    return save(model, processor, path, "mdpo-tiny-qwen2-vl-smoke-test", seed)


def build_tiny_qwen2_5_vl(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
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
        chat_template=chat_template or CHATML_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer, ids),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 64, "window_size": 56, "fullatt_block_indexes": [1]},
        **_qwen_token_ids(ids),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return save(model, processor, path, "mdpo-tiny-qwen2.5-vl-smoke-test", seed)


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
        chat_template=chat_template or CHATML_TEMPLATE,
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
    return save(model, processor, path, "mdpo-tiny-qwen3-vl-smoke-test", seed)
