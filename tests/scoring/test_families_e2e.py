"""The model-families matrix: for every family a tiny offline model built from that family's own
transformers config, model and processor classes, carrying its published chat template
(tests/chat_templates/), goes through the real command lines: `mdpo-data build --ref-model DIR`
(build + score, `--system-prompt auto`), then 2 steps of `mdpo-train --loss mdpo`.

For each family:
- every stored reference column equals an independent plain unbatched forward written here
  (`plain_forward`: the published template, the processor, one fp32 log_softmax; none of the
  project's log-prob code) within 1e-4;
- the scored span is the answer text then the family's end-of-turn token, nothing after it
  (decoded from the token ids the plain forward scores, which the stored values then match);
- before the first update the policy is the reference, so every step-1 loss term is ln 2.
And docs/models.md's image-token column is what the family's processor class, configured like
the published checkpoint's, gives for a 336x336 image.

Adding a family is one entry in FAMILIES.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner
from score_fixtures import load

from mdpo_data.build.system_prompts import INTERNVL2_5, VICUNA_V1
from mdpo_data.cli import main as mdpo_data
from mdpo_data.demo import tiny
from mdpo_data.format import schema, shards
from cli_helpers import manifest_json
from mdpo_data.scoring.logprobs import decode_image
from mdpo_train.cli import main as mdpo_train
from mdpo_train.metrics import read_jsonl
from train_fixtures import one_thread

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

TEMPLATES = Path(__file__).parents[1] / "chat_templates"


@dataclass(frozen=True)
class Family:
    build: Callable[..., Path]  # (path, chat_template=...) -> model folder
    template: str  # file in tests/chat_templates/
    end_of_turn: str  # the token that must close every scored span
    folder: str  # the model folder's name (never used to detect a family: its config.json is)
    doc_row: str  # its row in docs/models.md
    published: tuple[str, dict, dict]  # the checkpoint's image processor class, its kwargs, processor kwargs
    system: str | None = None  # the system message `--system-prompt auto` stores for it
    names: tuple[tuple[str, str], ...] = ()  # (config key, base model) the published config.json records


_CLIP_336 = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
_LLAVA = {"patch_size": 14, "num_additional_image_tokens": 1, "vision_feature_select_strategy": "default"}
_QWEN2 = ("Qwen2VLImageProcessor", {"min_pixels": 3136, "max_pixels": 12845056}, {})

FAMILIES = {
    "llava-1.5": Family(tiny.build_tiny_llava, "llava-1.5.jinja", "</s>", "llava-1.5-tiny", "LLaVA-1.5",
                        ("CLIPImageProcessor", _CLIP_336, _LLAVA), VICUNA_V1,
                        (("text_config", "lmsys/vicuna-7b-v1.5"),)),
    "llava-next": Family(tiny.build_tiny_llava_next, "llava-v1.6-mistral.jinja", "</s>", "llava-v1.6-mistral-tiny",
                         "LLaVA-NeXT", ("LlavaNextImageProcessor", {**_CLIP_336, "image_grid_pinpoints": [
                             [336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]}, _LLAVA)),
    "llava-onevision": Family(tiny.build_tiny_llava_onevision, "llava-onevision.jinja", "<|im_end|>",
                              "llava-onevision-tiny", "LLaVA-OneVision", (
                                  "LlavaOnevisionImageProcessor", {"size": {"height": 384, "width": 384},
                                  "image_grid_pinpoints": [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]},
                                  {"num_image_tokens": 729, "vision_feature_select_strategy": "full",
                                   "vision_aspect_ratio": "anyres_max_9"})),
    "qwen2-vl": Family(tiny.build_tiny_qwen2_vl, "qwen2-vl.jinja", "<|im_end|>", "qwen2-vl-tiny", "Qwen2-VL", _QWEN2),
    "qwen2.5-vl": Family(tiny.build_tiny_qwen2_5_vl, "qwen2-vl.jinja", "<|im_end|>", "qwen2.5-vl-tiny", "Qwen2.5-VL",
                         _QWEN2),
    "qwen3-vl": Family(tiny.build_tiny_qwen3_vl, "qwen3-vl.jinja", "<|im_end|>", "qwen3-vl-tiny", "Qwen3-VL", (
        "Qwen2VLImageProcessor", {"patch_size": 16, "merge_size": 2,
                                  "size": {"shortest_edge": 65536, "longest_edge": 16777216}}, {})),
    "idefics3-smolvlm": Family(tiny.build_tiny_idefics3, "smolvlm.jinja", "<end_of_utterance>", "smolvlm-tiny",
                               "Idefics3 / SmolVLM", ("Idefics3ImageProcessor", {
                                   "size": {"longest_edge": 1536}, "max_image_size": {"longest_edge": 384},
                                   "do_image_splitting": True}, {"image_seq_len": 81})),
    "internvl": Family(tiny.build_tiny_internvl, "internvl.jinja", "<|im_end|>", "internvl3-tiny", "InternVL", (
        "GotOcr2ImageProcessor", {"size": {"height": 448, "width": 448}, "crop_to_patches": True,
                                  "min_patches": 1, "max_patches": 12}, {"image_seq_length": 256}), INTERNVL2_5,
                       (("", "OpenGVLab/InternVL3-1B-hf"),)),
    "gemma-3": Family(tiny.build_tiny_gemma3, "gemma-3.jinja", "<end_of_turn>", "gemma-3-tiny", "Gemma 3", (
        "Gemma3ImageProcessor", {"size": {"height": 896, "width": 896}, "do_pan_and_scan": False},
        {"image_seq_length": 256})),
    "mistral3": Family(tiny.build_tiny_mistral3, "mistral-small-3.1.jinja", "</s>", "mistral-small-3.1-tiny",
                       "Mistral 3", ("PixtralImageProcessor", {"size": {"longest_edge": 1540},
                                     "patch_size": {"height": 14, "width": 14}},
                                     {"patch_size": 14, "spatial_merge_size": 2})),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def built(request, tmp_path_factory):
    """(family name, its tiny model folder, built once for this module's tests)."""
    family = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(request.param) / family.folder
    model = family.build(folder, chat_template=(TEMPLATES / family.template).read_text())
    if family.names:  # what a downloaded checkpoint's config.json says about its base model
        path = model / "config.json"
        config = json.loads(path.read_text())
        for key, name in family.names:
            (config[key] if key else config)["_name_or_path"] = name
        path.write_text(json.dumps(config, indent=2))
    return request.param, model


def plain_forward(model, processor, prompt: list[dict], image, response: str, end_of_turn: str):
    """(log-prob, scored token ids): one unbatched forward over the rendered prompt, the
    response text and `end_of_turn`, with the image, full fp32 log_softmax.

    The text before the response is what the published template renders up to the answer's
    first character (or, where the template's assistant turn does not start with its own
    generation prompt, that generation prompt: what the model sees when it answers); the scored tokens are those after the longest common token prefix of
    that head and the whole text (a token merging template whitespace into the first word,
    "ĠThe", is the answer's).
    """
    if image is None:
        prompt = [{**m, "content": [b for b in m["content"] if b["type"] != "image"]} for m in prompt]
    answer = [{"role": "assistant", "content": [{"type": "text", "text": response}]}]
    generation = processor.apply_chat_template(prompt, add_generation_prompt=True)
    conversation = processor.apply_chat_template(prompt + answer)
    if conversation.startswith(generation):
        head = conversation[: conversation.index(response.strip(), len(generation))]
    else:  # LLaVA-OneVision: "assistant \n" in the turn, "assistant\n" when generating
        head = generation
    images = None if image is None else [image]
    tokenizer = processor.tokenizer
    special = not (tokenizer.bos_token and head.startswith(tokenizer.bos_token))
    inputs = processor(text=[head + response.strip() + end_of_turn], images=images,
                       add_special_tokens=special, return_tensors="pt")
    head_ids = processor(text=[head], images=images, add_special_tokens=special,
                         return_tensors="pt")["input_ids"][0].tolist()
    ids = inputs["input_ids"][0].tolist()
    start = next((i for i, (a, b) in enumerate(zip(ids, head_ids)) if a != b), min(len(ids), len(head_ids)))
    with torch.no_grad():
        logp = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids))), ids[start:]


