"""Scoring throughput: our scorer path vs the naive one, in the same run, on the same rows.

    ours   length-bucketed batches; y_w and y_l packed after ONE copy of the image+question
           prefix (one forward, 4-D attention mask, no KV cache)
    naive  rows in arrival order, each sequence padded to its batch's longest and run on its
           own full prefix (what online DPO does for the reference at every step)

Both use the same `response_logps` reduction (logits only for response positions), so the
ratio measures bucketing + prefix reuse alone. Tokens/s counts the tokens of all scored
sequences (prompt with image tokens + response), identical for both paths.

    python benchmarks/bench_score.py                   # CPU, ~1 min; 576 image tokens (LLaVA-1.5)
    python benchmarks/bench_score.py --image-size 128 --patch-size 16 --rows 32   # 64 image tokens
    python benchmarks/bench_score.py --device cuda --dtype bfloat16 --rows 512 --hidden 1024 --layers 8
    python benchmarks/bench_score.py --model PATH      # any local vision-language checkpoint
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import warnings

import torch
from PIL import Image

from mdpo_data.scoring.logprobs import PrefixGroup, Sequence, encode
from mdpo_data.scoring.models import load_model
from mdpo_data.scoring.scorer import Scorer
from mdpo_data.demo.tiny import build_tiny_llava

WORDS = ("the a red blue green circle square triangle star is there are two three large small "
         "left right corner background next to shape color image shows one").split()


def make_rows(n: int, seed: int) -> list[tuple]:
    """(image, rejected image, question, chosen, rejected) with realistic length spread."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    rows = []
    for _ in range(n):
        size = (rng.randint(200, 640), rng.randint(200, 480))
        image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
        flipped = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
        rows.append((image, flipped, text(4, 20) + "?", text(5, 120), text(5, 120)))
    return rows


def groups_for(rows) -> list:
    items = []
    for i, (image, flipped, question, chosen, rejected) in enumerate(rows):
        items.append((PrefixGroup(image, question, (chosen, rejected)), [(i, "w"), (i, "l")]))
        items.append((PrefixGroup(flipped, question, (chosen,)), [(i, "w|m_l")]))
    return items


def run(scorer: Scorer, items) -> tuple[dict, float]:
    if scorer.model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        results = scorer.score_groups(items)
    if scorer.model.device.type == "cuda":
        torch.cuda.synchronize()
    return results, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local model folder (default: a bench-only tiny LLaVA)")
    parser.add_argument("--rows", type=int, default=24, help="preference rows (3 sequences each)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    # Default geometry = LLaVA-1.5's (336 px, patch 14: 576 image tokens), the paper's model.
    parser.add_argument("--image-size", type=int, default=336, help="tiny model: pixels per side")
    parser.add_argument("--patch-size", type=int, default=14, help="tiny model: (size/patch)^2 image tokens")
    parser.add_argument("--hidden", type=int, default=512,
                        help="tiny model: text hidden size (512: compute-bound like real models; 128 is overhead-bound)")
    parser.add_argument("--layers", type=int, default=4, help="tiny model: text layers")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*SMOKE-TEST.*")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(build_tiny_llava(tmp, seed=args.seed, image_size=args.image_size,
                                                  patch_size=args.patch_size, hidden_size=args.hidden,
                                                  num_layers=args.layers))
        model, processor = load_model(path, dtype=args.dtype, device=args.device)
    items = groups_for(make_rows(args.rows, args.seed))
    ours = Scorer(model, processor, batch_size=args.batch_size, max_length=None, prefix_reuse="auto")
    naive = Scorer(model, processor, batch_size=args.batch_size, max_length=None, prefix_reuse="off",
                   bucket=False)
    run(naive, items[: 2 * args.batch_size])  # warm-up (kernel selection, allocator)
    run(ours, items[: 2 * args.batch_size])

    timings = {"ours": [], "naive": []}
    results = {}
    for _ in range(args.repeats):
        for name, scorer in (("naive", naive), ("ours", ours)):
            scorer.tokens = scorer.sequences = scorer.slots = 0
            results[name], seconds = run(scorer, items)
            timings[name].append(seconds)
    tokens = naive.tokens  # identical for both paths
    assert ours.tokens == tokens, (ours.tokens, tokens)
    worst = max(abs(results["ours"][k][0] - results["naive"][k][0]) for k in results["naive"])

    probe, _ = encode(processor, [Sequence(Image.new("RGB", (64, 64)), "q", "a")])
    image_tokens = int((probe["input_ids"] == getattr(processor, "image_token_id", -1)).sum())
    print(f"model: {args.model or 'bench tiny LLaVA'} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"params, {image_tokens} image tokens), device {model.device}, dtype {model.dtype}")
    print(f"rows {args.rows} -> {naive.sequences} sequences, {tokens} tokens, batch size {args.batch_size}, "
          f"prefix reuse: {ours.prefix_reuse} ({ours.prefix_reason})")
    best = {name: min(values) for name, values in timings.items()}
    for name in ("naive", "ours"):
        print(f"{name:>6}: {tokens / best[name]:10.1f} tokens/s  (best of {args.repeats}: {best[name]:.2f} s)")
    print(f" ratio: {best['naive'] / best['ours']:.2f}x   max |ours - naive| = {worst:.2e} nats")
    print(f"token positions run (padding included, timing-independent): naive {naive.slots}, "
          f"ours {ours.slots} ({naive.slots / ours.slots:.2f}x fewer)")


if __name__ == "__main__":
    main()
