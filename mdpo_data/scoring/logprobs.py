"""The ONE way a response's log-probability is computed, shared by the scorer and the trainer.

A reference log-prob stored in a shard is only comparable with the policy's log-prob if both
come from the same inputs and the same reduction. So the scorer (`mdpo_data.scoring.stage`) and the
trainer (`mdpo_train`) both call `encode` then `response_logps`; nothing else builds inputs.

What counts as a response token (the exact rule, `RESPONSE_RULE`):
    The response is the assistant's text followed by its end-of-turn token, nothing else.
    1. Render the prompt messages (`schema.prompt_messages(question, system)`: the system
       message if any, then one user turn holding the image block and the question; no image
       block when the image is None) with the chat template and `add_generation_prompt=True`
       -> P, and the same messages plus the assistant turn -> F. Where P is not a prefix of
       F (LLaVA-OneVision renders the assistant turn as "assistant \\n" but prompts with
       "assistant\\n"), the response follows P directly, as when the model generates:
       S = P + text + end-of-turn (steps 2-3 still locate and check the text in F).
    2. Locate the assistant's text in F: inside the template's `{% generation %}` block where
       it has one, else in what F adds after P; the first occurrence of the response (or of
       the response stripped of surrounding whitespace, for templates that `trim` it).
    3. The end-of-turn token (`end_of_turn`) is the first of `<|im_end|>`, `<end_of_utterance>`,
       `<end_of_turn>`, `<|eot_id|>`, `<|end|>` that the template uses and the tokenizer knows,
       else the tokenizer's EOS (`</s>` for Vicuna/LLaVA/Mistral). It is appended whether or
       not the template emits it; whitespace a template puts around the turn (LLaVA-1.5's
       trailing space, ChatML's newline) and anything after the end-of-turn are dropped.
    4. The sequence is S = F[:text start] + text + end-of-turn. Tokenize S and A = F[:text
       start] with the same special-token rule (no extra BOS when the template starts with
       it, as `processor.apply_chat_template(tokenize=True)`). The response tokens are the
       tokens of S after their longest common prefix with A's: a token that merges template
       whitespace with the text (SentencePiece `▁The`, BPE `ĠThe`) is a response token; a
       whitespace-only token before the text stays in the prompt and is not scored.
    So the LAST n_response tokens of every encoded sequence are the response, and nothing
    follows them. Prompt, image and padding tokens are masked out. The model input is S
    processed with the image by the processor (image placeholders expanded), right-padded;
    images first go through `to_rgb` (transparency composited on white). The processor must
    tokenize the response exactly as the tokenizer did, else the sequence is refused.

`prefix_response_logps` is a scorer-only fast path (y_w and y_l packed after one copy of
their shared prefix, in one forward with a 4-D mask; no KV cache, so no deprecated API);
it must and is tested to give the same values as `encode` + `response_logps`.

Truncation rule (`TRUNCATION_RULE`): nothing is ever truncated. A sequence whose full length
(image tokens included) exceeds `max_length` is dropped from the batch and reported, and the
caller counts it as a skip.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from mdpo_data.format import schema
from mdpo_data.build.images import to_rgb  # one RGB rule for build, scorer and trainer
from mdpo_data.scoring.flex import FLEX, block_mask
from mdpo_data.scoring.image_attention import bidirectional_images, layer_masks
from mdpo_data.scoring.positions import MROPE_MODELS, packed_mrope_positions, rope_index, uses_mrope

TRUNCATION_RULE = "drop-if-longer-than-max-length:v1"  # see the module docstring
# Bump when the response rule changes: the trainer refuses data scored under another rule.
RESPONSE_RULE = "text+end-of-turn:v2"  # v1 (unrecorded): template tail after the prompt
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_utterance>", "<end_of_turn>", "<|eot_id|>", "<|end|>")

# Rows of logits upcast to fp32 at once: bounds the fp32 copy to CHUNK x vocab floats.
_LOGSUMEXP_CHUNK = 1024


def response_rule_problems(fingerprint: dict[str, Any]) -> list[str]:
    """Why log-probs with this scorer fingerprint can't be trained against now ([] if they can)."""
    if not fingerprint:
        return []
    scored = fingerprint.get("response_rule")
    if scored == RESPONSE_RULE:
        return []
    was = repr(scored) if scored else "v1 (the template's tail: no end-of-turn token appended, template whitespace scored)"
    return [f"the reference log-probs were scored under response rule {was}; this version scores "
            f"{RESPONSE_RULE!r} (the response text then its end-of-turn token). Re-score the data: "
            "`mdpo-data score DIR --ref-model MODEL --force`"]