REFERENCE = {  # stored column -> (image column, response column)
    schema.REF_CHOSEN: ("images", "chosen"),
    schema.REF_REJECTED: ("images", "rejected"),
    schema.REF_CHOSEN_REJECTED_IMAGE: ("rejected_images", "chosen"),
    schema.REF_CHOSEN_NO_IMAGE: (None, "chosen"),
    schema.REF_REJECTED_NO_IMAGE: (None, "rejected"),
}
TOKENS = {schema.REF_CHOSEN: schema.CHOSEN_TOKENS, schema.REF_REJECTED: schema.REJECTED_TOKENS}


def _invoke(command, args):
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_build_score_train_two_steps(built, tmp_path):
    name, model_dir = built
    family = FAMILIES[name]
    data, run = tmp_path / "data", tmp_path / "run"
    with one_thread():
        _invoke(mdpo_data, ["build", "--source", "demo", "--n", 4, "--seed", 0, "--ref-model", model_dir,
                            "--no-image-logps", "--quiet", "--out", data])
        _invoke(mdpo_train, ["--shards", data, "--output-dir", run, "--max-steps", 2,
                             "--global-batch-size", 2, "--per-device-batch-size", 2, "--lora-r", 4,
                             "--lora-alpha", 8, "--lr", 1e-3, "--save-steps", 0, "--spot-check-rows", 2,
                             "--no-progress"])

    model, processor = load(model_dir)
    eot_id = processor.tokenizer.convert_tokens_to_ids(family.end_of_turn)
    rows = [r for f in shards.shard_files(data, "train") for r in shards.read_shard(f).to_pylist()]
    assert len(rows) == 4
    for row in rows:
        assert schema.system_of(row["prompt"]) == family.system
        for column, (image_column, response_column) in REFERENCE.items():
            response = schema.text_of(row[response_column])
            image = decode_image(row[image_column][0]["bytes"]) if image_column else None
            want, ids = plain_forward(model, processor, row["prompt"], image, response, family.end_of_turn)
            assert ids[-1] == eot_id and eot_id not in ids[:-1], (column, ids)
            assert processor.tokenizer.decode(ids[:-1]).strip() == response.strip(), column
            assert row[column] == pytest.approx(want, abs=1e-4), (name, column)
            if column in TOKENS:
                assert row[TOKENS[column]] == len(ids), column

    reference = manifest_json(data)["reference"]
    assert reference["rows_scored"] == 4 and not any(reference["skipped"].values())
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    terms = {k: v for k, v in steps[0].items() if k.startswith("loss/")}
    assert set(terms) == {"loss/dpo", "loss/conditional", "loss/anchor"}
    for term, value in terms.items():
        assert value == pytest.approx(math.log(2), abs=1e-4), term


