"""A tiny Gemma 3: pooled SigLIP image tokens with bidirectional attention among them."""

from __future__ import annotations

from pathlib import Path

from mdpo_data.demo.tiny.common import save, train_tokenizer

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
    tokenizer = train_tokenizer(_GEMMA3_SPECIAL, bos="<bos>", eos="<eos>", pad="<pad>", named={
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
    return save(model, processor, path, "mdpo-tiny-gemma3-smoke-test", seed)
