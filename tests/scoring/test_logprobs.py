"""The one log-prob function: equal to an independent unbatched forward, whatever the batching."""

import random

import pytest
import torch
from PIL import Image
from score_fixtures import manual_logp

from mdpo_data.scoring import logprobs, packing

from mdpo_data.format import schema
from mdpo_data.scoring.logprobs import PrefixGroup, Sequence, encode, response_logps, sequence_logps

TOL = 1e-4


def _sequences():
    sizes = [(56, 56), (112, 56), (84, 84), (60, 40)]
    seqs = []
    for i in range(6):
        image = Image.new("RGB", sizes[i % 4], (40 * i, 200 - 30 * i, 90))
        seqs.append(Sequence(image, "What color is the circle?" + " Answer briefly." * (i % 3),
                             "The circle is red." + " It is large." * i))
    seqs.append(Sequence(None, "How many shapes are there?", "There are three blue squares."))
    seqs.append(Sequence(Image.new("RGBA", (50, 50), (0, 0, 200, 100)), "Shape?", "A star."))
    return seqs


@pytest.fixture(scope="module", params=["llava", "qwen"])
def setup(request, llava, qwen):
    model, processor = llava if request.param == "llava" else qwen
    seqs = _sequences()
    expected = [manual_logp(model, processor, s.image, s.question, s.response) for s in seqs]
    return model, processor, seqs, expected


