"""Our trainer vs TRL's DPOTrainer, same model, same data, same batch, in one run.

TRL runs the reference model (the base weights, adapter disabled) on every step; mdpo-train
reads reference log-probs stored in the shards, computed once. The script:
  1. builds a mid-size LLaVA (or with --family qwen2_5_vl a Qwen2.5-VL: 448x448 images, 256
     image tokens, 3-D M-RoPE, windowed vision tower) from a config (no download; the model,
     not Python, dominates),
  2. builds demo data and scores it once with that model (reported: the one-time cost),
  3. trains, each in a fresh subprocess (clean peak memory), for --epochs epochs:
       ours-dpo            mdpo-train, loss dpo   (y_w and y_l share the image+question prefix)
       trl-dpo             trl.DPOTrainer, sigmoid (2 sequences + a reference forward per step)
       ours-mdpo           mdpo-train, loss mdpo  ([prefix, y_w, y_l] + (m_l, q, y_w) per example)
       ours-mdpo-unshared  the same with prefix_sharing: false (3 separate sequences)
  4. prints wall time per epoch and peak memory, and the ratios.
Targets (at LLaVA-1.5's 576 image tokens, the default): ours-mdpo-unshared >= 1.3 x ours-mdpo in
time; ours-mdpo <= 0.75 x trl-dpo in time and <= trl-dpo in memory.

Memory: on GPU torch.cuda.max_memory_allocated during training; on CPU the peak resident set
size sampled from /proc/self/statm during training (also its rise over the pre-training RSS).

    python benchmarks/bench_train.py --json bench.json     # CPU, 576 image tokens, a few minutes
    python benchmarks/bench_train.py --image-tokens 64     # the small-image geometry
    python benchmarks/bench_train.py --family qwen2_5_vl   # Qwen2.5-VL geometry, 448x448 image
    python benchmarks/bench_train.py --device cuda --dtype bfloat16 --hidden 2048 --layers 16 \
        --rows 512 --batch 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

KINDS = ("ours-dpo", "trl-dpo", "ours-mdpo", "ours-mdpo-unshared")
PATCH = 14  # LLaVA-1.5's CLIP ViT-L/14: 336 px -> 24 x 24 = 576 image tokens
# Per family: LM head rows of the real model, and the image side (px) benchmarked.
VOCAB = {"llava": 32064, "qwen2_5_vl": 151936}
QWEN_IMAGE = 448  # Qwen2.5-VL: 448 px / patch 14 = 32 x 32 patches, merged 2 x 2 -> 256 tokens


# ------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or sampled RSS on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak = self.start = 0

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the process-lifetime peak is the best we have
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


# ------------------------------------------------------------------ setup (parent process)
def prepare(args) -> dict:
    from mdpo_data.build.stage import run_build
    from mdpo_data.config.runtime import Runtime
    from mdpo_data.config.build import BuildConfig
    from mdpo_data.scoring.stage import score_build
    from mdpo_data.demo.tiny import build_tiny_llava

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    model = work / "model"
    shutil.rmtree(model, ignore_errors=True)  # the geometry may have changed since the last run
    if args.family == "qwen2_5_vl":
        build_qwen2_5_vl(model, args)
    else:
        build_tiny_llava(model, seed=0, hidden_size=args.hidden, num_layers=args.layers,
                         image_size=args.image_size, patch_size=PATCH)
        widen_vocabulary(model, args.vocab)
    data = work / "data"
    started = time.perf_counter()
    run_build(BuildConfig(source="demo", n=args.rows, seed=0), data, runtime=Runtime(overwrite=True), progress=False)
    stats = score_build(data, str(model), dtype=args.dtype, device=args.device, progress=False)
    return {"score_seconds": time.perf_counter() - started, "score_stats": stats}


def build_qwen2_5_vl(path: Path, args) -> None:
    """Qwen2.5-VL at reduced size: the tiny builder's tokenizer, template and processor, every
    image resized to 448x448 (256 image tokens), a text model of --hidden x --layers (head dim
    64, 2 KV heads, MLP 5.4x as in the 3B) with the real vocabulary, and a 4-block windowed
    vision tower (window 112 px, full attention every second block)."""
    import torch
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from mdpo_data.demo.tiny import build_tiny_qwen2_5_vl

    build_tiny_qwen2_5_vl(path, seed=0)
    processor = AutoProcessor.from_pretrained(path)
    pixels = QWEN_IMAGE * QWEN_IMAGE
    processor.image_processor.min_pixels = processor.image_processor.max_pixels = pixels
    processor.image_processor.size = {"shortest_edge": pixels, "longest_edge": pixels}
    config = AutoConfig.from_pretrained(path)
    text, vision = config.text_config, config.vision_config
    heads = args.hidden // 64
    text.update({"hidden_size": args.hidden, "num_hidden_layers": args.layers, "vocab_size": args.vocab,
                 "num_attention_heads": heads, "num_key_value_heads": 2,
                 "intermediate_size": int(5.375 * args.hidden), "layer_types": ["full_attention"] * args.layers})
    text.rope_parameters["mrope_section"] = [8, 12, 12]  # head dim 64: 32 rotary pairs (3B: 16, 24, 24 of 64)
    vision.update({"depth": 4, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4,
                   "out_hidden_size": args.hidden, "window_size": 112, "fullatt_block_indexes": [1, 3]})
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)


def widen_vocabulary(path: Path, size: int) -> None:
    """LLaVA-1.5's 32064-entry LM head on the tiny tokenizer: the extra rows are never input
    tokens, but every log-softmax runs over them, as in the real model."""
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path)
    if size > model.get_output_embeddings().weight.shape[0]:
        torch.manual_seed(0)
        model.resize_token_embeddings(size, mean_resizing=False)
        model.save_pretrained(path)


# ------------------------------------------------------------------ workers (one per subprocess)
def run_ours(args, loss: str, share: bool) -> dict:
    from mdpo_train.config import load_config
    from mdpo_train.loop import MDPORecipe

    work = Path(args.work)
    run = work / f"run-{loss}-{'shared' if share else 'unshared'}"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run folder every repeat
    config = load_config(None, {
        "shards": str(work / "data"), "output_dir": str(run), "loss": loss, "prefix_sharing": share,
        "epochs": args.epochs, "global_batch_size": args.batch * args.accumulation,
        "per_device_batch_size": args.batch, "lr": args.lr, "beta": 0.1, "lora_r": args.lora_r,
        "lora_alpha": 2 * args.lora_r, "lora_dropout": 0.0, "dtype": _short(args.dtype),
        "save_steps": 0, "progress": False, "logging_steps": 10, "seed": 0,
        "gradient_checkpointing": args.gradient_checkpointing,
    })
    recipe = MDPORecipe(config)
    recipe.setup()
    with PeakMemory(args.device) as memory:
        started, cpu = time.perf_counter(), time.process_time()
        recipe.train()
        _sync(args.device)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "steps": recipe.position.global_step, "peak": memory.peak,
            "start": memory.start, "examples": len(recipe.train_data)}


def run_trl(args) -> dict:
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from mdpo_data.scoring.models import load_model
    from mdpo_data.format.shards import open_dataset
    from mdpo_train.model import language_model_linear_names

    work = Path(args.work)
    model, processor = load_model(str(work / "model"), dtype=args.dtype, device=args.device)
    dataset = open_dataset(work / "data")["train"]  # a shard row is a valid TRL vision row
    config = DPOConfig(
        output_dir=str(work / "run-trl"), num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accumulation,
        learning_rate=args.lr, beta=0.1, lr_scheduler_type="cosine", warmup_steps=0.1,
        weight_decay=0.05, adam_beta2=0.98, max_length=None, bf16=args.dtype == "bfloat16",
        fp16=args.dtype == "float16", gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=10, save_strategy="no", report_to=[], seed=0, disable_tqdm=True,
        use_cpu=args.device == "cpu", dataloader_num_workers=0,
    )
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                             target_modules=language_model_linear_names(model))
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                         peft_config=peft_config)
    with PeakMemory(args.device) as memory:
        started, cpu = time.perf_counter(), time.process_time()
        result = trainer.train()
        _sync(args.device)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "steps": result.global_step, "peak": memory.peak, "start": memory.start,
            "examples": len(dataset)}


def _short(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(args) -> None:
    import torch

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "trl-dpo":
        result = run_trl(args)
    else:
        loss = args.worker.removeprefix("ours-").removesuffix("-unshared")
        result = run_ours(args, loss, share=not args.worker.endswith("-unshared"))
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------ driver
def spawn(args, kind: str) -> dict:
    argv = [sys.executable, __file__, "--worker", kind] + [
        a for a in sys.argv[1:] if a != "--worker"
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{kind} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llava", choices=sorted(VOCAB),
                        help="model geometry [llava: LLaVA-1.5; qwen2_5_vl: Qwen2.5-VL, 448x448 image]")
    parser.add_argument("--rows", type=int, default=16, help="demo examples to train on [16]")
    parser.add_argument("--hidden", type=int, default=512, help="language model hidden size [512]")
    parser.add_argument("--layers", type=int, default=6, help="language model layers [6]")
    parser.add_argument("--image-tokens", type=int, default=576, choices=[64, 144, 576],
                        help="image tokens per image [576: LLaVA-1.5's 336 px / patch 14]")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch (examples) [8]")
    parser.add_argument("--accumulation", type=int, default=1, help="gradient accumulation [1]")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu | cuda [cpu]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads [1: steadiest on a shared machine]; 0: torch's default")
    parser.add_argument("--vocab", type=int, help="LM head rows [the family's: 32064 LLaVA-1.5, 151936 Qwen2.5-VL]")
    parser.add_argument("--repeats", type=int, default=1, help="run each trainer N times, keep the fastest")
    parser.add_argument("--work", default="/tmp/mdpo-bench-train", help="scratch folder")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.image_size = math.isqrt(args.image_tokens) * PATCH
    args.vocab = args.vocab or VOCAB[args.family]
    if args.worker:
        return worker(args)

    setup = prepare(args)
    results = {}
    for _ in range(args.repeats):
        for kind in KINDS:  # interleaved, so a noisy neighbour hits every trainer alike
            result = spawn(args, kind)
            seen = results.get(kind, {}).get("all_seconds", []) + [result["seconds"]]
            cpu = results.get(kind, {}).get("all_cpu_seconds", []) + [result["cpu_seconds"]]
            if kind not in results or result["seconds"] < results[kind]["seconds"]:
                results[kind] = result
            results[kind].update(all_seconds=seen, all_cpu_seconds=cpu, cpu_seconds=min(cpu))
    report(args, setup, results)


def ratios(results: dict) -> dict:
    """The issue's comparisons, from one run's numbers (time = seconds, memory = peak)."""
    def of(a, b):
        return {"time": results[a]["seconds"] / results[b]["seconds"],
                "cpu_time": results[a]["cpu_seconds"] / results[b]["cpu_seconds"],
                "memory": results[a]["peak"] / results[b]["peak"]}
    return {"mdpo-unshared/mdpo": of("ours-mdpo-unshared", "ours-mdpo"),
            "mdpo/trl-dpo": of("ours-mdpo", "trl-dpo"), "dpo/trl-dpo": of("ours-dpo", "trl-dpo"),
            "mdpo/dpo": of("ours-mdpo", "ours-dpo")}


def report(args, setup: dict, results: dict) -> None:
    unit = "GPU max allocated" if args.device.startswith("cuda") else "peak RSS"
    image = (f"{args.image_tokens} image tokens ({args.image_size} px / patch {PATCH})" if args.family == "llava"
             else f"{(QWEN_IMAGE // PATCH // 2) ** 2} image tokens ({QWEN_IMAGE} px / patch {PATCH}, merged 2x2)")
    print(f"\nmodel: {args.family}, text hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}, "
          f"{image}; {args.rows} examples, batch "
          f"{args.batch} x {args.accumulation}, {args.epochs} epoch(s), {args.dtype} on {args.device}"
          f"{f', {args.threads} thread(s)' if args.threads else ''}; fastest of {args.repeats}")
    print(f"one-time reference scoring: {setup['score_seconds']:.1f} s "
          f"({setup['score_stats']['sequences']} sequences)")
    print(f"{'trainer':<19} {'s/epoch':>9} {'cpu s':>8} {'spread':>7} {'steps':>6} {unit + ' MB':>20} "
          f"{'rise MB':>9}")
    for kind, r in results.items():
        spread = max(r["all_seconds"]) / min(r["all_seconds"]) - 1
        print(f"{kind:<19} {r['seconds'] / args.epochs:>9.2f} {r['cpu_seconds'] / args.epochs:>8.2f} "
              f"{100 * spread:>6.0f}% {r['steps']:>6} "
              f"{r['peak'] / 2**20:>20.1f} {(r['peak'] - r['start']) / 2**20:>9.1f}")
    found = ratios(results)
    speedup = found["mdpo-unshared/mdpo"]["time"]
    mdpo = found["mdpo/trl-dpo"]
    print(f"\nprefix sharing: ours-mdpo-unshared / ours-mdpo time {speedup:.2f}x (target >= 1.3: "
          f"{_verdict(speedup >= 1.3)}; cpu time {found['mdpo-unshared/mdpo']['cpu_time']:.2f}x), "
          f"memory {found['mdpo-unshared/mdpo']['memory']:.2f}x")
    print(f"ours-mdpo / trl-dpo: time {mdpo['time']:.2f}x (target <= 0.75: {_verdict(mdpo['time'] <= 0.75)}; "
          f"cpu time {mdpo['cpu_time']:.2f}x), "
          f"memory {mdpo['memory']:.2f}x (target <= 1: {_verdict(mdpo['memory'] <= 1)})")
    print(f"ours-dpo / trl-dpo: time {found['dpo/trl-dpo']['time']:.2f}x, memory "
          f"{found['dpo/trl-dpo']['memory']:.2f}x; ours-mdpo / ours-dpo: time "
          f"{found['mdpo/dpo']['time']:.2f}x, memory {found['mdpo/dpo']['memory']:.2f}x")
    print("s/epoch: fastest repeat's wall time; cpu s: least process CPU time of the repeats; "
          "spread: slowest / fastest wall time - 1 (noise from other processes on the machine)")
    if args.json:
        per_kind = {kind: {"seconds_per_epoch": r["seconds"] / args.epochs,
                           "cpu_seconds_per_epoch": r["cpu_seconds"] / args.epochs, "peak_memory_bytes": r["peak"],
                           "memory_rise_bytes": r["peak"] - r["start"], "steps": r["steps"],
                           "all_seconds_per_epoch": [s / args.epochs for s in r["all_seconds"]],
                           "all_cpu_seconds_per_epoch": [s / args.epochs for s in r["all_cpu_seconds"]]}
                    for kind, r in results.items()}
        Path(args.json).write_text(json.dumps({"args": vars(args), "setup": setup, "results": per_kind,
                                               "ratios": found, "memory_unit": unit},
                                              indent=2, default=str))


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


if __name__ == "__main__":
    main()
