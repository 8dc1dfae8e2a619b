"""Planning a build (source scan + sampling) against the `json.loads` floor, in one run.

Writes a VLFeedback-shaped source once (`vlfeedback_80k.jsonl` with real-size responses and
rationales, 4 rated completions per prompt, ids with the real prefixes, plus a
`merged_images.zip` with one member per row), then measures, each in a fresh subprocess so
peak memory (ru_maxrss) is the step's own:
  floor  - `json.loads` of every line, nothing kept (the unavoidable work)
  plan   - `mdpo_data.build.plan` for `--n` examples (parse, pair, dedup, sample)
and prints seconds, peak RSS and the ratio. Target: plan <= 2x floor and < 500 MB.

    python benchmarks/bench_plan.py                 # 80K prompts (~650 MB file, cached in /tmp)
    python benchmarks/bench_plan.py --prompts 5000  # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import zipfile
from pathlib import Path

ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")
PREFIXES = ("llava-", "svit-", "lrv-", "m3it-", "comvint-", "VQARAD-", "sharegpt4v-")
MODELS = ("gpt-4v", "llava-v1.5-13b", "qwen-vl-chat", "instructblip-vicuna-13b", "fuyu-8b")
WORDS = (
    "the image shows a person standing near red car on street with trees in background while "
    "several people walk along sidewalk under bright blue sky and tall buildings line road "
    "there is also small dog sitting beside wooden bench which appears old weathered painted "
    "green visible details include sign traffic light window reflection shadow cloud"
).split()


def _sentences(rng: random.Random, count: int) -> list[str]:
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))).capitalize() + "."
        for _ in range(count)
    ]


def _text(rng: random.Random, pool: list[str], chars: int, tag: str) -> str:
    """About `chars` characters of sentences from `pool`, made unique by `tag`."""
    parts, size = [tag], 0
    while size < chars:
        sentence = rng.choice(pool)
        parts.append(sentence)
        size += len(sentence) + 1
    return " ".join(parts)


def make_row(rng: random.Random, pool: list[str], row: int) -> dict:
    completions = []
    for k in range(4):
        annotations = {
            aspect: {
                "Rating": str(rng.randint(1, 5)),
                "Rationale": _text(rng, pool, rng.randint(150, 450), f"[{row}.{k}]"),
            }
            for aspect in ASPECTS
        }
        response = _text(rng, pool, rng.randint(300, 1800), f"Answer {row}.{k}:")
        completions.append({"annotations": annotations, "model": MODELS[k], "response": response})
    return {
        "id": f"{PREFIXES[row % len(PREFIXES)]}{row}",
        "prompt": "<image>\n" + _text(rng, pool, rng.randint(40, 200), "Question:"),
        "models": list(MODELS[:4]),
        "completions": completions,
    }


def make_source(root: Path, prompts: int, seed: int = 0) -> Path:
    """The jsonl + zip under `root` (reused when a previous run wrote them for `prompts`)."""
    data, done = root / "vlfeedback_80k.jsonl", root / f".done-{prompts}-{seed}"
    if done.exists():
        return data
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = _sentences(rng, 3000)
    with open(data, "w") as handle:
        for row in range(prompts):
            handle.write(json.dumps(make_row(rng, pool, row)) + "\n")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(buffer, format="JPEG")
    with zipfile.ZipFile(root / "merged_images.zip", "w", zipfile.ZIP_STORED) as archive:
        for row in range(prompts):
            archive.writestr(f"merged_images/{PREFIXES[row % len(PREFIXES)]}{row}.jpg", buffer.getvalue())
    done.touch()
    return data


FLOOR = """
import json, resource, sys, time
started = time.perf_counter()
with open(sys.argv[1], encoding="utf-8") as handle:
    for line in handle:
        json.loads(line)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PLAN = """
import json, resource, sys, time, warnings
from mdpo_data.build import BuildConfig, plan
config = BuildConfig(source="silkie", source_path=sys.argv[1], n=int(sys.argv[2]), seed=0)
started = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    splits, pool, _, _ = plan(config)
seconds = time.perf_counter() - started
ids = [c.example_id for split in splits.values() for c in split]
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "candidates": pool.available, "rows": pool.rows, "ids": ids[:5]}))
"""


def measure(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter (the cwd's package first) and read its json line."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=80_000)
    parser.add_argument("--n", type=int, default=10, help="examples the plan samples")
    parser.add_argument("--data", type=Path, default=None, help="where to write the source")
    args = parser.parse_args()
    root = args.data or Path(f"/tmp/mdpo-bench-plan-{args.prompts}")
    data = make_source(root, args.prompts)
    print(f"source: {data} ({data.stat().st_size / 1e6:.0f} MB, {args.prompts} prompts)")
    floor = measure(FLOOR, str(data))
    planned = measure(PLAN, str(root), str(args.n))
    print(f"floor  json.loads lines : {floor['seconds']:7.2f} s  peak RSS {floor['rss_mb']:6.0f} MB")
    print(
        f"plan   --n {args.n:<13} : {planned['seconds']:7.2f} s  peak RSS {planned['rss_mb']:6.0f} MB"
        f"  ({planned['candidates']} candidates from {planned['rows']} rows; first ids {planned['ids'][:3]})"
    )
    ratio = planned["seconds"] / floor["seconds"]
    ok = ratio <= 2.0 and planned["rss_mb"] < 500
    print(f"ratio  plan / floor     : {ratio:7.2f} x  (target <= 2x and < 500 MB: {'met' if ok else 'NOT met'})")


if __name__ == "__main__":
    main()
