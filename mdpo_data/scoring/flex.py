"""The packed rows' block mask as a FlexAttention `BlockMask`, for attn_implementation "flex_attention".

PyTorch's sdpa takes the packed rows' arbitrary 4-D mask (`logprobs.block_attention_mask`) but
then falls back from its fused flash kernel to a slower one, and the dense [R, 1, T, T] mask
itself costs O(T^2) memory. FlexAttention's BlockMask was made for this shape: the rule lives in
a `mask_mod` over segment ids, and whole 128x128 blocks that no query sees (another response,
padding) are skipped. The rule is the same as the dense mask's, so the log-probs match sdpa's
(tested to 1e-5 in fp32 on CPU).
"""

from __future__ import annotations

import torch

FLEX = "flex_attention"  # transformers' name for the kernel


def segment_mask_mod(segments: torch.Tensor):
    """mask_mod(b, h, q, kv) for segment ids [R, T] (-1 padding, 0 prefix, k response k): a query
    sees earlier keys of the prefix and of its own segment; every query sees itself (so a
    padding query's softmax row is never empty), exactly as `logprobs.block_attention_mask`."""

    def mask_mod(b, h, q_idx, kv_idx):
        query, key = segments[b, q_idx], segments[b, kv_idx]
        visible = (kv_idx <= q_idx) & (key >= 0) & ((key == 0) | (key == query))
        return visible | (q_idx == kv_idx)

    return mask_mod


def block_mask(segments: torch.Tensor):
    """The packed rows' BlockMask [R, 1, T, T] (one for all heads) on the segments' device."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = segments.shape
    return create_block_mask(segment_mask_mod(segments), rows, None, length, length,
                             device=segments.device)


def supports_flex(model) -> tuple[bool, str]:
    """Whether transformers offers flex_attention for this model's class (Qwen2-VL's does not)."""
    ok = bool(getattr(type(model), "_supports_flex_attn", False))
    return ok, f"{type(model).__name__}: flex_attention {'supported' if ok else 'not supported by transformers'}"