@dataclass(frozen=True)
class Sequence:
    """One thing to score: log pi(response | image, question)."""

    image: Any  # PIL.Image.Image, or None to score without the image ("No Image" diagnostic)
    question: str
    response: str
    system: str | None = None  # the system message of the stored prompt, if any


def decode_image(data: bytes):
    """The exact stored image bytes -> a decoded RGB PIL image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image)


def _cell_image(cell):
    """An `images`/`rejected_images` cell (list of one image, storage form or decoded) -> PIL."""
    if len(cell) != 1:
        raise ValueError(f"expected exactly one image per cell, got {len(cell)}")
    item = cell[0]
    if isinstance(item, dict):
        return decode_image(item["bytes"])
    return to_rgb(item)


def row_sequences(row: dict[str, Any], *, no_image: bool = False) -> dict[str, Sequence]:
    """The sequences a shard row needs, keyed by the reference column each one fills.

    Works on storage-form rows (image bytes) and on `datasets` rows (decoded PIL images).
    """
    question, system = schema.question_of(row["prompt"]), schema.system_of(row["prompt"])
    chosen, rejected = schema.text_of(row["chosen"]), schema.text_of(row["rejected"])
    image, rejected_image = _cell_image(row["images"]), _cell_image(row["rejected_images"])
    sequences = {
        schema.REF_CHOSEN: Sequence(image, question, chosen, system),
        schema.REF_REJECTED: Sequence(image, question, rejected, system),
        schema.REF_CHOSEN_REJECTED_IMAGE: Sequence(rejected_image, question, chosen, system),
    }
    if no_image:
        sequences[schema.REF_CHOSEN_NO_IMAGE] = Sequence(None, question, chosen, system)
        sequences[schema.REF_REJECTED_NO_IMAGE] = Sequence(None, question, rejected, system)
    return sequences


# --------------------------------------------------------------------------- encoding


def _prompt_messages(seq: Sequence) -> list[dict[str, Any]]:
    messages = schema.prompt_messages(seq.question, system=seq.system)
    if seq.image is None:
        for message in messages:
            message["content"] = [block for block in message["content"] if block["type"] != "image"]
    return messages


def _template(processor) -> str:
    template = getattr(processor, "chat_template", None)
    if template is None:
        raise ValueError(
            f"{type(processor).__name__} has no chat template: the response boundary is defined "
            "by the template. Use a chat/instruct checkpoint or set processor.chat_template."
        )
    return template


def render(processor, seq: Sequence) -> tuple[str, str]:
    """(prompt text with the generation prompt, full conversation text) from the chat template."""
    _template(processor)
    messages = _prompt_messages(seq)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(
        messages + schema.response_messages(seq.response), tokenize=False
    )
    return prompt, full


def end_of_turn(processor) -> str:
    """The token that ends an assistant turn for this model (rule step 3 of the docstring)."""
    template, tokenizer = _template(processor), processor.tokenizer
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            return token
    if tokenizer.eos_token is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS token and the chat template uses "
                         f"none of {', '.join(END_OF_TURN_TOKENS)}: no end-of-turn token to score")
    return tokenizer.eos_token


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _generation_span(processor, seq: Sequence, full: str) -> tuple[int, int] | None:
    """(start, end) in `full` of the assistant turn's `{% generation %}` block, if the template has one."""
    template = _template(processor)
    if not _GENERATION_TAG.search(template):
        return None
    try:  # an internal helper of transformers' apply_chat_template (return_assistant_tokens_mask)
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # then the text after the generation prompt is searched instead
        return None
    messages = _prompt_messages(seq) + schema.response_messages(seq.response)
    clean = [{**m, "content": [{k: v for k, v in b.items() if v is not None} for b in m["content"]]}
             for m in messages]  # as apply_chat_template normalizes (drops None values)
    rendered, indices = render_jinja_template(
        conversations=[clean], chat_template=template, return_assistant_tokens_mask=True,
        **processor.tokenizer.special_tokens_map,
    )
    if rendered[0] != full or not indices[0]:
        return None
    return indices[0][-1]


