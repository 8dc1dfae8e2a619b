"""The policy: LoRA on the language model's linear layers only, found by module path on two
architectures (LLaVA, Qwen2-VL); full fine-tuning keeps the vision side frozen; lr schedule."""

import math

import pytest
import torch

from mdpo_data.demo.tiny import build_tiny_llava, build_tiny_qwen2_vl
from mdpo_train.config import TrainConfig
from mdpo_train.model import language_model_linear_names, make_policy, trainable_parameters
from mdpo_train.optim import lr_factor, make_optimizer, warmup_steps

VISION = ("vision_tower", "visual", "multi_modal_projector", "merger")


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def base_path(request, tmp_path_factory):
    build = {"llava": build_tiny_llava, "qwen2_vl": build_tiny_qwen2_vl}[request.param]
    return build(tmp_path_factory.mktemp(request.param) / "model", seed=0)


def load(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path)


def test_lora_targets_are_the_language_models_linear_layers(base_path):
    model = load(base_path)
    names = language_model_linear_names(model)
    assert len(names) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(n.startswith("model.language_model.layers.") for n in names)
    assert not any(part in n for n in names for part in VISION) and "lm_head" not in names
    assert {n.rsplit(".", 1)[1] for n in language_model_linear_names(model, ["q_proj", "v_proj"])} == {"q_proj", "v_proj"}


def test_lora_policy_trains_adapters_only_and_starts_equal_to_the_reference(base_path):
    model = load(base_path).eval()
    input_ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        before = model(input_ids=input_ids).logits
    policy = make_policy(model, TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0))
    trainable = trainable_parameters(policy)
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert not any(part in n for n, _ in policy.named_modules() if "lora_" in n for part in VISION)
    policy.eval()
    with torch.no_grad():  # LoRA's B starts at zero: before training, policy == reference
        assert torch.allclose(policy(input_ids=input_ids).logits, before, atol=1e-6)


def test_full_finetuning_keeps_vision_tower_and_projector_frozen(base_path):
    policy = make_policy(load(base_path), TrainConfig(finetune="full"))
    trainable = trainable_parameters(policy)
    assert any(n.startswith("model.language_model.") for n in trainable)
    assert not any(part in n for n in trainable for part in VISION)
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    assert any(part in n for n in frozen for part in VISION)


def test_weight_decay_applies_to_matrices_only(base_path):
    policy = make_policy(load(base_path), TrainConfig(finetune="full", weight_decay=0.05))
    optimizer = make_optimizer(trainable_parameters(policy), TrainConfig(weight_decay=0.05, adam_beta2=0.98))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim < 2 for p in plain["params"])
    assert decayed["betas"] == (0.9, 0.98)


def test_lr_schedule_warms_up_then_follows_a_cosine_to_zero():
    total, warmup = 100, warmup_steps(100, 0.1)
    assert warmup == 10
    assert lr_factor(0, total, warmup) == pytest.approx(1 / 11)  # the first step already moves
    assert lr_factor(9, total, warmup) == pytest.approx(10 / 11)
    assert lr_factor(10, total, warmup) == 1.0
    assert lr_factor(55, total, warmup) == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(100, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, total, warmup, "linear") == pytest.approx(0.5)
    assert lr_factor(99, total, warmup, "constant") == 1.0
    assert all(lr_factor(s, total, warmup) >= lr_factor(s + 1, total, warmup) for s in range(10, 100))
    assert not math.isnan(lr_factor(0, 1, 0))
