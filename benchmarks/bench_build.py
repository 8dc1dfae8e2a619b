"""Build throughput against its floor, in one process.

Writes a VLFeedback-layout source (jsonl + merged_images/ of ~500 px JPEGs), then measures:
  floor  - decode + crop + encode of the same images in one tight loop (the unavoidable work)
  build  - `run_build` end to end (source parse, sampling, image work, Arrow shards, manifest)
           with 1 worker and with 2 workers
and prints rows/s and the ratios. Targets: build(1 worker) >= 0.7 x floor; 2 workers near 2x.

    python benchmarks/bench_build.py --n 5000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")


def make_source(root: Path, n_rows: int, n_images: int, size: int, seed: int = 0) -> None:
    """n_rows VLFeedback rows over n_images distinct ~size px JPEGs (photo-like noise + shapes)."""
    rng = np.random.default_rng(seed)
    images = root / "merged_images"
    images.mkdir(parents=True)
    for i in range(n_images):
        h, w = size, int(size * rng.uniform(0.75, 1.33))
        base = rng.integers(0, 255, size=(1, 1, 3))
        grad = np.linspace(0, 1, w)[None, :, None] * rng.integers(0, 255, size=(1, 1, 3))
        noise = rng.normal(0, 25, size=(h, w, 3))
        pixels = np.clip(base * 0.5 + grad * 0.5 + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"img-{i}.jpg", quality=90)
    with open(root / "vlfeedback_80k.jsonl", "w") as handle:
        for r in range(n_rows):
            image_id = f"img-{r % n_images}"
            completions = []
            for k in range(4):
                ratings = {a: {"Rating": str(1 + (r + k) % 4), "Rationale": "ok"} for a in ASPECTS}
                completions.append({"annotations": ratings, "model": f"m{k}", "response": f"Answer {k} to {r}."})
            handle.write(json.dumps({"id": image_id, "prompt": f"Describe image {r}.",
                                     "models": [f"m{k}" for k in range(4)], "completions": completions}) + "\n")


def floor(files: list[Path], spec: str) -> float:
    """rows/s of decode + crop + encode alone, same functions the build uses."""
    from mdpo_data.build import images
    from mdpo_data.rejected.registry import parse_spec

    strategy = parse_spec(spec)
    started = time.perf_counter()
    for i, path in enumerate(files):
        data = path.read_bytes()
        image, fmt = images.load_image(data)
        images.encode(strategy.apply(image, i), fmt)
    return len(files) / (time.perf_counter() - started)


def build(source: Path, n: int, spec: str, workers: int) -> float:
    from mdpo_data.build.stage import run_build
    from mdpo_data.config.runtime import Runtime
    from mdpo_data.config.build import BuildConfig

    out = Path(tempfile.mkdtemp(prefix="bench-build-"))
    config = BuildConfig(source="silkie", source_path=str(source), n=n, rejected=spec, seed=0,
                         pairing="best-worst", shard_size=1000)
    started = time.perf_counter()
    result = run_build(config, out, runtime=Runtime(workers=workers), progress=False)
    elapsed = time.perf_counter() - started
    written = result.manifest.counts.written
    shutil.rmtree(out)
    return written / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="pairs to build")
    parser.add_argument("--images", type=int, default=1000, help="distinct source images")
    parser.add_argument("--size", type=int, default=500, help="image height in px")
    parser.add_argument("--rejected", default="crop:0-0.2")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-source-"))
    try:
        make_source(root, args.n, args.images, args.size)
        # The floor sees the same image sequence the build decodes: one per pair.
        files = [root / "merged_images" / f"img-{r % args.images}.jpg" for r in range(args.n)]
        floor(files[:50], args.rejected)  # warm up imports and caches
        base = floor(files, args.rejected)
        print(f"cpu cores: {os.cpu_count()}  pairs: {args.n}  images: {args.images} x ~{args.size}px  rejected: {args.rejected}")
        print(f"floor (decode + crop + encode, tight loop): {base:8.1f} rows/s")
        results = {}
        for workers in args.workers:
            results[workers] = build(root, args.n, args.rejected, workers)
            print(f"build, {workers} worker(s):                  {results[workers]:8.1f} rows/s"
                  f"   ratio to floor {results[workers] / base:.2f}")
        if 1 in results:
            for workers, rate in results.items():
                if workers > 1:
                    print(f"speed-up {workers} workers vs 1: {rate / results[1]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
