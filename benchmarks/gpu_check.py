"""Every GPU figure the project needs, in one command (issue 18): scoring and MDPO training at 7B.

    python benchmarks/gpu_check.py --out gpu_check            # one H100/H200, <= 8 minutes
    python benchmarks/gpu_check.py --smoke --out /tmp/smoke   # same code, tiny geometry, CPU

Models: LLaVA-1.5-7B and Qwen2.5-VL-7B from their published configs (written below; nothing is
downloaded), random weights in bf16 (weights never change speed), on the tiny tokenizer and
processor of `mdpo_data.demo.tiny` (vocabulary rows widened to the published size).
Per family, in this order, each step skipped with a recorded reason when the budget is spent:
  score      512 demo rows with `mdpo-data score`'s code (sdpa, packed rows): tokens/s, MFU,
             peak memory, micro-batch
  kernels    a subset again: packed with sdpa (4-D mask) / flex_attention (BlockMask) / eager,
             and naive (arrival order, no prefix sharing)
  exactness  bf16 max |packed - separate| per log-prob column, next to the noise of two
             separate runs with different batch compositions (the target's yardstick)
  train      30 steps of mdpo, LoRA r 64, global batch 32, largest micro-batch that fits,
             gradient checkpointing on and off, and TRL's DPOTrainer on the same model and data
MFU = (2 x parameters x tokens + attention) / seconds / the device's dense bf16 peak (table
below by device name, or --peak-tflops). Writes OUT/gpu_check.json and OUT/gpu_check.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import PeakMemory  # noqa: E402 - sibling benchmark script

# --------------------------------------------------------------------------- published configs
LLAVA_15_7B = {  # llava-hf/llava-1.5-7b-hf config.json (Vicuna-7B v1.5 + CLIP ViT-L/14-336)
    "model_type": "llava", "image_token_index": 32000, "projector_hidden_act": "gelu",
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "tie_word_embeddings": False,
    "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                      "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768},
}
QWEN25_VL_7B = {  # Qwen/Qwen2.5-VL-7B-Instruct config.json
    "model_type": "qwen2_5_vl", "tie_word_embeddings": False,
    "text_config": {"model_type": "qwen2_5_vl_text", "vocab_size": 152064, "hidden_size": 3584,
                    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                    "num_key_value_heads": 4, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
                    "hidden_act": "silu", "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                                              "mrope_section": [16, 24, 24]}},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2},
}
# --smoke: the same classes with a tiny geometry (CPU, seconds).
SMOKE_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}
SMOKE_VISION = {"llava": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "projection_dim": 32},
                "qwen2_5_vl": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                               "out_hidden_size": 64, "window_size": 56, "fullatt_block_indexes": [1]}}
FAMILIES = {"llava-1.5-7b": LLAVA_15_7B, "qwen2.5-vl-7b": QWEN25_VL_7B}
# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, no sparsity), matched by name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10": 125.0, "RTX 4090": 165.0, "B200": 2250.0}
ATTENTIONS = ("sdpa", "flex_attention", "eager")
TARGETS = {"score_mfu": 0.40, "train_time_vs_trl": 0.6, "train_memory_vs_trl": 0.7}


class Budget:
    """Wall-clock budget: a step that is not started in time is recorded as skipped, with why."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, name: str, need: float, fn, *args, **kwargs) -> dict:
        if self.left() < need:
            return {"skipped": f"time budget: {self.left():.0f} s left, {name} needs ~{need:.0f} s"}
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - one step's failure is a recorded result
            return {"failed": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                    "traceback": traceback.format_exc(limit=4)}


# --------------------------------------------------------------------------- models and data
def model_config(family: str, smoke: bool, processor_ids: dict) -> dict:
    """The published config with the tiny processor's token ids (and the tiny geometry with --smoke)."""
    config = copy.deepcopy(FAMILIES[family])
    kind = config["model_type"]
    if smoke:
        config["text_config"].update(SMOKE_TEXT)
        config["vision_config"].update(SMOKE_VISION[kind])
        if kind == "qwen2_5_vl":
            config["text_config"]["rope_parameters"]["mrope_section"] = [2, 3, 3]
            config["vision_config"]["out_hidden_size"] = SMOKE_TEXT["hidden_size"]
    config["text_config"]["vocab_size"] = max(config["text_config"]["vocab_size"], processor_ids.pop("vocab"))
    config.update(processor_ids)
    if kind == "qwen2_5_vl":
        config["text_config"].update({k: v for k, v in processor_ids.items() if k.endswith("_token_id")
                                      and k.startswith(("bos", "eos", "pad"))})
    return config


