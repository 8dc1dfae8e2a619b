"""A tiny Mistral 3 (Mistral Small 3.1's classes: Pixtral tower, Mistral text model)."""

from __future__ import annotations

from pathlib import Path

from mdpo_data.demo.tiny.common import save, train_tokenizer

_MISTRAL3_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]",
                     "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
_MISTRAL3_TEMPLATE = (  # Mistral Small 3.1's layout without its dated default system message
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ message['content'][0]['text'] }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{% for block in message['content'] %}"
    "{% if block['type'] == 'image' %}[IMG]{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
    "{% endfor %}[/INST]{% else %}{{ message['content'][0]['text'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def build_tiny_mistral3(path: str | Path, seed: int = 0, *, chat_template: str | None = None) -> Path:
    """Write a tiny Mistral 3 (Mistral Small 3.1's classes): Pixtral tower (patch 8, 2-D RoPE, up
    to 64 px) whose patches merge 2x2 into rows of [IMG] tokens closed by [IMG_BREAK] / [IMG_END]
    (the count follows the image's size and aspect), Mistral text model."""
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor, PixtralProcessor

    path = Path(path)
    tokenizer = train_tokenizer(_MISTRAL3_SPECIAL, bos="<s>", eos="</s>", pad="<unk>")
    tokenizer.unk_token = "<unk>"
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 64}, patch_size={"height": 8, "width": 8},
                                              image_mean=[0.48145466, 0.4578275, 0.40821073],
                                              image_std=[0.26862954, 0.26130258, 0.27577711]),
        tokenizer=tokenizer, patch_size=8, spatial_merge_size=2,
        chat_template=chat_template or _MISTRAL3_TEMPLATE,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in _MISTRAL3_SPECIAL}
    config = Mistral3Config(
        vision_config={"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 16, "image_size": 64,
                       "patch_size": 8},
        text_config={"model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096,
                     "sliding_window": None, "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"],
                     "pad_token_id": ids["<unk>"]},
        image_token_index=ids["[IMG]"], spatial_merge_size=2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(config).eval()
    return save(model, processor, path, "mdpo-tiny-mistral3-smoke-test", seed)
