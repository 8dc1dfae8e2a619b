"""README.md for the run folder: which data, which loss, which settings, what came out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from mdpo_train.losses import LOSSES

TEMPLATE = """---
library_name: peft
base_model: {{ model }}
tags: [mdpo, dpo, preference, multimodal, lora, mdpo-toolkit]
---
# MDPO {{ 'LoRA adapter' if config.finetune == 'lora' else 'fine-tune' }} of {{ model }}
{% if smoke_test %}
> **SMOKE TEST.** The base model is a tiny random-weight model built offline; these weights
> mean nothing. Never publish them as a real model.
{% endif %}
Trained with `mdpo-train` (mdpo-toolkit) on preference data whose reference log-probs were
computed once, offline, by the same base model: the reference model was never loaded.

## Data
- shards: `{{ config.shards }}` ({{ train_examples }} train / {{ eval_examples }} eval examples used)
- source: {{ build.source | default('unknown') }}; rejected image: {{ rejected_image }}; build seed {{ build.seed | default('?') }}
- reference log-probs: {{ fp.model }} ({{ fp.dtype }}, max length {{ fp.max_length }}, fingerprint `{{ fp.key }}`)
- too long for max length {{ max_length }}: {{ too_long }} train example(s) skipped by the trainer (counted each time seen){% if empty_steps %}; {{ empty_steps }} step(s) kept no example and made no update{% endif %}
{%- if spot_check %}
- spot check: {{ spot_check['values'] }} stored values recomputed, largest difference {{ '%.2g' % spot_check.max_abs_diff }}
{%- endif %}

## Loss
`{{ config.loss }}` = {{ terms | join(' + ') }} (beta {{ config.beta }}, delta {{ config.delta }}{% if config.loss_weights %}, weights {{ config.loss_weights }}{% endif %}).
r = beta (log pi - log pi_ref); DPO contrasts y_w with y_l under the image, the conditional
term contrasts the image m_w with the corrupted m_l under y_w, the anchor keeps r(y_w) above
delta. The objective is mDPO's ([arXiv 2406.11839](https://arxiv.org/abs/2406.11839)),
explained term by term in the mdpo-toolkit repository's `docs/method.md`.

## Settings
| setting | value |
| --- | --- |
{% for key, value in settings %}| {{ key }} | {{ value }} |
{% endfor %}
## Results (last logged step {{ steps }})
| metric | train | eval |
| --- | --- | --- |
{% for name in metric_names %}| {{ name }} | {{ fmt(last.train, name) }} | {{ fmt(last.eval, name) }} |
{% endfor %}
Curves: `curves.png`; every logged step: `metrics.jsonl`.

## Use
```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor
base = AutoModelForImageTextToText.from_pretrained("{{ model }}")
model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")
processor = AutoProcessor.from_pretrained("PATH/TO/THIS/FOLDER")
```
"""

SETTINGS = ("finetune", "lora_r", "lora_alpha", "lora_dropout", "lora_target", "epochs", "global_batch_size",
            "per_device_batch_size", "lr", "lr_scheduler", "warmup_ratio", "weight_decay", "adam_beta1",
            "adam_beta2", "max_grad_norm", "seed", "gradient_checkpointing", "anchor_rejected",
            "anchor_rejected_image")


def _fmt(record: dict[str, Any] | None, name: str) -> str:
    value = (record or {}).get(name)
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _memory(peak: dict[str, Any] | None) -> str:
    return f"{peak['peak_memory_gib']:.2f} GiB ({peak['peak_memory_source']})" if peak else "not measured"


def render_model_card(summary: dict[str, Any]) -> str:
    config, manifest = summary["config"], summary["manifest"]
    last = summary.get("last") or {}
    names = sorted({k for r in last.values() for k in r if "/" in k or k == "loss"})
    settings = [(k, config[k]) for k in SETTINGS] + [
        ("dtype", summary["dtype"]), ("max_length", summary["max_length"]),
        ("gradient accumulation", summary["accumulation"]), ("processes", summary["processes"]),
        ("optimizer steps", summary.get("optimizer_steps", summary["steps"])),
        ("peak memory", _memory(summary.get("memory"))),
        ("trainable parameters", f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,}"),
    ]
    fp = manifest.fingerprint
    return jinja2.Template(TEMPLATE).render(
        model=summary["model"],
        smoke_test=summary.get("smoke_test", False),
        config=config,
        build=manifest.config,
        rejected_image=manifest.rejected_image.resolved if manifest.rejected_image else "unknown",
        fp=fp,
        spot_check=summary.get("spot_check"),
        terms=LOSSES[config["loss"]] + tuple(
            t for t in ("anchor_rejected", "anchor_rejected_image") if config.get(t)
        ),
        train_examples=summary["train_examples"],
        eval_examples=summary["eval_examples"],
        settings=settings,
        steps=summary["steps"],
        max_length=summary["max_length"],
        too_long=summary.get("too_long", 0),
        empty_steps=summary["steps"] - summary.get("optimizer_steps", summary["steps"]),
        last=last,
        metric_names=names,
        fmt=_fmt,
    )


def write_model_card(directory: str | Path, summary: dict[str, Any]) -> Path:
    from mdpo_train.output import write_text

    return write_text(directory, "README.md", render_model_card(summary))