def make_model(family: str, folder: Path, smoke: bool, device: str) -> dict:
    """Write FOLDER: the tiny processor + the published (or smoke) geometry, random bf16 weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from mdpo_data.demo.tiny import build_tiny_llava, build_tiny_qwen2_5_vl

    shutil.rmtree(folder, ignore_errors=True)
    kind = FAMILIES[family]["model_type"]
    if kind == "llava":
        vision = SMOKE_VISION["llava"] if smoke else FAMILIES[family]["vision_config"]
        build_tiny_llava(folder, image_size=vision["image_size"], patch_size=vision["patch_size"])
    else:
        build_tiny_qwen2_5_vl(folder)
    processor = AutoProcessor.from_pretrained(folder)
    if kind == "qwen2_5_vl" and not smoke:  # 448 x 448 px -> 256 image tokens, a typical photo's
        processor.image_processor.min_pixels = processor.image_processor.max_pixels = 448 * 448
        processor.image_processor.size = {"shortest_edge": 448 * 448, "longest_edge": 448 * 448}
        processor.save_pretrained(folder)
    tiny = json.loads((folder / "config.json").read_text())
    ids = {k: v for k, v in tiny.items() if k.endswith(("token_id", "token_index"))}
    ids["vocab"] = len(processor.tokenizer)
    config = AutoConfig.for_model(**model_config(family, smoke, ids))
    started = time.perf_counter()
    with torch.device(device):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    for name in ("model.safetensors", "model.safetensors.index.json"):
        (folder / name).unlink(missing_ok=True)
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    text = model.get_decoder() if hasattr(model, "get_decoder") else model
    text_params = sum(p.numel() for p in text.parameters()) + model.get_output_embeddings().weight.numel()
    del model
    _free(device)
    return {"parameters": params, "language_model_parameters": text_params,
            "build_seconds": round(time.perf_counter() - started, 1)}


def make_data(folder: Path, rows: int) -> Path:
    from mdpo_data.build.stage import run_build
    from mdpo_data.config.runtime import Runtime
    from mdpo_data.config.build import BuildConfig

    run_build(BuildConfig(source="demo", n=rows, seed=0), folder, runtime=Runtime(overwrite=True), progress=False)
    return folder


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- scoring
def flops(config, text_params: int, tokens: int, sequences: int) -> float:
    """2 x parameters x tokens + causal attention (QK^T and AV: 2 x 2 x L x d x T^2 / 2 per
    sequence, T taken as the mean length)."""
    text = getattr(config, "text_config", None) or config
    mean = tokens / max(sequences, 1)
    return 2.0 * text_params * tokens + 2.0 * text.num_hidden_layers * text.hidden_size * mean * tokens


def score_full(data: Path, model_dir: Path, args, model_info: dict) -> dict:
    """The real `mdpo-data score` path on all rows (also the reference columns training reads)."""
    from transformers import AutoConfig

    from mdpo_data.scoring.stage import score_build

    stats = score_build(data, str(model_dir), dtype="bfloat16", device=args.device, attention="sdpa",
                        max_length=4096, progress=False, force=True)
    config = AutoConfig.from_pretrained(model_dir)
    work = flops(config, model_info["language_model_parameters"], stats["tokens"], stats["sequences"])
    return {**{k: stats[k] for k in ("sequences", "tokens", "seconds", "tokens_per_second", "batch_size",
                                      "peak_memory_gib", "prefix_reuse")},
            "mfu": work / stats["seconds"] / (args.peak_tflops * 1e12) if args.peak_tflops else None}


def score_variant(model, processor, table, model_info, args, *, attention: str, packed: bool) -> dict:
    from mdpo_data.scoring.scorer import Scorer, score_table

    model.set_attn_implementation(attention)
    scorer = Scorer(model, processor, batch_size=args.score_batch, max_length=4096,
                    prefix_reuse="on" if packed else "off", bucket=packed)
    import torch

    with torch.inference_mode():  # warm-up on the same shapes: kernel choice, flex's torch.compile
        score_table(table, Scorer(model, processor, batch_size=args.score_batch, max_length=4096,
                                  prefix_reuse="on" if packed else "off", bucket=packed), no_image=False)
    with PeakMemory(args.device) as memory, torch.inference_mode():
        started = time.perf_counter()
        scored, _ = score_table(table, scorer, no_image=False)
        _sync(args.device)
        seconds = time.perf_counter() - started
    work = flops(model.config, model_info["language_model_parameters"], scorer.tokens, scorer.sequences)
    return {"attention": attention, "packed": packed, "rows": table.num_rows, "seconds": round(seconds, 2),
            "tokens": scorer.tokens, "padded_slots": scorer.slots, "tokens_per_second": round(scorer.tokens / seconds, 1),
            "mfu": work / seconds / (args.peak_tflops * 1e12) if args.peak_tflops else None,
            "peak_memory_gib": round(memory.peak / 2**30, 3), "columns": _columns(scored)}


def _columns(table) -> dict:
    from mdpo_data.format import schema

    return {name: table.column(name).to_pylist() for name in schema.REF_LOGP_COLUMNS}


def max_diff(a: dict, b: dict) -> dict:
    return {name: max((abs(x - y) for x, y in zip(a[name], b[name]) if x is not None and y is not None),
                      default=None) for name in a}


def exactness(model, processor, table, model_info, args) -> dict:
    """bf16: packed vs separate, and separate vs separate at another batch composition."""
    packed = score_variant(model, processor, table, model_info, args, attention="sdpa", packed=True)
    separate = score_variant(model, processor, table, model_info, args, attention="sdpa", packed=False)
    half = max(1, args.score_batch // 2)
    smaller = argparse.Namespace(**{**vars(args), "score_batch": half})
    other = score_variant(model, processor, table, model_info, smaller, attention="sdpa", packed=False)
    gap, noise = max_diff(packed["columns"], separate["columns"]), max_diff(separate["columns"], other["columns"])
    within = all(gap[c] is not None and noise[c] is not None and gap[c] <= max(noise[c], 1e-6) for c in gap)
    return {"rows": table.num_rows, "packed_vs_separate": gap,
            f"separate_batch_{args.score_batch}_vs_{half}": noise, "target_met": within}


# --------------------------------------------------------------------------- training
def train_ours(data: Path, model_dir: Path, run: Path, args, *, checkpointing: bool) -> dict:
    """mdpo-train, LoRA r 64, global batch 32: the largest micro-batch of CANDIDATES that fits."""
    import torch

    from mdpo_train.config import load_config
    from mdpo_train.loop import MDPORecipe

    tried = []
    for micro in _candidates(args, checkpointing):
        shutil.rmtree(run, ignore_errors=True)
        config = load_config(None, {
            "shards": str(data), "output_dir": str(run), "model": str(model_dir), "loss": "mdpo",
            "max_steps": args.train_steps, "global_batch_size": args.global_batch, "per_device_batch_size": micro,
            "lora_r": 64, "lora_alpha": 128, "lora_dropout": 0.0, "dtype": "bf16", "save_steps": 0,
            "progress": False, "logging_steps": 1, "spot_check_rows": 0, "seed": 0, "attention": "sdpa",
            "gradient_checkpointing": checkpointing, "lr": 1e-5, "force_model": True})
        _fresh_accelerate()
        recipe = MDPORecipe(config)
        try:
            recipe.setup()
            with PeakMemory(args.device) as memory:
                started = time.perf_counter()
                recipe.train()
                _sync(args.device)
                seconds = time.perf_counter() - started
        except torch.cuda.OutOfMemoryError:
            tried.append(micro)
            del recipe
            _free(args.device)
            continue
        steps = recipe.position.global_step
        result = {"micro_batch": micro, "out_of_memory_at": tried, "steps": steps,
                  "seconds_per_step": round(seconds / steps, 3), "peak_memory_gib": round(memory.peak / 2**30, 3),
                  "examples_per_second": round(steps * args.global_batch / seconds, 2)}
        del recipe
        _free(args.device)
        return result
    return {"failed": f"out of memory at every micro-batch {tried}"}


def train_trl(data: Path, model_dir: Path, run: Path, args, *, checkpointing: bool) -> dict:
    """TRL's DPOTrainer (reference forward every step), same model, data, LoRA and batch."""
    import torch
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from mdpo_data.format.shards import open_dataset
    from mdpo_data.scoring.models import load_model
    from mdpo_train.model import language_model_linear_names

    tried = []
    for micro in _candidates(args, checkpointing):
        _fresh_accelerate()
        model, processor = load_model(str(model_dir), dtype="bfloat16", device=args.device, attention="sdpa")
        config = DPOConfig(
            output_dir=str(run), max_steps=args.train_steps, per_device_train_batch_size=micro,
            gradient_accumulation_steps=args.global_batch // micro, learning_rate=1e-5, beta=0.1,
            max_length=None, bf16=True, gradient_checkpointing=checkpointing, logging_steps=10,
            save_strategy="no", report_to=[], seed=0, disable_tqdm=True, use_cpu=args.device == "cpu",
            dataloader_num_workers=0)
        peft_config = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0,
                                 target_modules=language_model_linear_names(model))
        trainer = DPOTrainer(model=model, args=config, train_dataset=open_dataset(data)["train"],
                             processing_class=processor, peft_config=peft_config)
        try:
            with PeakMemory(args.device) as memory:
                started = time.perf_counter()
                result = trainer.train()
                _sync(args.device)
                seconds = time.perf_counter() - started
        except torch.cuda.OutOfMemoryError:
            tried.append(micro)
            del trainer, model
            _free(args.device)
            continue
        del trainer, model
        _free(args.device)
        steps = result.global_step
        return {"micro_batch": micro, "out_of_memory_at": tried, "steps": steps,
                "seconds_per_step": round(seconds / steps, 3), "peak_memory_gib": round(memory.peak / 2**30, 3),
                "examples_per_second": round(steps * args.global_batch / seconds, 2)}
    return {"failed": f"out of memory at every micro-batch {tried}"}