def image_tokens_336(model_dir: Path, published: tuple[str, dict, dict]) -> tuple[int, int]:
    """(positions holding image features, all positions the image adds) for one 336x336 image,
    with the family's processor class configured like the published checkpoint's."""
    import json

    import transformers
    from PIL import Image
    from transformers import AutoProcessor

    image_class, image_kwargs, processor_kwargs = published
    processor = AutoProcessor.from_pretrained(model_dir)
    parts = {name: getattr(processor, name) for name in processor.get_attributes()}
    parts["image_processor"] = getattr(transformers, image_class)(**image_kwargs)
    processor = type(processor)(**parts, chat_template=processor.chat_template, **processor_kwargs)
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    without = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(with_image, add_generation_prompt=True)
    bare = processor.apply_chat_template(without, add_generation_prompt=True)
    special = not (processor.tokenizer.bos_token and text.startswith(processor.tokenizer.bos_token))
    ids = processor(text=[text], images=[[Image.new("RGB", (336, 336), (90, 90, 90))]],
                    add_special_tokens=special)["input_ids"][0]
    config = json.loads((model_dir / "config.json").read_text())
    image_id = config.get("image_token_id", config.get("image_token_index"))
    bare_ids = processor.tokenizer(bare, add_special_tokens=special)["input_ids"]
    return sum(1 for t in ids if t == image_id), len(ids) - len(bare_ids)


def test_image_tokens_336_match_docs(built):
    """docs/models.md's image-token column is what the family's processor gives today."""
    name, model_dir = built
    family = FAMILIES[name]
    features, added = image_tokens_336(model_dir, family.published)
    table = (Path(__file__).parents[2] / "docs" / "models.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith(f"| {family.doc_row} |"))
    cell = row.split(" | ")[5]
    assert cell.startswith(str(features)), (name, features, cell)
    assert added == features or f"({added}" in cell, (name, added, cell)
