"""What verifying a data folder before training costs: `mdpo_data.format.integrity.verify_shards`
(sha256 of every shard, streamed in 1 MiB blocks, then an Arrow row count) on a synthetic
10K-row, ~1 GB folder, against the baseline of just reading the same bytes, in the same run.

    python benchmarks/bench_verify.py                 # 10K rows x ~100 KB = ~1 GB, in a temp dir
    python benchmarks/bench_verify.py --rows 2000     # quicker

The folder is written to a temp dir and deleted afterwards. Numbers are with the files in the
page cache (just written), so they measure hashing, not the disk; a cold read from a network
filesystem adds its read time to both lines alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from mdpo_data.format import schema
from mdpo_data.format.integrity import verify_shards
from mdpo_data.format.manifest import Counts, Manifest, ShardEntry
from mdpo_data.format.shards import shard_name, sha256_file, write_shard


def make_folder(directory: Path, rows: int, shard_size: int, image_kb: int) -> Manifest:
    """Shards of rows with random (not decodable: never decoded here) image bytes + a manifest
    listing them, as a build would."""
    rng_bytes = os.urandom(image_kb * 1024 * 4)
    splits = {"train": []}
    n_shards = -(-rows // shard_size)
    for index in range(n_shards):
        def batches(index=index):
            start = index * shard_size
            for lo in range(start, min(rows, start + shard_size), 64):
                batch = []
                for i in range(lo, min(rows, start + shard_size, lo + 64)):
                    offset = (i * 7919) % (len(rng_bytes) - 2 * image_kb * 1024)
                    image = rng_bytes[offset : offset + image_kb * 512]
                    rejected = rng_bytes[offset + image_kb * 512 : offset + image_kb * 1024]
                    batch.append(schema.make_row(
                        example_id=f"bench-{i:08d}", source="bench", source_id=str(i), source_row=i,
                        seed=i, question="What is shown?", chosen="A red circle.", rejected="A cat.",
                        image=image, rejected_image=rejected, rejected_image_strategy="crop:0-0.2"))
                yield batch
        name = shard_name("train", index, n_shards)
        count = write_shard(directory / name, batches())
        splits["train"].append(ShardEntry(file=name, rows=count, sha256=sha256_file(directory / name)))
    return Manifest(format_version=schema.FORMAT_VERSION, config={}, counts=Counts(), splits=splits,
                    reference=None)


def read_all(directory: Path) -> int:
    total = 0
    for path in sorted(directory.glob("*.arrow")):
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                total += len(block)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--image-kb", type=int, default=100, help="bytes of both images per row, KB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="mdpo-bench-verify-"))
    try:
        start = time.perf_counter()
        manifest = make_folder(directory, args.rows, args.shard_size, args.image_kb)
        size = sum(p.stat().st_size for p in directory.glob("*.arrow"))
        print(f"folder: {args.rows} rows in {len(manifest.splits['train'])} shards, "
              f"{size / 1e9:.2f} GB (written in {time.perf_counter() - start:.1f}s)")
        read_s, verify_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            read_all(directory)
            read_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            report = verify_shards(directory, manifest)
            verify_s.append(time.perf_counter() - t)
        best_read, best_verify = min(read_s), min(verify_s)
        print(f"read only (baseline):   {best_read:6.2f}s  {size / best_read / 1e9:5.2f} GB/s")
        print(f"verify (sha256 + rows): {best_verify:6.2f}s  {size / best_verify / 1e9:5.2f} GB/s  "
              f"({best_verify / best_read:.1f}x the plain read; {report['rows']} rows checked)")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
