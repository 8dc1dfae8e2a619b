"""The policy: the scoring model, with LoRA on (or full training of) its language model only.

The vision tower and the projector stay frozen, as in the paper. The language model is found
by module path: transformers' `get_decoder()` (LLaVA, Qwen2-VL, Idefics3, ... all answer it),
then every linear layer under it, minus anything whose path names a vision part (some
remote-code models keep the vision tower inside the decoder module). `lm_head` is left out.
"""

from __future__ import annotations

import torch

from mdpo_train.config import TrainConfig

# Path components of the vision side across common VLM implementations.
VISION_PARTS = frozenset({
    "vision_tower", "visual", "vision_model", "vision_encoder", "vision", "multi_modal_projector",
    "mm_projector", "merger", "image_newline", "connector", "resampler", "perceiver",
})


def language_model_prefix(model: torch.nn.Module) -> str:
    """Module path of the language model ("" when the model is its own decoder)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else model
    for name, module in model.named_modules():
        if module is decoder:
            return name
    return ""


def language_model_linear_names(model: torch.nn.Module, only: list[str] | None = None) -> list[str]:
    """Full names of the language model's linear layers (optionally only those whose last
    path component is in `only`, e.g. ["q_proj", "v_proj"])."""
    prefix = language_model_prefix(model)
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if not isinstance(module, torch.nn.Linear) or VISION_PARTS.intersection(parts):
            continue
        if prefix and not name.startswith(prefix + "."):
            continue
        if name == "lm_head" or parts[-1] == "lm_head" or (only and parts[-1] not in only):
            continue
        names.append(name)
    if not names:
        raise ValueError(
            f"found no linear layers in the language model of {type(model).__name__} "
            f"(prefix {prefix!r}, filter {only}); set --lora-target to its layer names"
        )
    return names


def add_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Wrap with peft LoRA adapters on the language model's linear layers; all else frozen."""
    from peft import LoraConfig, get_peft_model

    targets = language_model_linear_names(model, cfg.lora_target)
    config = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets
    )
    return get_peft_model(model, config)


def unfreeze_language_model(model: torch.nn.Module) -> torch.nn.Module:
    """Full fine-tuning: train the language model (and lm_head); vision side frozen."""
    prefix = language_model_prefix(model)
    for name, param in model.named_parameters():
        parts = name.split(".")
        in_lm = (not prefix or name.startswith(prefix + ".")) and not VISION_PARTS.intersection(parts)
        param.requires_grad_(in_lm or parts[0] == "lm_head")
    return model


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in the backward. Non-reentrant checkpointing needs no input grads,
    so frozen embeddings are fine. (transformers >= 5.x renamed the method.)"""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def make_policy(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """The trainable policy from the loaded scoring model (after the spot check)."""
    model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    model = add_lora(model, cfg) if cfg.finetune == "lora" else unfreeze_language_model(model)
    model.train()
    return model


def prefix_sharing_support(model: torch.nn.Module) -> tuple[bool, str]:
    """Whether y_w and y_l can share one row (4-D block mask + position ids restarted per
    response, 3-D for M-RoPE models), and why:
    the scorer's own check, so both run the same rows or both fall back."""
    from mdpo_data.scoring.logprobs import prefix_reuse_support

    return prefix_reuse_support(model)


def sharing_difference(model: torch.nn.Module, processor, rows: list, sequences: tuple[str, ...],
                       no_image: bool = False) -> float:
    """Largest |log-prob difference| between shared and separate rows for `rows` (start-up check)."""
    from mdpo_data.scoring.logprobs import packed_logps
    from mdpo_train.data import pack_rows

    with torch.inference_mode():
        shared, _ = packed_logps(model, pack_rows(rows, processor, sequences, share=True, no_image=no_image))
        separate, _ = packed_logps(model, pack_rows(rows, processor, sequences, share=False, no_image=no_image))
    return float((shared - separate).abs().max())


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in trainable_parameters(model).values()), total
