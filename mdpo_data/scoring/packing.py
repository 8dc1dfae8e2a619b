"""Prefix-shared encoding: responses that share an (image, question) prefix run as ONE row.

A row is `[prefix, r_1, r_2, ...]`, right-padded. Segment ids mark its parts (0 prefix, k for
r_k, -1 padding); `logprobs.block_attention_mask` turns them into a 4-D mask in which r_k sees
the prefix and itself (causally) and never another response, and r_k's position ids restart
right after the prefix. So every response sees exactly the inputs of its own separate
sequence and gets the same log-prob (tested to 1e-5 in fp32), while the image and question
are encoded once. For MDPO, (m_w, q, y_w) and (m_w, q, y_l) share a row; (m_l, q, y_w) has its own.

The prefix is the longest common token prefix of the group's sequences, as the processor
expanded it in the first one (image placeholders included); each response's remaining tokens
(unscored template tokens that merge differently with each response, then the scored
response) are appended from the text-only tokenization. A group whose sequences share no
prefix holding every image token is split into one row per response (still exact).
The scorer (`prefix_response_logps`) and the trainer both run these rows.

M-RoPE models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) get 3-D positions built from these 1-D ones
by `mdpo_data.scoring.positions` at forward time (the model's own `get_rope_index`).
With `share=False` every response gets its own row and the model gets the processor's plain
2-D padding mask: the path for architectures that cannot take a 4-D mask or restarted
positions and the unshared baseline of the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mdpo_data.scoring.logprobs import (
    PrefixGroup,
    PrefixReuseError,
    Rendered,
    common_prefix,
    packed_logps,
    process_rendered,
    render_all,
)

# [R, T] processor outputs whose value on appended (text) response tokens is known to be 0.
_TEXT_ZERO_KEYS = ("token_type_ids", "mm_token_type_ids")


class PackingError(ValueError):
    """These groups cannot share a row (e.g. an unknown per-token processor output)."""


@dataclass
class Packed:
    """Rows for one forward, and which logits score which response token.

    Token n of the batch's responses is input_ids[score_row[n], score_tgt[n]], scored by the
    logits at position score_src[n] of that row, and adds to output sequence score_seq[n].
    """

    inputs: dict[str, Any]  # model kwargs but the attention mask: input_ids, pixel_values, ...
    segments: torch.Tensor  # [R, T] long: -1 padding, 0 prefix, k response k of the row
    position_ids: torch.Tensor  # [R, T] long: restart after the prefix for every response
    block: bool  # True: pass the 4-D block mask and position ids; False: 2-D mask, default positions
    score_row: torch.Tensor
    score_src: torch.Tensor
    score_tgt: torch.Tensor
    score_seq: torch.Tensor
    n_sequences: int
    lengths: list[int]  # full length of every output sequence, as if run on its own
    split_groups: int = 0  # groups that could not share a row (different prefix tokens)

    @property
    def rows(self) -> int:
        return int(self.segments.shape[0])


def _shared(rendered: list[Rendered]) -> int:
    """Text tokens all of a group's sequences share: their longest common token prefix, never
    past any sequence's response. Tokens after it (e.g. a template's whitespace that merges
    differently with each response) are appended per response, unscored."""
    shared = min(len(r.text_ids) - r.n_response for r in rendered)
    for r in rendered[1:]:
        shared = min(shared, common_prefix(rendered[0].text_ids, r.text_ids))
    return shared


def _members(rendered: list[Rendered], share: bool,
             image_token: int | None = None) -> tuple[list[list[int]], int]:
    """Indices (into `rendered` of one group) per row: one row when they share a prefix that
    holds every image token; else one row per response (`split` counts the group)."""
    if share and len(rendered) > 1:
        shared = _shared(rendered)
        tails_ok = image_token is None or all(image_token not in r.text_ids[shared:] for r in rendered)
        if shared >= 1 and tails_ok:
            return [list(range(len(rendered)))], 0
        return [[i] for i in range(len(rendered))], 1
    return [[i] for i in range(len(rendered))], 0


def encode_groups(processor, groups: list[PrefixGroup], *, share: bool = True,
                  slots: list[list[int]] | None = None) -> Packed:
    """Packed rows for `groups`; output sequence of response j of group g: slots[g][j]
    (default: responses in order, group after group)."""
    if slots is None:
        flat = iter(range(sum(len(g.responses) for g in groups)))
        slots = [[next(flat) for _ in g.responses] for g in groups]
    rows: list[tuple[list[Rendered], list[int], Any]] = []  # (members, their slots, image)
    split = 0
    for group, group_slots in zip(groups, slots):
        rendered = render_all(processor, group.sequences())
        members, was_split = _members(rendered, share, getattr(processor, "image_token_id", None))
        split += was_split
        rows += [([rendered[i] for i in m], [group_slots[i] for i in m], group.image) for m in members]
    heads = [members[0] for members, _, _ in rows]
    processed = process_rendered(processor, heads, [image for _, _, image in rows])
    try:
        packed = _layout(processed, rows, processor.tokenizer.pad_token_id or 0)
    except PackingError:
        if not share:
            raise
        return encode_groups(processor, groups, share=False, slots=slots)
    packed.block, packed.split_groups = share, split
    return packed


def prefix_response_logps(
    model, processor, groups: list[PrefixGroup], *, max_length: int | None = None
) -> tuple[list[list[tuple[float, int]]], dict[str, int]]:
    """Same values as `encode` + `response_logps`, running each shared prefix once.

    Returns ((log-prob, response tokens) per response per group, {"tokens": real tokens of
    all sequences, "slots": token positions run through the model, padding included}).
    The scorer's view of the trainer's packed rows (`encode_groups`, `logprobs.packed_logps`):
    one forward, no KV cache, each group one row. Raises PrefixReuseError when a group cannot
    share a row or a sequence is longer than max_length (the caller scores them plainly).
    """
    try:
        packed = encode_groups(processor, groups, share=True)
    except PackingError as error:
        raise PrefixReuseError(str(error)) from None
    if not packed.block or packed.split_groups:
        raise PrefixReuseError(f"{packed.split_groups} group(s) cannot share one prefix")
    if max_length is not None and max(packed.lengths) > max_length:
        raise PrefixReuseError("a sequence is longer than max_length")
    sums, counts = packed_logps(model, packed)
    values = [(float(v), int(n)) for v, n in zip(sums.tolist(), counts.tolist())]
    out, start = [], 0
    for group in groups:
        out.append(values[start : start + len(group.responses)])
        start += len(group.responses)
    return out, {"tokens": sum(packed.lengths), "slots": packed.segments.numel()}


def _layout(processed, rows, pad_id: int) -> Packed:
    """Append each row's further responses to its processed first sequence."""
    ids, lengths = processed["input_ids"], processed["attention_mask"].sum(1).tolist()
    extra = [k for k, v in processed.items() if k not in ("input_ids", "attention_mask")
             and isinstance(v, torch.Tensor) and v.shape == ids.shape]
    if any(k not in _TEXT_ZERO_KEYS for k in extra) and any(len(m) > 1 for m, _, _ in rows):
        raise PackingError(f"cannot extend per-token processor outputs {extra} to packed rows")
    tokens, segs, pos, score = [], [], [], ([], [], [], [])
    seq_lengths = {}
    for r, (members, member_slots, _) in enumerate(rows):
        head = members[0]
        shared = _shared(members)
        prefix = lengths[r] - (len(head.text_ids) - shared)  # processed (image-expanded) prefix
        if ids[r, prefix : lengths[r]].tolist() != head.text_ids[shared:]:
            raise ValueError(f"row {r}: the processor tokenized the response differently from its "
                             "tokenizer; cannot locate the response tokens reliably for this model")
        row_tokens, row_segs, row_pos = ids[r, :prefix].tolist(), [0] * prefix, list(range(prefix))
        for k, (item, slot) in enumerate(zip(members, member_slots), start=1):
            start, tail = len(row_tokens), item.text_ids[shared:]
            row_tokens += tail
            row_segs += [k] * len(tail)
            row_pos += range(prefix, prefix + len(tail))
            for t in range(len(tail) - item.n_response, len(tail)):  # the scored tokens
                score[0].append(r)
                score[1].append(prefix - 1 if t == 0 else start + t - 1)
                score[2].append(start + t)
                score[3].append(slot)
            seq_lengths[slot] = prefix + len(tail)
        tokens.append(row_tokens)
        segs.append(row_segs)
        pos.append(row_pos)
    width = max(len(t) for t in tokens)
    inputs = {k: v for k, v in processed.items() if k not in ("attention_mask", *extra)}
    inputs["input_ids"] = _pad(tokens, width, pad_id)
    for key in extra:  # zero on appended response tokens, as on the text tokens before them
        value = torch.zeros((len(rows), width), dtype=processed[key].dtype)
        value[:, : processed[key].shape[1]] = processed[key][:, :width]
        inputs[key] = value
    position_ids = _pad(pos, width, 0)
    for r, row in enumerate(pos):  # padding continues its row's count (never attended to)
        position_ids[r, len(row):] = torch.arange(len(row), width)
    n = len(seq_lengths)
    return Packed(inputs, _pad(segs, width, -1), position_ids, True,
                  *(torch.tensor(s, dtype=torch.long) for s in score), n_sequences=n,
                  lengths=[seq_lengths[i] for i in range(n)])


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