def sequence_text(processor, seq: Sequence) -> tuple[str, str]:
    """(the prompt part A, the scored sequence S = A + text + end-of-turn); see the docstring."""
    prompt, full = render(processor, seq)
    after_prompt = full.startswith(prompt)  # else: the response follows P itself (rule step 1)
    start = len(prompt) if after_prompt else len(os.path.commonprefix([prompt, full]))
    span = _generation_span(processor, seq, full) or (start, len(full))
    region = full[span[0]:span[1]]
    for text in (seq.response, seq.response.strip()):
        at = region.find(text) if text.strip() else -1
        if at >= 0:
            break
    else:
        raise ValueError(f"cannot find the response {seq.response[:60]!r} in the chat template's "
                         "output (empty, or changed by the template)")
    head = full[: span[0] + at] if after_prompt else prompt
    return head, head + text + end_of_turn(processor)


def add_special_tokens(tokenizer, text: str) -> bool:
    """Same rule as `processor.apply_chat_template(tokenize=True)`: no BOS if the template has it."""
    return not (tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token))




def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(frozen=True)
class Rendered:
    full: str  # the sequence text S: prompt + response + end-of-turn, nothing after
    add_special: bool
    text_ids: list[int]  # tokenizer ids of `full` (image placeholders not expanded)
    n_response: int  # response tokens: the tail of text_ids after the prompt


def render_all(processor, seqs: list[Sequence]) -> list[Rendered]:
    tokenizer = processor.tokenizer
    out = []
    for index, seq in enumerate(seqs):
        try:
            head, full = sequence_text(processor, seq)
        except ValueError as error:
            raise ValueError(f"sequence {index}: {error}") from None
        add_special = add_special_tokens(tokenizer, full)
        head_ids = tokenizer(head, add_special_tokens=add_special)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=add_special)["input_ids"]
        shared = common_prefix(head_ids, full_ids)
        if shared == 0:
            raise ValueError(f"sequence {index}: the response shares no token with the prompt "
                             f"(response {seq.response!r}); is the prompt empty?")
        out.append(Rendered(full, add_special, full_ids, len(full_ids) - shared))
    return out


def process_rendered(processor, rendered: list[Rendered], images: list):
    """Processor outputs for the rendered rows; images[i] is row i's image or None. Images go
    nested, one list per row: Gemma 3's processor reads a flat list as one row's images."""
    add_special = {r.add_special for r in rendered}
    if len(add_special) != 1:
        raise ValueError("sequences in one batch disagree on special tokens; batch them separately")
    has_image = any(image is not None for image in images)
    return processor(
        text=[r.full for r in rendered],
        images=[[to_rgb(image)] if image is not None else [] for image in images] if has_image else None,
        padding=True,
        padding_side="right",
        add_special_tokens=add_special.pop(),
        return_tensors="pt",
    )


def _response_mask(attention_mask: torch.Tensor, n_response: list[int]) -> torch.Tensor:
    """The last n_response[i] attended positions of each row (padding side independent)."""
    mask = attention_mask.bool()
    rank_from_end = mask.sum(1, keepdim=True) - mask.long().cumsum(1)  # 0 at the last real token
    return mask & (rank_from_end < torch.tensor(n_response).unsqueeze(1))


