"""The response rule on the chat templates real checkpoints ship (tests/chat_templates/).

Each template is set on a tiny LLaVA whose tokenizer has that family's special tokens (and
whose image placeholder is that family's image token), so the rendered text, the tokens
scored and the log-prob are real. For every family: the exact tokens scored for one example
are the response text then the end-of-turn token, nothing else; and the scorer equals an
independent unbatched forward over prompt + response + end-of-turn within 1e-4.
"""

from pathlib import Path

import pytest
from PIL import Image
from score_fixtures import load, manual_logp

from mdpo_data.scoring import logprobs
from mdpo_data.scoring.logprobs import Sequence, encode, sequence_logps
from mdpo_data.demo.tiny import build_tiny_llava

TEMPLATES = Path(__file__).parents[1] / "chat_templates"
VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions.")

_LLAMA = {"special": ["<unk>", "<s>", "</s>", "<pad>", "<image>"], "bos": "<s>", "eos": "</s>",
          "pad": "<pad>", "image": "<image>", "unk": "<unk>"}
_QWEN = {"special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                     "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
         "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "image": "<|image_pad|>"}
_SMOLVLM = {"special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>",
                        "<image>", "<end_of_utterance>", "<global-img>"],
            "bos": "<|im_start|>", "eos": "<end_of_utterance>", "pad": "<|im_end|>", "image": "<image>"}
_GEMMA = {"special": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                      "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
          "bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "image": "<start_of_image>", "unk": "<unk>"}

# family: (template file, tokens, end-of-turn, exact tokens scored for EXAMPLE)
FAMILIES = {
    "llava-1.5": ("llava-1.5", _LLAMA, "</s>"),
    "llava-v1.6-vicuna": ("llava-1.5", _LLAMA, "</s>"),
    "llava-v1.6-mistral": ("llava-v1.6-mistral", _LLAMA, "</s>"),
    "llava-v1.6-mistral-legacy": ("llava-v1.6-mistral-legacy", _LLAMA, "</s>"),
    "qwen2-vl": ("qwen2-vl", _QWEN, "<|im_end|>"),
    "qwen2.5-vl": ("qwen2-vl", _QWEN, "<|im_end|>"),
    "idefics3-smolvlm": ("smolvlm", _SMOLVLM, "<end_of_utterance>"),
    "gemma-3": ("gemma-3", _GEMMA, "<end_of_turn>"),
}
# The exact token strings scored for "The circle is red." (byte-level BPE: "Ġ" is a space).
# Where the template puts a space before the text it merges into the first word ("ĠThe");
# where it starts the text on a fresh line/turn it does not ("The").
SPACE_BEFORE = {"llava-1.5", "llava-v1.6-vicuna", "llava-v1.6-mistral", "llava-v1.6-mistral-legacy",
                "idefics3-smolvlm"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    template, tokens, eot = FAMILIES[request.param]
    path = build_tiny_llava(tmp_path_factory.mktemp(request.param), tokens=tokens,
                            chat_template=(TEMPLATES / f"{template}.jinja").read_text())
    model, processor = load(path)
    return request.param, model, processor, eot


def _example(system=None):
    return Sequence(Image.new("RGB", (40, 30), (200, 30, 30)), "What color is the circle?",
                    "The circle is red.", system)


def _scored_tokens(processor, seq):
    batch, _ = encode(processor, [seq])
    ids = batch["input_ids"][0][batch["response_mask"][0]]
    return processor.tokenizer.convert_ids_to_tokens(ids.tolist())


@pytest.mark.parametrize("system", [None, VICUNA])
def test_exact_tokens_scored_are_text_then_end_of_turn(family, system):
    name, _, processor, eot = family
    first = "ĠThe" if name in SPACE_BEFORE else "The"
    assert logprobs.end_of_turn(processor) == eot
    assert _scored_tokens(processor, _example(system)) == [first, "Ġcircle", "Ġis", "Ġred", ".", eot]


@pytest.mark.slow
@pytest.mark.parametrize("system", [None, VICUNA])
def test_scorer_equals_plain_unbatched_forward(family, system):
    name, model, processor, eot = family
    seqs = [_example(system),
            Sequence(Image.new("RGB", (50, 60), (10, 200, 40)), "How many shapes are there?",
                     "There are three green squares.", system),
            Sequence(None, "Is there a circle?", "Yes.", system)]
    got = sequence_logps(model, processor, seqs, batch_size=3)
    for seq, (value, count) in zip(seqs, got):
        want, want_count = manual_logp(model, processor, seq.image, seq.question, seq.response,
                                       system=system, end_of_turn=eot)
        assert count == want_count
        assert value == pytest.approx(want, abs=1e-4)


def test_system_prompt_is_in_the_scored_sequence(family):
    _, _, processor, _ = family
    batch, _ = encode(processor, [_example(VICUNA)])
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert "curious user" in text


def test_generation_marks_bound_the_text_where_the_template_has_them(family):
    name, _, processor, _ = family
    seq = _example()
    prompt, full = logprobs.render(processor, seq)
    span = logprobs._generation_span(processor, seq, full)
    if name in ("llava-1.5", "llava-v1.6-vicuna"):  # {% generation %}{{ text + ' ' }}{% endgeneration %}
        assert full[span[0]:span[1]] == "The circle is red. "
    else:
        assert span is None
