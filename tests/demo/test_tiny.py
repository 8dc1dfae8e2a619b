"""The built-in tiny models: deterministic, loadable like Hub checkpoints, labelled, trainable."""

import hashlib
import json

import pytest
import torch
from PIL import Image
from score_fixtures import load

from mdpo_data.demo import tiny
from mdpo_data.scoring.logprobs import Sequence, encode, response_logps

pytestmark = pytest.mark.filterwarnings("ignore:.*SMOKE-TEST.*")


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return tiny.build_tiny_llava(tmp_path_factory.mktemp("llava"))


def test_same_seed_same_files_other_seed_other_weights(llava_dir, tmp_path):
    again = _digests(tiny.build_tiny_llava(tmp_path / "again"))
    assert again == _digests(llava_dir)
    other = _digests(tiny.build_tiny_llava(tmp_path / "other", seed=1))
    assert other["model.safetensors"] != again["model.safetensors"]
    assert other["tokenizer.json"] == again["tokenizer.json"]


def test_loads_like_a_checkpoint_and_is_labelled(llava_dir):
    model, processor = load(llava_dir)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert tiny.is_smoke_test_model(model)
    assert json.loads((llava_dir / "config.json").read_text())["mdpo_smoke_test_name"] == tiny.SMOKE_TEST_NAME
    assert "SMOKE-TEST" in (llava_dir / "README.md").read_text()
    params = sum(p.numel() for p in model.parameters())
    assert 300_000 < params < 5_000_000
    # the demo vocabulary is in the tokenizer: whole words, not byte soup
    for word in ["red", "circle", "triangle", "seven", "hexagon"]:
        assert len(processor.tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize(("kwargs", "tokens"), [({}, 16), ({"image_size": 128, "patch_size": 16}, 64)])
def test_image_token_count(tmp_path, kwargs, tokens):
    _, processor = load(tiny.build_tiny_llava(tmp_path / "m", **kwargs))
    batch, _ = encode(processor, [Sequence(Image.new("RGB", (40, 30)), "What shape?", "A star.")])
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == tokens


def test_qwen2_vl_builds_and_loads(tmp_path):
    model, processor = load(tiny.build_tiny_qwen2_vl(tmp_path / "q"))
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and tiny.is_smoke_test_model(model)


def test_cache_builds_once_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("MDPO_CACHE", str(tmp_path))
    path = tiny.tiny_model_path()
    assert path == tmp_path / f"tiny-llava-{tiny.TINY_LLAVA_VERSION}" and (path / "config.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.tiny_model_path() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folders left


@pytest.mark.slow
def test_a_loss_can_fall(llava_dir):
    """Big enough for the demo training test: a few steps raise a response's log-prob."""
    model, processor = load(llava_dir)
    model.train()
    seqs = [Sequence(Image.new("RGB", (32, 32), color), "What color is the circle?", f"The circle is {name}.")
            for color, name in [((255, 0, 0), "red"), ((0, 0, 255), "blue")]]
    batch, _ = encode(processor, seqs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        sums, counts = response_logps(model, batch)
        loss = -(sums / counts).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