def encode(processor, seqs: list[Sequence], *, max_length: int | None = None):
    """Model inputs for `seqs`, plus a bool `response_mask` [B, T]; returns (batch, kept).

    `kept` holds the indices (into `seqs`) of the rows in `batch`, in order. A sequence longer
    than `max_length` tokens (image tokens included) is dropped, never truncated; the caller
    counts it as a skip. If none fits, returns ({}, []). Rows are right-padded whatever the
    tokenizer's padding side, so default position ids are exact for every architecture.
    """
    if not seqs:
        return {}, []
    rendered = render_all(processor, seqs)
    batch = process_rendered(processor, rendered, [s.image for s in seqs])
    kept = list(range(len(seqs)))
    if max_length is not None:
        lengths = batch["attention_mask"].sum(1).tolist()
        kept = [i for i, length in enumerate(lengths) if length <= max_length]
        if not kept:
            return {}, []
        if len(kept) < len(seqs):  # rare: re-process the ones that fit (images batch per model)
            rendered = [rendered[i] for i in kept]
            batch = process_rendered(processor, rendered, [seqs[i].image for i in kept])
    n_response = [r.n_response for r in rendered]
    batch["response_mask"] = _response_mask(batch["attention_mask"], n_response)
    _check_response_tokens(batch, rendered, kept)
    return batch, kept


def _check_response_tokens(batch, rendered: list[Rendered], kept: list[int]) -> None:
    """The processor must tokenize the response exactly as the text-only tokenizer did."""
    ids, mask = batch["input_ids"], batch["response_mask"]
    for row, item in enumerate(rendered):
        got = ids[row][mask[row]].tolist()
        if got != item.text_ids[-item.n_response :]:
            raise ValueError(
                f"sequence {kept[row]}: the processor tokenized the response differently from "
                "its tokenizer; cannot locate the response tokens reliably for this model"
            )


# --------------------------------------------------------------------------- log-probs


def _unwrap(model):
    """The underlying transformers model (DDP/accelerate wrappers keep it as `.module`)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def model_inputs(model, batch) -> dict[str, Any]:
    """Batch tensors on the model's device; floating inputs (pixels) in the model's dtype."""
    inner = _unwrap(model)
    device, dtype = inner.device, inner.dtype
    out = {}
    for key, value in batch.items():
        if key == "response_mask":
            continue
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=dtype if value.is_floating_point() else None)
        out[key] = value
    return out


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in fp32 for rows of logits [N, V] -> [N].

    Upcasts CHUNK rows at a time instead of materialising an fp32 [B, T, V] log_softmax.
    """
    parts = []
    for start in range(0, logits.shape[0], _LOGSUMEXP_CHUNK):
        chunk = logits[start : start + _LOGSUMEXP_CHUNK].float()
        target = targets[start : start + _LOGSUMEXP_CHUNK].unsqueeze(1)
        parts.append(chunk.gather(1, target).squeeze(1) - torch.logsumexp(chunk, dim=-1))
    if not parts:
        return logits.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)


def _logits(model, inputs: dict[str, Any], keep) -> torch.Tensor:
    """The model's logits, asking it to run the LM head at `keep` only (an int: the last keep
    positions; a bool [R, T] mask: those positions); a model without `logits_to_keep` gives all."""
    try:
        return model(**inputs, logits_to_keep=keep, use_cache=False).logits
    except TypeError as error:
        if "logits_to_keep" not in str(error):
            raise
        return model(**inputs, use_cache=False).logits


