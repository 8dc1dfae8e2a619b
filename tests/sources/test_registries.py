"""The data side's registries (sources, image kinds, rejected-response kinds), the worker's
Skip records, and the parquet projection that keeps image bytes out of a plan."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import jpeg_bytes

from mdpo_data import sources
from mdpo_data.bpo.spec import RESPONSE_KINDS, INJECT_PROMPT, parse_response_strategy
from mdpo_data.build.stage import _write_one_shard, plan
from mdpo_data.config.build import BuildConfig
from mdpo_data.sources.records import IMAGE_KINDS, BadRow, Candidate, ImageKind, ImageRef, Skip, image_kind
from mdpo_data.sources.records import register_image_kind
from mdpo_data.format.shards import read_shard
from mdpo_data.sources import SourceError, open_source
from mdpo_data.sources.readers import iter_records
from mdpo_data.build.worker import Task, make_example

# ------------------------------------------------------------------------------- sources


def test_every_fact_about_a_source_comes_from_its_registry_entry():
    assert sources.names() == ("silkie", "llava-instruct", "pairs", "demo") == sources.SOURCE_NAMES
    for name in sources.names():
        entry = sources.get(name)
        assert entry.name == name
        assert sources.LICENSES[name] == entry.license
        assert sources.CITATIONS[name] == entry.citation
        assert entry.module.startswith("mdpo_data.sources.")
    assert sources.get("silkie").hub_id == "MMInstruction/VLFeedback"
    assert sources.get("demo").hub_id is None and sources.get("pairs").hub_id is None
    assert "llava" in sources.subset_names()
    assert sources.get("silkie").subsets["llava"] == "llava-"


@pytest.mark.parametrize("lookup", [sources.get, open_source])
def test_an_unknown_source_names_every_known_one(lookup):
    with pytest.raises(SourceError) as error:
        lookup("silky")
    assert "'silky'" in str(error.value)
    for name in sources.names():
        assert name in str(error.value)


def test_the_cli_offers_the_registered_sources():
    from click.testing import CliRunner

    from mdpo_data.cli import main

    result = CliRunner().invoke(main, ["build", "--source", "silky"])
    assert result.exit_code != 0
    for name in sources.names():
        assert name in result.output


def test_the_demo_source_shapes_the_plan_through_its_hooks():
    base = dict(source="demo", n=20, demo_size=40, eval_fraction=0.25)
    plain, _, _, _ = plan(BuildConfig(**base))
    assert all(c.rejected is not None for rows in plain.values() for c in rows)
    # --rejected-response: the demo stands in for a gold-answer source
    gold, _, _, _ = plan(BuildConfig(**base, rejected_response="weaken"))
    assert all(c.rejected is None for rows in gold.values() for c in rows)
    # --demo-style-shortcut: train pairs re-phrased, eval pairs untouched
    styled, _, _, _ = plan(BuildConfig(**base, demo_style_shortcut=1.0))
    assert styled["eval"] == plain["eval"]
    assert [c.example_id for c in styled["train"]] == [c.example_id for c in plain["train"]]
    assert [c.chosen for c in styled["train"]] != [c.chosen for c in plain["train"]]


def test_a_registered_source_is_built_without_any_name_test():
    """A new source is one class: the plan calls its hooks, `open_source` its stream."""

    class Reversed(sources.Source):
        name = "demo-reversed"
        module = "mdpo_data.sources.demo"
        uses = frozenset({"seed", "demo_size", "first_row"})

        def after_sampling(self, config, sampled):
            return list(reversed(sampled))

    sources.register(Reversed)
    try:
        assert "demo-reversed" in sources.names()
        ours, _, _, _ = plan(BuildConfig(source="demo-reversed", n=10, demo_size=30))
        demo, _, _, _ = plan(BuildConfig(source="demo", n=10, demo_size=30))
        assert [c.example_id for c in ours["train"]] == [c.example_id for c in reversed(demo["train"])]
    finally:
        del sources.SOURCES["demo-reversed"]


# ------------------------------------------------------------------------------- image kinds


def test_image_kinds_are_looked_up_in_their_registry(tmp_path):
    assert {"bytes", "file", "zip", "parquet"} <= set(IMAGE_KINDS)
    with pytest.raises(ValueError, match="unknown ImageRef kind 'jpeg'; known kinds: bytes, demo, file"):
        ImageRef("jpeg").load()
    data = jpeg_bytes(1)
    (tmp_path / "a.jpg").write_bytes(data)
    assert ImageRef("file", root=str(tmp_path), path="a.jpg").load() == data
    assert ImageRef("bytes", data=data).load() == data
    assert ImageRef("bytes", data=data).key.startswith("sha256:")
    with pytest.raises(BadRow, match="image_missing"):
        ImageRef("file", root=str(tmp_path), path="b.jpg").load()


def test_a_registered_image_kind_loads_and_is_fingerprinted():
    @register_image_kind
    class Solid(ImageKind):
        name = "solid-test"

        def load(self, ref, max_bytes):
            return ref.data * 2

    try:
        ref = ImageRef("solid-test", root="/nowhere", data=b"ab")
        assert ref.load() == b"abab" and image_kind("solid-test").name == "solid-test"
        assert ref.identity() == ["solid-test", "", 0, "missing"]  # its root is no file
    finally:
        del IMAGE_KINDS["solid-test"]


def test_file_identity_follows_the_file_and_inline_identity_the_data(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    ref = ImageRef("file", root=str(tmp_path), path="a.jpg")
    before = ref.identity()
    path.write_bytes(b"xy")
    assert ref.identity() != before and ref.identity()[:3] == ["file", "a.jpg", 0]
    assert ImageRef("bytes", data=b"1").identity() != ImageRef("bytes", data=b"2").identity()


def test_records_does_not_import_the_demo_source_until_a_demo_image_is_loaded():
    code = (
        "import sys\n"
        "from mdpo_data.sources.records import IMAGE_KINDS, ImageRef\n"
        "assert 'mdpo_data.sources.demo' not in sys.modules and 'demo' not in IMAGE_KINDS\n"
        "from mdpo_data.sources import open_source\n"
        "candidate = next(iter(open_source('demo', demo_size=1)))\n"
        "ref = ImageRef('demo', index=candidate.image.index, data=candidate.image.data)\n"
        "assert ref.load()[:4] == b'\\x89PNG' and 'demo' in IMAGE_KINDS\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ------------------------------------------------------------------------------- responses


def test_rejected_response_kinds_carry_what_the_build_and_bpo_ask():
    assert set(RESPONSE_KINDS) == {"weaken", "inject"}
    weaken, inject = parse_response_strategy("weaken:300"), parse_response_strategy("inject")
    assert weaken.handler is RESPONSE_KINDS["weaken"] and weaken.resolved == "weaken:300"
    assert (weaken.prompt, weaken.uses_seed) == (None, True)
    assert (inject.prompt, inject.uses_seed) == (INJECT_PROMPT, False)
    assert weaken.generating_model("vlm", "llm") == "vlm"
    assert inject.generating_model("vlm", "llm") == "llm"
    assert "--ref-model" in weaken.missing_model(None, "llm")
    assert "--inject-model" in inject.missing_model("vlm", None)
    assert weaken.missing_model("vlm", None) is None and inject.missing_model(None, "llm") is None
    with pytest.raises(ValueError, match="unknown strategy 'weakn'.*Valid forms: weaken"):
        parse_response_strategy("weakn")


# ------------------------------------------------------------------------------- worker skips


def _task(image: ImageRef, row: int) -> Task:
    candidate = Candidate("pairs", row, f"id{row}", image, "What?", "A red car.", "A blue car.")
    return Task(candidate, None, "crop:0-0.2", 7, 40_000_000, "source")


def test_the_worker_returns_a_row_or_a_skip_and_the_shard_counts_the_skips(tmp_path):
    good = _task(ImageRef("bytes", data=jpeg_bytes(3)), 0)
    bad = _task(ImageRef("file", root=str(tmp_path), path="gone.jpg"), 1)
    skip = make_example(bad)
    assert isinstance(skip, Skip) and skip.reason == "image_missing" and skip.row == 1
    assert "pairs row 1" in skip.where and "gone.jpg" in skip.detail
    row = make_example(good)
    assert isinstance(row, dict) and row["example_id"] == "pairs-00000000-0"
    skipped, stats, seen = Counter(), Counter(), []
    rows = _write_one_shard(tmp_path / "train-00000-of-00001.arrow", [good, bad, good], 1, None,
                            skipped, lambda: seen.append(1), stats)
    assert rows == 2 and skipped == {"image_missing": 1} and len(seen) == 3
    assert read_shard(tmp_path / "train-00000-of-00001.arrow").num_rows == 2


# ------------------------------------------------------------------------------- parquet


def _bytes_read() -> int:
    with open("/proc/self/io") as handle:
        return int(next(line for line in handle if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_a_parquet_plan_reads_the_text_columns_and_not_the_image_bytes(tmp_path):
    rows = 300
    image = os.urandom(50_000)  # incompressible: 15 MB of image bytes in all
    table = pa.table({
        "question": [f"question {i}" for i in range(rows)],
        "chosen": [f"chosen {i}" for i in range(rows)],
        "image": [{"bytes": image + bytes([i % 256]), "path": f"{i}.jpg"} for i in range(rows)],
    })
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=50)
    total = path.stat().st_size

    start = _bytes_read()
    records = list(iter_records([path], tmp_path, skip_columns=["image"]))
    projected = _bytes_read() - start
    assert len(records) == rows and records[7].data == {"question": "question 7", "chosen": "chosen 7"}
    assert projected < total / 10, (projected, total)

    start = _bytes_read()
    everything = list(iter_records([path], tmp_path))
    assert _bytes_read() - start > total / 2  # the same reader does read the bytes when asked
    assert everything[7].data["image"]["path"] == "7.jpg"

    ref = ImageRef("parquet", root=str(path), path="image", index=123)
    start = _bytes_read()
    assert ref.load() == image + bytes([123])  # one row group of one column, not the file
    assert _bytes_read() - start < total / 3


# ------------------------------------------------------------------------------- image strategies


def test_rejected_image_strategies_are_parsed_through_their_registry():
    from mdpo_data.rejected.registry import STRATEGIES, SpecError, parse_spec

    assert set(STRATEGIES) == {"crop", "swap", "moco", "noise", "albumentations"}
    for spec, cls in (("crop", "Crop"), ("swap", "Swap"), ("moco", "Moco"), ("noise:10", "Noise")):
        strategy = parse_spec(spec)
        assert type(strategy) is STRATEGIES[strategy.name] and type(strategy).__name__ == cls
    assert parse_spec(" Crop:0-0.5 ").resolved == "crop:0.01-0.5"
    with pytest.raises(SpecError, match="unknown strategy 'blur'.*Valid forms: crop"):
        parse_spec("blur")
    with pytest.raises(SpecError, match="moco takes no argument"):
        parse_spec("moco:2")


def test_an_image_names_a_row_without_an_id_only_when_it_is_a_file(tmp_path):
    assert ImageRef("file", root=str(tmp_path), path="coco/0001.jpg").id_hint() == "0001"
    assert ImageRef("bytes", data=b"x").id_hint() is None
    assert ImageRef("parquet", root="x.parquet", path="image", index=3).id_hint() is None


def test_image_identity_changes_with_the_image_and_only_then(tmp_path):
    """`ImageRef.identity()` (build's resume fingerprint) names each kind's content: a
    rewritten file or archive changes it, a missing one is marked, inline bytes are hashed."""
    import os
    import zipfile

    (tmp_path / "a.jpg").write_bytes(b"x")
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as archive:
        archive.writestr("merged_images/a.jpg", b"x")
    demo = next(iter(open_source("demo", demo_size=1))).image
    file_ref = ImageRef("file", root=str(tmp_path), path="a.jpg")
    zip_ref = ImageRef("zip", root=str(tmp_path / "m.zip"), path="merged_images/a.jpg")
    refs = [file_ref, zip_ref, ImageRef("file", root=str(tmp_path), path="gone.jpg"),
            ImageRef("parquet", root=str(tmp_path / "none.parquet"), path="image", index=4),
            ImageRef("bytes", data=b"abc"), demo]
    before = [ref.identity() for ref in refs]
    assert before == [ref.identity() for ref in refs]  # stable
    assert before[0][0] == "file" and "missing" in before[2] and "missing" in before[3]
    assert ImageRef("bytes", data=b"abd").identity() != before[4]
    (tmp_path / "a.jpg").write_bytes(b"xy")
    os.utime(tmp_path / "m.zip", ns=(1, 1))
    assert file_ref.identity() != before[0] and zip_ref.identity() != before[1]

