"""The statistics `inspect` and the data card compute over a build's Arrow shards: pyarrow
(the code) against polars, in one run.

Writes scored-shard-shaped Arrow stream files once (ids, source, a ~30 KB image per row, the
reference log-prob and token columns with some nulls), then computes the image-reliance
statistics (`mdpo_data.report.reliance.reliance_stats`) and the distinct sources, each way in a
fresh subprocess so peak memory (ru_maxrss) is its own:
  pyarrow       - the code: shards memory-mapped (`read_shard`), concatenated, to numpy
  polars-io     - `polars.read_ipc_stream` of the needed columns, statistics in polars
  polars-arrow  - the memory-mapped tables handed to polars (`from_arrow`), statistics in polars
and prints seconds (after imports), peak RSS and the ratios to pyarrow; the gap means must agree.

    python benchmarks/bench_stats.py               # 100K rows in 10 shards (~3 GB, in /tmp)
    python benchmarks/bench_stats.py --rows 20000  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

COMMON = """
import json, resource, sys, time
from pathlib import Path
files = sorted(Path(sys.argv[1]).glob("train-*.arrow"))
COLS = ["ref_chosen_logps", "ref_chosen_rejected_image_logps", "ref_chosen_noimage_logps", "chosen_tokens"]
"""

PYARROW = COMMON + """
import pyarrow as pa, pyarrow.compute as pc
from mdpo_data.report.reliance import reliance_stats
from mdpo_data.format.shards import read_shard
started = time.perf_counter()  # after the imports (mdpo_data.format.schema imports datasets: ~1 s)
table = pa.concat_tables([read_shard(f) for f in files])
stats = reliance_stats(table)
sources = sorted(v for v in pc.unique(table["source"]).to_pylist() if v is not None)
mean = stats["rejected_image"]["mean"]
"""

POLARS = COMMON + """
import polars as pl
import pyarrow as pa
from mdpo_data.format.shards import read_shard
started = time.perf_counter()
if sys.argv[2] == "polars-io":
    frame = pl.concat([pl.read_ipc_stream(f, columns=COLS + ["source"]) for f in files])
else:
    frame = pl.from_arrow(pa.concat_tables([read_shard(f).select(COLS + ["source"]) for f in files]))
gap = (pl.col("ref_chosen_logps") - pl.col("ref_chosen_rejected_image_logps")).drop_nans()
out = frame.select(
    mean=gap.mean(), n=gap.count(),
    share=(gap <= 0).mean(),
    **{f"p{q}": gap.quantile(q / 100, "linear") for q in (5, 25, 50, 75, 95)},
    per_token=(gap / pl.col("chosen_tokens")).mean(),
    no_image=(pl.col("ref_chosen_logps") - pl.col("ref_chosen_noimage_logps")).mean(),
).row(0, named=True)
sources = sorted(frame["source"].drop_nulls().unique().to_list())
mean = out["mean"]
"""

REPORT = """
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mean": mean, "sources": sources}))
"""


def make_shards(root: Path, rows: int, shards: int = 10, seed: int = 0) -> Path:
    done = root / f".done-{rows}-{shards}-{seed}"
    if done.exists():
        return root
    import numpy as np
    import pyarrow as pa

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = os.urandom(30_000)
    per = -(-rows // shards)
    for index in range(shards):
        n = min(per, rows - index * per)
        chosen = rng.normal(-40, 10, n)
        flipped = chosen - rng.normal(2, 3, n)
        flipped[rng.random(n) < 0.02] = np.nan  # unscored rows (stored as null)
        columns = {
            "example_id": [f"silkie-{index * per + i:08d}-0" for i in range(n)],
            "source": ["silkie" if i % 3 else "pairs" for i in range(n)],
            "images": [[{"bytes": image + i.to_bytes(4, "little"), "path": None}] for i in range(n)],
            "ref_chosen_logps": chosen,
            "ref_chosen_rejected_image_logps": pa.array(flipped, from_pandas=True),
            "ref_chosen_noimage_logps": chosen - rng.normal(5, 3, n),
            "chosen_tokens": rng.integers(20, 400, n),
        }
        table = pa.table(columns)
        with pa.OSFile(str(root / f"train-{index:05d}-of-{shards:05d}.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=1000)
    done.touch()
    return root


def measure(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code + REPORT, *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.data or Path(f"/tmp/mdpo-bench-stats-{args.rows}")
    if args.make_only:
        make_shards(root, args.rows)
        return
    # written by a child process: a child's ru_maxrss starts from its parent's at fork
    subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--data", str(root),
                    "--make-only"], check=True)
    size = sum(f.stat().st_size for f in root.glob("*.arrow")) / 1e9
    print(f"shards: {root} ({size:.2f} GB, {args.rows} rows)")
    runs = {"pyarrow": measure(PYARROW, str(root))}
    for way in ("polars-io", "polars-arrow"):
        runs[way] = measure(POLARS, str(root), way)
    base = runs["pyarrow"]
    for way, run in runs.items():
        print(f"{way:<13}: {run['seconds']:6.3f} s  peak RSS {run['rss_mb']:6.0f} MB  "
              f"({run['seconds'] / base['seconds']:5.2f}x time, {run['rss_mb'] / base['rss_mb']:5.2f}x RSS; "
              f"mean gap {run['mean']:.4f}, sources {run['sources']})")
    assert all(abs(r["mean"] - base["mean"]) < 1e-9 and r["sources"] == base["sources"] for r in runs.values())


if __name__ == "__main__":
    main()
