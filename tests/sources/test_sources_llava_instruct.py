"""The llava-instruct source: gold answers from LLaVA-Instruct-150K over COCO images."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fixtures import jpeg_bytes, make_llava_instruct

from mdpo_data.sources.records import Candidate, Skip
from mdpo_data.sources import SourceError, open_source
from mdpo_data.sources.readers import strip_image_tag


def run(path, image_root):
    items = list(open_source("llava-instruct", path=str(path), image_root=str(image_root)))
    return (
        [c for c in items if isinstance(c, Candidate)],
        Counter(s.reason for s in items if isinstance(s, Skip)),
        items,
    )


def test_first_exchange_becomes_a_gold_candidate(tmp_path):
    built = make_llava_instruct(tmp_path, rows=6, seed=4)
    candidates, skips, _ = run(built.root, built.images)
    assert not skips and [c.row for c in candidates] == list(range(6))
    for c, record in zip(candidates, built.records):
        human, gpt = record["conversations"][0]["value"], record["conversations"][1]["value"]
        assert "<image>" not in c.question and c.question == human.replace("<image>", "").strip()
        assert c.chosen == gpt and c.rejected is None  # the first answer, not a later turn's
        assert (
            c.source_id == record["id"]
            and c.image.kind == "file"
            and c.image.path == record["image"]
        )
    assert len(built.records[0]["conversations"]) == 4  # multi-turn rows are in the fixture
    assert candidates[2].image.load() == jpeg_bytes(4 * 100003 + 2)


@pytest.mark.parametrize(
    "text, question",
    [
        ("<image>\nWhat is this?", "What is this?"),
        ("What is this?\n<image>", "What is this?"),
        ("What is this?", "What is this?"),
        ("  <image>\n  Describe it.  ", "Describe it."),
    ],
)
def test_image_tag_is_stripped_in_both_positions(text, question):
    assert strip_image_tag(text) == question


def test_path_may_be_the_json_file_or_its_folder(tmp_path):
    built = make_llava_instruct(tmp_path, rows=3)
    assert len(run(built.data, built.images)[0]) == 3
    assert len(run(built.root, built.images)[0]) == 3


def test_image_root_is_required_and_must_be_a_folder(tmp_path):
    built = make_llava_instruct(tmp_path, rows=2)
    with pytest.raises(SourceError, match="llava-instruct needs --image-root.*COCO train2017"):
        open_source("llava-instruct", path=str(built.root))
    with pytest.raises(SourceError, match="is not a folder"):
        open_source("llava-instruct", path=str(built.root), image_root=str(tmp_path / "missing"))


def test_a_folder_without_the_default_file_lists_what_it_found(tmp_path):
    built = make_llava_instruct(tmp_path, rows=2)
    built.data.rename(tmp_path / "detail_23k.json")
    (tmp_path / "conversation_58k.json").write_text("[]")
    with pytest.raises(
        SourceError, match="no llava_instruct_150k.json.*conversation_58k.json, detail_23k.json"
    ):
        open_source("llava-instruct", path=str(tmp_path), image_root=str(built.images))
    assert len(run(tmp_path / "detail_23k.json", built.images)[0]) == 2


def test_bad_records_are_counted_skips(tmp_path):
    built = make_llava_instruct(tmp_path, rows=10, bad=True)
    candidates, skips, items = run(built.root, built.images)
    assert skips == {
        "image_path_escapes_root": 1,
        "image_missing": 1,
        "empty_response": 1,
        "missing_field": 1,
        "malformed_record": 1,
    }
    # corrupt and truncated jpgs are a later stage's business: the source never decodes images
    assert len(candidates) == 12
    escape = next(s for s in items if isinstance(s, Skip) and s.reason == "image_path_escapes_root")
    assert escape.where == f"llava_instruct_150k.json:{built.bad['escaping_path'][0]}"
    assert (tmp_path / "outside.jpg").exists()


def test_subfolder_style_image_names_fall_back_to_the_bare_name(tmp_path):
    built = make_llava_instruct(tmp_path, rows=2)
    records = built.records
    records[0]["image"] = "coco/train2017/" + records[0]["image"]
    built.data.write_text(json.dumps(records))
    bare = records[0]["image"].split("/")[-1]
    candidates, skips, _ = run(built.data, built.images)
    assert len(candidates) == 2 and not skips and candidates[0].image.path == bare
    assert candidates[0].image.load() == (built.images / bare).read_bytes()


def test_a_broken_json_array_is_a_clear_error_naming_the_file(tmp_path):
    built = make_llava_instruct(tmp_path, rows=2)
    built.data.write_text('[{"id": "1", "image": "a.jpg"},')
    with pytest.raises(SourceError, match="llava_instruct_150k.json is not a valid JSON array"):
        open_source("llava-instruct", path=str(built.data), image_root=str(built.images))