def _forward_logits(model, inputs: dict[str, Any], keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions (asks the model to skip the rest of the lm_head)."""
    logits = _logits(model, inputs, keep)
    return logits[:, -keep:] if logits.shape[1] != keep else logits


def response_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs in fp32 [B], response token counts [B]).

    Token t is scored by the logits at t-1. Only positions from the earliest response token
    on are projected to the vocabulary and upcast. No `no_grad` here: the trainer needs the
    graph; the scorer wraps the call in `torch.inference_mode()`.
    """
    mask = batch["response_mask"].bool()
    inputs = model_inputs(model, batch)
    mask = mask.to(inputs["input_ids"].device)
    first = int(mask.any(0).float().argmax())  # earliest response position in the batch
    if first < 1:
        raise ValueError("a response starts at position 0: there is no prompt to condition on")
    keep = mask.shape[1] - first + 1  # logits at positions first-1 .. T-1
    logits = _forward_logits(model, inputs, keep)[:, :-1]  # predicts positions first .. T-1
    target_mask = mask[:, first:]
    targets = inputs["input_ids"][:, first:][target_mask]
    per_token = token_logps(logits[target_mask], targets)
    rows = torch.nonzero(target_mask, as_tuple=True)[0]
    sums = torch.zeros(mask.shape[0], dtype=torch.float32, device=per_token.device)
    sums = sums.index_add(0, rows, per_token)
    return sums, target_mask.sum(1)


def sequence_logps(
    model, processor, seqs: list[Sequence], *, max_length: int | None = None, batch_size: int = 8
) -> list[tuple[float, int] | None]:
    """(log-prob, token count) per sequence, None where it did not fit; for tests and spot-checks."""
    results: list[tuple[float, int] | None] = [None] * len(seqs)
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            batch, kept = encode(processor, chunk, max_length=max_length)
            if not kept:
                continue
            sums, counts = response_logps(model, batch)
            for row, index in enumerate(kept):
                results[start + index] = (float(sums[row]), int(counts[row]))
    return results


# --------------------------------------------------------------------------- shared prefix


class PrefixReuseError(RuntimeError):
    """This batch cannot share its prefixes; score it with `encode`/`response_logps`."""


@dataclass(frozen=True)
class PrefixGroup:
    """Responses that share one (image, question) prefix, e.g. y_w and y_l under m_w."""

    image: Any
    question: str
    responses: tuple[str, ...]
    system: str | None = None

    def sequences(self) -> list[Sequence]:
        return [Sequence(self.image, self.question, r, self.system) for r in self.responses]


# Attention kernels that take the packed rows' mask: a 4-D tensor (sdpa, eager) or a
# FlexAttention BlockMask (`mdpo_data.scoring.flex`); flash-attention and others do not.
MASKED_ATTENTION = ("sdpa", "eager", FLEX)


def attention_implementation(model) -> str | None:
    """The language model's attention kernel name as transformers resolved it."""
    config = _unwrap(model).config
    text = getattr(config, "text_config", None) or config
    return getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)


def prefix_reuse_support(model) -> tuple[bool, str]:
    """Whether packed rows (`mdpo_data.scoring.packing`) can be exact for this model (static check);
    the scorer and the trainer both ask here.

    A row packs a group's responses after ONE copy of their prefix, with explicit position ids
    that restart for every response and a custom 4-D attention mask: only MASKED_ATTENTION
    kernels take the mask, and of the models with 3-D multimodal RoPE only those whose
    restarted positions are tested exact (`positions.MROPE_MODELS`) pack.
    """
    config = _unwrap(model).config
    positions = "1-D positions"
    if uses_mrope(config):
        if config.model_type not in MROPE_MODELS or rope_index(_unwrap(model)) is None:
            return False, (f"{config.model_type}: 3-D multimodal rotary positions (M-RoPE) not "
                           f"known to restart exactly (packed: {', '.join(MROPE_MODELS)})")
        positions = "3-D M-RoPE positions restarted per response"
    attention = attention_implementation(model)
    if attention not in MASKED_ATTENTION:
        return False, f"{config.model_type}: {attention} attention takes no arbitrary 4-D mask"
    images = ", image tokens bidirectional per image" if bidirectional_images(config) else ""
    return True, f"{config.model_type}: {positions}, {attention} attention with a 4-D block mask{images}"


