"""load_model and fingerprint: stable across loads, sensitive to what changes log-probs."""

import inspect
import json

import pytest

from mdpo_data.scoring import models
from mdpo_data.scoring.logprobs import TRUNCATION_RULE
from mdpo_data.scoring.models import ModelLoadError, fingerprint, load_model
from mdpo_data.demo.tiny import TINY_LLAVA_VERSION, build_tiny_llava

pytestmark = pytest.mark.filterwarnings("ignore:.*SMOKE-TEST.*")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava"))


def _fp(path, model, processor, **overrides):
    settings = {"dtype": "float32", "max_length": 2048, "truncation_rule": TRUNCATION_RULE, **overrides}
    return fingerprint(str(path), model, processor, **settings)


def test_fingerprint_stable_across_loads_and_paths(llava_dir, tmp_path):
    first = _fp(llava_dir, *load_model(str(llava_dir), dtype="float32"))
    second = _fp(llava_dir, *load_model(str(llava_dir), dtype="float32"))
    assert first == second
    moved = tmp_path / "moved"
    moved.symlink_to(llava_dir, target_is_directory=True)
    third = _fp(moved, *load_model(str(moved), dtype="float32"))
    assert third["key"] == first["key"] and third["model"] != first["model"]  # keyed by weights
    assert first["weights"].startswith("sha256:") and first["versions"]["transformers"]
    assert first["smoke_test"] is True


def test_fingerprint_changes_with_dtype_length_template_and_weights(llava_dir, tmp_path):
    model, processor = load_model(str(llava_dir), dtype="float32")
    base = _fp(llava_dir, model, processor)
    assert _fp(llava_dir, model, processor, dtype="bfloat16")["key"] != base["key"]
    assert _fp(llava_dir, model, processor, max_length=1024)["key"] != base["key"]
    assert _fp(llava_dir, model, processor, max_length=1024)["model_key"] == base["model_key"]
    processor.chat_template = processor.chat_template.replace("ASSISTANT:", "BOT:")
    changed = _fp(llava_dir, model, processor)
    assert changed["key"] != base["key"] and changed["model_key"] != base["model_key"]
    other = build_tiny_llava(tmp_path / "other", seed=1)
    assert _fp(other, *load_model(str(other)))["model_key"] != base["model_key"]


def test_dtype_and_device_resolution(llava_dir):
    model, _ = load_model(str(llava_dir), dtype="bfloat16")
    assert str(model.dtype) == "torch.bfloat16" and model.device.type == "cpu"
    assert models.resolve_dtype("auto", "cpu") == "float32"
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        models.resolve_dtype("fp8", "cpu")


def test_smoke_test_model_warns(llava_dir):
    with pytest.warns(UserWarning, match="SMOKE-TEST"):
        load_model(str(llava_dir))


def test_tiny_alias_uses_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MDPO_CACHE", str(tmp_path))
    assert models.resolve_model("tiny") == str(tmp_path / f"tiny-llava-{TINY_LLAVA_VERSION}")
    assert models.resolve_model("org/model") == "org/model"


def test_missing_models_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model(str(tmp_path / "absent"))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path))


def test_remote_code_is_not_run_unless_asked(tmp_path):
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    sentinel = tmp_path / "ran.txt"
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mdpo-custom-test",
        "auto_map": {"AutoConfig": "custom_code.CustomConfig",
                     "AutoProcessor": "custom_code.CustomProcessor",
                     "AutoModelForImageTextToText": "custom_code.CustomModel"},
    }))
    (folder / "custom_code.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelLoadError, match="trust-remote-code"):
        load_model(str(folder))
    assert not sentinel.exists()