def _assert_close(got, expected):
    for (value, count), (want, want_count) in zip(got, expected):
        assert count == want_count
        assert value == pytest.approx(want, abs=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_equals_unbatched_forward(setup, batch_size, padding_side):
    model, processor, seqs, expected = setup
    processor.tokenizer.padding_side = padding_side
    try:
        _assert_close(sequence_logps(model, processor, seqs, batch_size=batch_size), expected)
    finally:
        processor.tokenizer.padding_side = "right"


def test_batch_composition_does_not_matter(setup):
    model, processor, seqs, expected = setup
    order = list(range(len(seqs)))
    random.Random(0).shuffle(order)
    got = sequence_logps(model, processor, [seqs[i] for i in order], batch_size=4)
    _assert_close(got, [expected[i] for i in order])


def test_response_mask_covers_exactly_the_response_and_end_of_turn(llava):
    model, processor = llava
    seqs = _sequences()[:3]
    batch, kept = encode(processor, seqs)
    assert kept == [0, 1, 2]
    for row, seq in enumerate(seqs):
        text = processor.tokenizer.decode(batch["input_ids"][row][batch["response_mask"][row]])
        assert text == " " + seq.response + "</s>"  # " The" is one token: the text's first word


def test_qwen_response_tokens_include_end_of_turn(qwen):
    model, processor = qwen
    batch, _ = encode(processor, _sequences()[:1])
    text = processor.tokenizer.decode(batch["input_ids"][0][batch["response_mask"][0]])
    assert text == "The circle is red.<|im_end|>"  # the template's trailing newline is not scored


def test_qwen_image_token_count_depends_on_image_size(qwen):
    _, processor = qwen
    small = Sequence(Image.new("RGB", (56, 56)), "q?", "a.")
    wide = Sequence(Image.new("RGB", (112, 56)), "q?", "a.")
    batch, _ = encode(processor, [small, wide])
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    counts = (batch["input_ids"] == image_id).sum(1).tolist()
    assert counts[0] < counts[1]


def test_too_long_sequences_are_dropped_not_truncated(setup):
    model, processor, seqs, expected = setup
    lengths = [int(encode(processor, [s])[0]["attention_mask"].sum()) for s in seqs]
    limit = sorted(lengths)[len(lengths) // 2]
    batch, kept = encode(processor, seqs, max_length=limit)
    assert kept == [i for i, n in enumerate(lengths) if n <= limit]
    assert int(batch["attention_mask"].sum(1).max()) <= limit
    got = sequence_logps(model, processor, seqs, max_length=limit, batch_size=3)
    for i, value in enumerate(got):
        if i in kept:
            assert value[0] == pytest.approx(expected[i][0], abs=TOL)
        else:
            assert value is None
    assert encode(processor, seqs, max_length=1) == ({}, [])


def test_gradients_flow_for_the_trainer(llava):
    model, processor = llava
    batch, _ = encode(processor, _sequences()[:2])
    model.zero_grad()
    sums, counts = response_logps(model, batch)
    assert sums.dtype == torch.float32 and sums.requires_grad
    sums.sum().backward()
    lm_head = model.get_output_embeddings().weight
    assert lm_head.grad is not None and lm_head.grad.abs().sum() > 0
    model.zero_grad()


def test_token_logps_matches_log_softmax():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 50, generator=generator).to(torch.bfloat16)  # > one chunk
    targets = torch.randint(0, 50, (3000,), generator=generator)
    want = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]).squeeze(1)
    got = logprobs.token_logps(logits, targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_prefix_reuse_equals_plain_path_on_llava(llava):
    model, processor = llava
    seqs = _sequences()
    groups = [PrefixGroup(s.image, s.question, (s.response, "No, it is a blue square.")) for s in seqs[:5]]
    groups.append(PrefixGroup(seqs[6].image, seqs[6].question, (seqs[6].response,)))
    flat = [seq for g in groups for seq in g.sequences()]
    plain = sequence_logps(model, processor, flat, batch_size=len(flat))
    with torch.inference_mode():
        values, counts = packing.prefix_response_logps(model, processor, groups)
    _assert_close([v for group in values for v in group], plain)
    batch = encode(processor, flat)[0]
    assert counts["tokens"] == int(batch["attention_mask"].sum())
    assert counts["slots"] < batch["input_ids"].numel()  # the shared prefixes ran once
    with pytest.raises(logprobs.PrefixReuseError):
        packing.prefix_response_logps(model, processor, groups, max_length=10)


def test_prefix_reuse_support(llava, qwen):
    assert logprobs.prefix_reuse_support(llava[0])[0] is True
    supported, reason = logprobs.prefix_reuse_support(qwen[0])
    assert supported is True and "3-D M-RoPE positions restarted per response" in reason
    qwen[0].config.model_type = "glm4v"  # M-RoPE of a family whose packed rows are untested
    try:
        supported, reason = logprobs.prefix_reuse_support(qwen[0])
    finally:
        qwen[0].config.model_type = "qwen2_vl"
    assert supported is False and "M-RoPE" in reason and "qwen2_vl" in reason


def test_row_sequences_storage_and_decoded_rows_agree(llava):
    from score_fixtures import make_row

    model, processor = llava
    row = make_row(4)
    storage = logprobs.row_sequences(row, no_image=True)
    decoded = dict(row, images=[logprobs.decode_image(row["images"][0]["bytes"])],
                   rejected_images=[logprobs.decode_image(row["rejected_images"][0]["bytes"])])
    from_decoded = logprobs.row_sequences(decoded, no_image=True)
    assert list(storage) == [schema.REF_CHOSEN, schema.REF_REJECTED, schema.REF_CHOSEN_REJECTED_IMAGE,
                             schema.REF_CHOSEN_NO_IMAGE, schema.REF_REJECTED_NO_IMAGE]
    a = sequence_logps(model, processor, list(storage.values()))
    b = sequence_logps(model, processor, list(from_decoded.values()))
    assert a == b


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert logprobs.to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_missing_chat_template_is_a_clear_error(llava):
    _, processor = llava
    template = processor.chat_template
    processor.chat_template = None
    try:
        with pytest.raises(ValueError, match="no chat template"):
            encode(processor, _sequences()[:1])
    finally:
        processor.chat_template = template


def test_encode_right_pads_and_response_logps_accepts_left_padding(llava):
    model, processor = llava
    seqs = _sequences()[:4]
    processor.tokenizer.padding_side = "left"
    try:
        batch, _ = encode(processor, seqs)
    finally:
        processor.tokenizer.padding_side = "right"
    assert bool(batch["attention_mask"][:, 0].all())  # right-padded regardless of the tokenizer
    lengths = batch["attention_mask"].sum(1)
    width = batch["input_ids"].shape[1]
    left = dict(batch)
    for key in ("input_ids", "attention_mask", "response_mask"):
        left[key] = torch.stack([row.roll(int(width - n)) for row, n in zip(batch[key], lengths)])
    assert not bool(left["attention_mask"][:, 0].all())
    with torch.inference_mode():
        right_sums, right_counts = response_logps(model, batch)
        left_sums, left_counts = response_logps(model, left)
    assert torch.equal(right_counts, left_counts)
    torch.testing.assert_close(left_sums, right_sums, atol=TOL, rtol=0)