# --------------------------------------------------------------------------- packed rows
# Several responses per row (mdpo_data.scoring.packing): one forward, log-probs per response.


def block_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask [R, 1, T, T] from segment ids (-1 padding, 0 prefix, k response k).

    A query sees earlier keys of the prefix and of its own segment only. A padding query also
    sees itself, so no softmax row is empty (an all-masked row would give NaN gradients).
    Additive floats (0 / dtype min), because eager attention adds the mask to the scores.
    """
    length = segments.shape[1]
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def _packed_mask(model, inputs: dict[str, Any], segments: torch.Tensor, position_ids: torch.Tensor,
                 dtype: torch.dtype):
    """The packed rows' 4-D block mask; per layer type for models with bidirectional images."""
    mask = block_attention_mask(segments, dtype)
    config = _unwrap(model).config
    if not bidirectional_images(config):
        return mask
    types = inputs.get("token_type_ids", torch.zeros_like(segments))
    return layer_masks(config, mask, types, position_ids)


def _packed_positions(model, inputs: dict[str, Any], segments: torch.Tensor,
                      position_ids: torch.Tensor) -> torch.Tensor:
    """The packed rows' position ids: 1-D as packed, or the M-RoPE model's 3-D ones."""
    inner = _unwrap(model)
    if not uses_mrope(inner.config):
        return position_ids
    return packed_mrope_positions(inner, inputs, segments, position_ids)


def _logits_at(model, inputs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
    """Logits [K, V] at the True positions of keep [R, T], in row-major order.

    transformers applies the LM head to those positions only (`logits_to_keep` as a boolean
    mask), through the public forward, so DDP/FSDP wrappers see a normal forward.
    """
    logits = _logits(model, inputs, keep)
    if logits.dim() == 3 and logits.shape[:2] == keep.shape:  # a model that ignored the mask
        logits = logits[keep]
    if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):
        raise ValueError(f"{type(_unwrap(model)).__name__} returned logits of shape "
                         f"{tuple(logits.shape)} for {int(keep.sum())} kept positions")
    return logits


def packed_logps(model, packed) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs in fp32 [S], response token counts [S]) for packed rows.

    Same values as `encode` + `response_logps` on the separate sequences. The LM head runs on
    the positions that score a response token only, and the fp32 log-softmax on chunks of them,
    so no [T, V] logits exist over image and prompt positions. No `no_grad`: trainer path.
    """
    inputs = model_inputs(model, packed.inputs)
    device, dtype = inputs["input_ids"].device, _unwrap(model).dtype
    segments = packed.segments.to(device)
    if packed.block:
        positions = packed.position_ids.to(device)
        if attention_implementation(model) == FLEX:
            inputs["attention_mask"] = block_mask(segments)
        else:
            inputs["attention_mask"] = _packed_mask(model, inputs, segments, positions, dtype)
        inputs["position_ids"] = _packed_positions(model, inputs, segments, positions)
    else:
        inputs["attention_mask"] = (segments >= 0).long()
    rows, src = packed.score_row.to(device), packed.score_src.to(device)
    tgt, seq = packed.score_tgt.to(device), packed.score_seq.to(device)
    keep = torch.zeros(segments.shape, dtype=torch.bool, device=device)
    keep[rows, src] = True
    logits = _logits_at(model, inputs, keep)
    index = (keep.flatten().long().cumsum(0) - 1)[rows * segments.shape[1] + src]
    targets = inputs["input_ids"][rows, tgt]
    per_token = torch.cat([  # gathered chunk by chunk: no second [N, V] copy of the logits
        token_logps(logits[index[i : i + _LOGSUMEXP_CHUNK]], targets[i : i + _LOGSUMEXP_CHUNK])
        for i in range(0, len(index), _LOGSUMEXP_CHUNK)
    ]) if len(index) else logits.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(packed.n_sequences, dtype=torch.float32, device=device)
    return sums.index_add(0, seq, per_token), torch.bincount(seq, minlength=packed.n_sequences)
