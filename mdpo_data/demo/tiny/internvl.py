"""A tiny transformers-native InternVL (as OpenGVLab/InternVL3-*-hf)."""

from __future__ import annotations

from pathlib import Path

from mdpo_data.demo.tiny.common import CHATML_TEMPLATE, save, train_tokenizer

_INTERNVL_TEMPLATE = CHATML_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")


def build_tiny_internvl(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
    """Write a tiny InternVL (transformers-native, as OpenGVLab/InternVL3-*-hf): InternViT tower
    (32 px, patch 8) pixel-shuffled to 4 tokens a tile between <img> and </img>, images cut into
    up to 4 tiles plus a thumbnail, Qwen2 text model."""
    import torch
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tokenizer = train_tokenizer(special, bos=None, eos="<|im_end|>", pad="<|endoftext|>", named={
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>"})
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True,
                                              min_patches=1, max_patches=4, image_mean=[0.485, 0.456, 0.406],
                                              image_std=[0.229, 0.224, 0.225]),
        tokenizer=tokenizer, video_processor=InternVLVideoProcessor(size={"height": 32, "width": 32}),
        image_seq_length=4, chat_template=chat_template or _INTERNVL_TEMPLATE,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in special}
    config = InternVLConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": [32, 32], "patch_size": [8, 8]},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=4, downsample_ratio=0.5,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    return save(model, processor, path, "mdpo-tiny-internvl-smoke-test", seed)
