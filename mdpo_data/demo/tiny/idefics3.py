"""A tiny Idefics3 (SmolVLM's architecture and template)."""

from __future__ import annotations

from pathlib import Path

from mdpo_data.demo.tiny.common import save, train_tokenizer

_IDEFICS3_TEMPLATE = (  # SmolVLM's published template (Idefics3 architecture)
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_idefics3(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
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
    tokenizer = train_tokenizer(special, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>")
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=chat_template or _IDEFICS3_TEMPLATE)
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
    return save(model, processor, path, "mdpo-tiny-idefics3-smoke-test", seed)