def _fresh_accelerate() -> None:
    """accelerate keeps one process-wide state; each trainer here is a fresh run (as one per
    process would be), so the previous one's mixed precision must not stick."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def _candidates(args, checkpointing: bool) -> list[int]:
    """Largest first, divisors of the global batch: activations of 3 sequences of ~700 tokens
    at 7B take ~30 GB per example without checkpointing, ~1 GB with it."""
    top = args.global_batch if checkpointing else max(1, args.global_batch // 8)
    return [m for m in (32, 16, 8, 4, 2, 1) if m <= top and args.global_batch % m == 0]


# --------------------------------------------------------------------------- driver
def check_family(family: str, args, work: Path, budget: Budget) -> dict:
    from mdpo_data.format.shards import read_shard, shard_files
    from mdpo_data.scoring.flex import supports_flex
    from mdpo_data.scoring.logprobs import prefix_reuse_support
    from mdpo_data.scoring.models import load_model

    out: dict = {}
    model_dir, data = work / f"model-{family}", work / f"data-{family}"
    info = budget.run("model", 60, make_model, family, model_dir, args.smoke, args.device)
    out["model"] = info
    if "parameters" not in info:
        return out
    make_data(data, args.rows)
    out["score"] = budget.run("score", 60, score_full, data, model_dir, args, info)
    model, processor = load_model(str(model_dir), dtype="bfloat16", device=args.device, attention="sdpa")
    packs, why = prefix_reuse_support(model)
    out["packed"] = {"packed": packs, "reason": why, "flex": supports_flex(model)[1]}
    table = read_shard(shard_files(data, "train")[0]).slice(0, args.subset_rows)
    kernels = {}
    for attention in ATTENTIONS:
        if attention == "flex_attention" and not supports_flex(model)[0]:
            kernels[f"packed-{attention}"] = {"skipped": supports_flex(model)[1]}
            continue
        result = budget.run(attention, 20, score_variant, model, processor, table, info, args,
                            attention=attention, packed=packs)
        result.pop("columns", None)
        kernels[f"{'packed' if packs else 'separate'}-{attention}"] = result
    result = budget.run("naive", 20, score_variant, model, processor, table, info, args, attention="sdpa", packed=False)
    result.pop("columns", None)
    kernels["naive-sdpa"] = result
    out["kernels"] = kernels
    model.set_attn_implementation("sdpa")
    out["exactness"] = budget.run("exactness", 30, exactness, model, processor, table, info, args) if packs \
        else {"skipped": f"{family} does not pack yet ({why})"}
    del model
    _free(args.device)
    if "failed" in out["score"] or "skipped" in out["score"]:
        out["train"] = {"skipped": "no reference scores (the score step did not run)"}
        return out
    train = {}
    for name, fn, checkpointing in (("ours-mdpo-gc", train_ours, True), ("trl-dpo-gc", train_trl, True),
                                    ("ours-mdpo", train_ours, False), ("trl-dpo", train_trl, False)):
        train[name] = budget.run(name, 60, fn, data, model_dir, work / f"run-{family}-{name}", args,
                                 checkpointing=checkpointing)
    out["train"] = train
    out["train_vs_trl"] = _ratios(train)
    return out


def _ratios(train: dict) -> dict:
    ratios = {}
    for suffix in ("-gc", ""):
        ours, trl = train.get(f"ours-mdpo{suffix}", {}), train.get(f"trl-dpo{suffix}", {})
        if "seconds_per_step" in ours and "seconds_per_step" in trl:
            ratios[f"gc {'on' if suffix else 'off'}"] = {
                "time": round(ours["seconds_per_step"] / trl["seconds_per_step"], 3),
                "memory": round(ours["peak_memory_gib"] / trl["peak_memory_gib"], 3)}
    return ratios


def device_facts(args) -> dict:
    import torch

    if not args.device.startswith("cuda"):
        return {"name": "cpu", "peak_tflops": args.peak_tflops, "peak_source": "--peak-tflops" if args.peak_tflops else None}
    name = torch.cuda.get_device_name(args.device)
    found = next((v for k, v in PEAK_TFLOPS.items() if k.lower() in name.lower()), None)
    if args.peak_tflops is None:
        args.peak_tflops = found
    return {"name": name, "memory_gib": round(torch.cuda.get_device_properties(args.device).total_memory / 2**30, 1),
            "peak_tflops": args.peak_tflops, "peak_source": "--peak-tflops" if args.peak_tflops != found else "table"}


def markdown(result: dict) -> str:
    lines = [f"# gpu_check on {result['device']['name']} ({'smoke' if result['smoke'] else 'full geometry'})", "",
             f"bf16 peak {result['device']['peak_tflops']} TFLOP/s ({result['device']['peak_source']}); "
             f"targets: scoring MFU >= {TARGETS['score_mfu']:.0%}, mdpo/TRL time <= {TARGETS['train_time_vs_trl']}, "
             f"memory <= {TARGETS['train_memory_vs_trl']}", "",
             "| family | step | tokens/s | MFU | peak GiB | s/step | micro-batch | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for family, out in result["families"].items():
        rows = [(f"score ({result['rows']} rows)", out.get("score", {}))] + list(out.get("kernels", {}).items()) \
            + list(out.get("train", {}).items())
        for name, r in rows:
            note = r.get("skipped") or r.get("failed") or ""
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ""
            lines.append(f"| {family} | {name} | {r.get('tokens_per_second', '')} | {mfu} | "
                         f"{r.get('peak_memory_gib', '')} | {r.get('seconds_per_step', '')} | "
                         f"{r.get('micro_batch', r.get('batch_size', ''))} | {note} |")
        lines.append(f"| {family} | packed? | | | | | | {out.get('packed', {}).get('reason', '')} |")
        if out.get("exactness"):
            lines.append(f"| {family} | bf16 exactness | | | | | | {json.dumps(out['exactness'])} |")
        if out.get("train_vs_trl"):
            lines.append(f"| {family} | mdpo / TRL | | | | | | {json.dumps(out['train_vs_trl'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="tiny geometry on CPU: checks the script runs")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: table)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="hard time budget [480 = 8 min]")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset")
    args = parser.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.rows, args.subset_rows, args.score_batch, args.train_steps, args.global_batch = 4, 2, 4, 1, 2
    else:
        args.rows, args.subset_rows, args.score_batch, args.train_steps, args.global_batch = 512, 64, 16, 30, 32
    warnings.filterwarnings("ignore")
    budget = Budget(args.budget_s)
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    result = {"smoke": args.smoke, "rows": args.rows, "device": device_facts(args), "targets": TARGETS,
              "torch": torch.__version__, "families": {}}
    for family in args.families.split(","):
        if family not in FAMILIES:
            parser.error(f"--families: unknown {family!r}; known: {', '.join(FAMILIES)}")
        result["families"][family] = check_family(family, args, work, budget)
    result["seconds"] = round(args.budget_s - budget.left(), 1)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    shutil.rmtree(work, ignore_errors=True)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
