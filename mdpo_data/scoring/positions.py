"""3-D position ids of packed rows for models with multimodal rotary positions (M-RoPE).

Qwen2-VL, Qwen2.5-VL and Qwen3-VL give image tokens (temporal, height, width) positions from
the image grid, and text after an image continues from the largest of them. Their default
positions for a packed row `[prefix, r_1, r_2, ...]` would run r_2 on after r_1; a separate
`[prefix, r_k]` sequence starts r_k right after the prefix. So the model's own
`get_rope_index` computes the row's positions (the prefix's are those of the separate
sequence, as positions depend only on earlier tokens), and every response token then gets
its 1-D position plus the row's offset at the last prefix token, in all three axes: the
text rule `get_rope_index` itself applies after the prefix. Passing them explicitly skips
the model's own computation (and its cached `rope_deltas`); image features, Qwen3-VL's
deepstack ones included, are placed by image token, so they land where they would alone.
"""

from __future__ import annotations

import inspect

import torch

# M-RoPE families whose packed rows are tested exact (tests/scoring/test_packing.py).
MROPE_MODELS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Keys of the processed inputs that `get_rope_index` reads, when the model's signature has them.
_ROPE_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def uses_mrope(config) -> bool:
    """Whether the model's text rotary embedding has multimodal sections (3-D positions)."""
    text = getattr(config, "text_config", None) or config
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    return isinstance(rope, dict) and "mrope_section" in rope


def rope_index(model):
    """The model's `get_rope_index` (on it or on a submodule, e.g. `model.model`), or None."""
    for module in model.modules():
        method = getattr(module, "get_rope_index", None)
        if callable(method):
            return method
    return None


def packed_mrope_positions(model, inputs: dict, segments: torch.Tensor,
                           position_ids: torch.Tensor) -> torch.Tensor:
    """[3, R, T] position ids for packed rows (inputs on the model's device).

    segments [R, T]: -1 padding, 0 prefix, k response k; position_ids [R, T]: 1-D positions
    that restart after the prefix for every response (`packing.Packed.position_ids`).
    """
    method = rope_index(model)
    if method is None:
        raise ValueError(f"{type(model).__name__} has M-RoPE but no get_rope_index")
    if "mm_token_type_ids" not in inputs:
        raise ValueError("the processor returned no mm_token_type_ids: cannot place M-RoPE positions")
    accepted = inspect.signature(method).parameters
    kwargs = {k: inputs[k] for k in _ROPE_INPUTS if k in inputs and k in accepted}
    full, _ = method(inputs["input_ids"], attention_mask=(segments >= 0).long(), **kwargs)
    prefix = (segments == 0).sum(1)  # the prefix is each row's first tokens
    last = (prefix - 1).clamp(min=0).view(1, -1, 1).expand(full.shape[0], -1, 1)
    offset = full.gather(2, last) - (prefix - 1).view(1, -1, 1)  # 3-D minus 1-D at the last prefix token
    restarted = position_ids.unsqueeze(0) + offset
    return torch.where((segments == 0).unsqueeze(0), full, restarted)
