"""Two rules the families matrix found, checked fast on the tiny models' processors (no forward):
images reach the processor nested per row, and a template whose assistant turn does not start
with its own generation prompt gets the answer scored right after that prompt."""

from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoProcessor

from mdpo_data.demo import tiny
from mdpo_data.scoring.logprobs import Sequence, encode, render, sequence_text

pytestmark = pytest.mark.filterwarnings("ignore:.*SMOKE-TEST.*")

TEMPLATES = Path(__file__).parents[1] / "chat_templates"


def test_gemma3_batch_with_and_without_images(tmp_path):
    """Gemma 3's processor reads a flat image list as ONE row's images: each row gets its own."""
    processor = AutoProcessor.from_pretrained(tiny.build_tiny_gemma3(tmp_path / "g"))
    seqs = [Sequence(Image.new("RGB", (40, 30), "red"), "What color?", "Red."),
            Sequence(None, "What color?", "Blue."),
            Sequence(Image.new("RGB", (30, 40), "blue"), "What color?", "Blue, I think.")]
    batch, kept = encode(processor, seqs)
    assert kept == [0, 1, 2]
    image_token = processor.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert (batch["input_ids"] == image_token).sum(1).tolist() == [4, 0, 4]
    assert batch["pixel_values"].shape[0] == 2


def test_onevision_answer_follows_the_generation_prompt(tmp_path):
    template = (TEMPLATES / "llava-onevision.jinja").read_text()
    processor = AutoProcessor.from_pretrained(tiny.build_tiny_llava_onevision(tmp_path / "o", chat_template=template))
    seq = Sequence(Image.new("RGB", (40, 30)), "What color?", "Red.")
    prompt, full = render(processor, seq)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>assistant \nRed." in full
    head, text = sequence_text(processor, seq)
    assert head == prompt and text == prompt + "Red.<|im_end|>"
