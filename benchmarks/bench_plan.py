"""Planning a build (source scan + sampling) against the `json.loads` floor, in one run.

Writes a VLFeedback-shaped source once (`vlfeedback_80k.jsonl` with real-size responses and
rationales, 4 rated completions per prompt, ids with the real prefixes, plus a
`merged_images.zip` with one member per row, or with `--folder` a `merged_images/` folder
with one file per row), then measures, each in a fresh subprocess so
peak memory (ru_maxrss) is the step's own:
  floor  - `json.loads` of every line, nothing kept (the unavoidable work)
  plan   - `mdpo_data.build.stage.plan` for `--n` examples (parse, pair, dedup, sample)
and prints seconds, peak RSS and the ratio. Target: plan <= 2x floor and < 500 MB.

`--parquet` writes the Hub layout instead (`data/train-*.parquet`: `completions` as the struct
of lists `datasets` writes, an embedded `image` struct of ~40 KB per row) and plans it with
three parquet readers, each in a fresh subprocess:
  all-columns - pyarrow reading every column, image bytes included (no projection)
  pyarrow     - the code's reader: pyarrow batches of the text columns only
  polars      - `polars.scan_parquet` with the same projection, rows via `to_dicts`
The sampled ids must agree; the ratios say which reader the code should use.

    python benchmarks/bench_plan.py                 # 80K prompts (806 MB file, cached in /tmp)
    python benchmarks/bench_plan.py --prompts 5000  # a quick check
    python benchmarks/bench_plan.py --parquet --prompts 10000
    python benchmarks/bench_plan.py --folder --prompts 20000  # a folder of image files
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


def make_source(root: Path, prompts: int, seed: int = 0, folder: bool = False) -> Path:
    """The jsonl + zip (or `folder`: a `merged_images/` folder of files) under `root` (reused
    when a previous run wrote them for `prompts`)."""
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
    if folder:
        images = root / "merged_images"
        images.mkdir(exist_ok=True)
        for row in range(prompts):
            (images / f"{PREFIXES[row % len(PREFIXES)]}{row}.jpg").write_bytes(buffer.getvalue())
        done.touch()
        return data
    with zipfile.ZipFile(root / "merged_images.zip", "w", zipfile.ZIP_STORED) as archive:
        for row in range(prompts):
            archive.writestr(f"merged_images/{PREFIXES[row % len(PREFIXES)]}{row}.jpg", buffer.getvalue())
    done.touch()
    return data


def make_parquet(root: Path, prompts: int, seed: int = 0) -> Path:
    """`data/train-00000-of-00001.parquet` as the Hub export holds VLFeedback, images embedded."""
    data, done = root / "data" / "train-00000-of-00001.parquet", root / f".done-{prompts}-{seed}"
    if done.exists():
        return data
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    data.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = _sentences(rng, 3000)
    aspect = pa.struct([("Rating", pa.string()), ("Rationale", pa.string())])
    parts = [("annotations", pa.struct([(a, aspect) for a in ASPECTS])), ("model", pa.string()),
             ("response", pa.string())]
    schema = pa.schema([
        ("id", pa.string()), ("prompt", pa.string()), ("models", pa.list_(pa.string())),
        ("completions", pa.struct([(name, pa.list_(kind)) for name, kind in parts])),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ])
    noise = os.urandom(40_000)  # incompressible, as JPEG bytes are
    with pq.ParquetWriter(data, schema) as writer:
        for start in range(0, prompts, 500):
            rows = [make_row(rng, pool, row) for row in range(start, min(prompts, start + 500))]
            writer.write_table(pa.table({
                "id": [r["id"] for r in rows],
                "prompt": [r["prompt"] for r in rows],
                "models": [r["models"] for r in rows],
                "completions": [{n: [c[n] for c in r["completions"]] for n, _ in parts} for r in rows],
                "image": [{"bytes": noise + r["id"].encode(), "path": r["id"] + ".jpg"} for r in rows],
            }, schema=schema))
    done.touch()
    return data


READERS = """
from mdpo_data.sources import readers

def all_columns(file, columns):
    import pyarrow.parquet as pq
    for batch in pq.ParquetFile(file).iter_batches(batch_size=512):
        yield [{k: row[k] for k in columns} for row in batch.to_pylist()]

def polars(file, columns):
    import polars as pl
    for frame in pl.scan_parquet(file).select(columns).collect_batches(chunk_size=512):
        yield frame.to_dicts()

if sys.argv[3] != "pyarrow":
    readers._parquet_batches = {"all-columns": all_columns, "polars": polars}[sys.argv[3]]
"""

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
from mdpo_data.build.stage import plan
from mdpo_data.config.build import BuildConfig
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


def main_parquet(args) -> None:
    root = args.data or Path(f"/tmp/mdpo-bench-plan-parquet-{args.prompts}")
    # written by a child process: a child's ru_maxrss starts from its parent's at fork
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                    "from pathlib import Path; from bench_plan import make_parquet; "
                    "make_parquet(Path(sys.argv[2]), int(sys.argv[3]))",
                    str(Path(__file__).parent), str(root), str(args.prompts)], check=True)
    data = make_parquet(root, args.prompts)  # already written: returns its path
    print(f"source: {data} ({data.stat().st_size / 1e6:.0f} MB, {args.prompts} prompts, images embedded)")
    code = PLAN.replace("from mdpo_data.build.stage", READERS + "from mdpo_data.build.stage")
    runs = {reader: measure(code, str(root), str(args.n), reader)
            for reader in ("all-columns", "pyarrow", "polars")}
    for reader, run in runs.items():
        print(f"plan   {reader:<16} : {run['seconds']:7.2f} s  peak RSS {run['rss_mb']:6.0f} MB"
              f"  ({run['candidates']} candidates; first ids {run['ids'][:3]})")
    assert len({json.dumps(run["ids"]) for run in runs.values()}) == 1, "readers sampled differently"
    for new, old in (("pyarrow", "all-columns"), ("polars", "all-columns"), ("polars", "pyarrow")):
        a, b = runs[new], runs[old]
        print(f"ratio  {new} / {old:<12}: {a['seconds'] / b['seconds']:5.2f} x time, "
              f"{a['rss_mb'] / b['rss_mb']:5.2f} x peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=80_000)
    parser.add_argument("--n", type=int, default=10, help="examples the plan samples")
    parser.add_argument("--data", type=Path, default=None, help="where to write the source")
    parser.add_argument("--parquet", action="store_true", help="the Hub parquet layout, three readers")
    parser.add_argument("--folder", action="store_true", help="images as a merged_images/ folder of "
                        "files (not a zip): the common local layout")
    args = parser.parse_args()
    if args.parquet:
        return main_parquet(args)
    layout = "folder" if args.folder else "zip"
    root = args.data or Path(f"/tmp/mdpo-bench-plan-{layout}-{args.prompts}" if args.folder
                             else f"/tmp/mdpo-bench-plan-{args.prompts}")
    data = make_source(root, args.prompts, folder=args.folder)
    print(f"source: {data} ({data.stat().st_size / 1e6:.0f} MB, {args.prompts} prompts, images: {layout})")
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
