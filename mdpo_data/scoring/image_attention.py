"""Packed-row masks for models whose image tokens attend bidirectionally (Gemma 3).

Gemma 3 lets the tokens of one image see each other whatever their order (its processor marks
them `token_type_ids == 1`), and its sliding-window layers see only the last `sliding_window`
positions. A custom 4-D mask replaces both of the model's own rules, so for a packed row
`[prefix, r_1, r_2, ...]` they are applied here, per layer type, on top of the block mask:
full layers: block OR same-image-block; sliding layers: that AND key position > query
position - window, on the positions of the separate sequence (r_k's restart after the
prefix). Images are only ever in the prefix, which every response sees whole, so each
response sees exactly what it sees alone.
"""

from __future__ import annotations

import torch

# Model types whose image tokens attend bidirectionally within each image (transformers'
# `token_type_ids` blockwise overlay) and whose packed rows are tested exact.
BIDIRECTIONAL_IMAGE_MODELS = ("gemma3",)


def bidirectional_images(config) -> bool:
    return getattr(config, "model_type", None) in BIDIRECTIONAL_IMAGE_MODELS


def image_blocks(token_type_ids: torch.Tensor) -> torch.Tensor:
    """[R, T]: an id per contiguous run of image tokens (type 1), -1 elsewhere."""
    is_image = token_type_ids == 1
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:, :-1]
    return torch.where(is_image, starts.long().cumsum(1) - 1, -1)


def layer_masks(config, block_mask: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """{layer type: additive [R, 1, T, T] mask} from the packed rows' block mask (0 / min).

    position_ids [R, T]: 1-D positions restarted per response (`packing.Packed.position_ids`).
    """
    text = getattr(config, "text_config", None) or config
    blocks = image_blocks(token_type_ids)
    same_image = (blocks.unsqueeze(2) == blocks.unsqueeze(1)) & (blocks >= 0).unsqueeze(2)
    allowed = (block_mask[:, 0] == 0) | same_image
    masks = {"full_attention": allowed}
    window = getattr(text, "sliding_window", None)
    if window:
        near = position_ids.unsqueeze(1) > position_ids.unsqueeze(2) - window  # key > query - window
        masks["sliding_attention"] = allowed & near
    minimum = torch.finfo(block_mask.dtype).min
    return {kind: torch.zeros_like(block_mask).masked_fill_(~ok.unsqueeze(1), minimum)
            for kind, ok in masks.items()}
