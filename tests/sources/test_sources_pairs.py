"""The pairs source: layout detection (mDPO, RLAIF-V, TRL, HA-DPO, POVID), column maps, skips."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import (
    jpeg_bytes,
    make_ha_dpo_json,
    make_mdpo_json,
    make_rlaif_v_parquet,
    make_trl_pairs,
    mdpo_prompt,
)

from mdpo_data.sources.records import BadRow, Candidate, Skip
from mdpo_data.sources import SourceError, open_source
from mdpo_data.sources.pairs import clean_question, message_text


def run(path, **options):
    items = list(open_source("pairs", path=str(path), **options))
    return (
        [c for c in items if isinstance(c, Candidate)],
        Counter(s.reason for s in items if isinstance(s, Skip)),
        items,
    )


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- mDPO authors' json


def test_mdpo_json_strips_the_chat_template_and_resolves_both_img_path_forms(tmp_path):
    built = make_mdpo_json(tmp_path, rows=6, seed=2)
    candidates, skips, _ = run(built.data, image_root=built.images)
    assert not skips and len(candidates) == 6
    for c, record in zip(candidates, built.records):
        assert mdpo_prompt(c.question) == record["prompt"]  # exactly the question, nothing else
        assert (c.chosen, c.rejected) == (record["chosen"], record["rejected"])
        assert c.source_id == record["img_path"].split("/")[-1][:-4] and c.meta == {
            "layout": "mdpo"
        }
    assert built.records[1]["img_path"].startswith("images/")
    assert candidates[1].image.load() == jpeg_bytes(2 * 100003 + 1)


@pytest.mark.parametrize(
    "prompt, question",
    [
        (mdpo_prompt("How many dogs?"), "How many dogs?"),
        ("USER: <image>\nWhat is it? ASSISTANT:", "What is it?"),
        ("Describe the scene.\n<image>", "Describe the scene."),
        ("Plain question about the USER: field?", "Plain question about the USER: field?"),
    ],
)
def test_clean_question(prompt, question):
    assert clean_question(prompt) == question


def test_mdpo_bad_rows(tmp_path):
    built = make_mdpo_json(tmp_path, rows=5, bad=True)
    candidates, skips, _ = run(built.data, image_root=built.images)
    assert skips == {"image_path_escapes_root": 1, "image_missing": 1, "empty_response": 1}
    assert (tmp_path / "evil.jpg").exists()
    missing_rejected = [c for c in candidates if c.row == built.bad["no_rejected"][0]]
    assert len(missing_rejected) == 1 and missing_rejected[0].rejected is None


def test_path_images_without_image_root_fail_fast_with_the_fix(tmp_path):
    built = make_mdpo_json(tmp_path, rows=3)  # images are in merged_images/, not beside the json
    with pytest.raises(SourceError, match="not found beside the data file; pass --image-root"):
        open_source("pairs", path=str(built.data))


# ---------------------------------------------------------------- RLAIF-V, TRL, HA-DPO, POVID


def test_rlaif_v_parquet_keeps_images_on_disk(tmp_path):
    built = make_rlaif_v_parquet(tmp_path, rows=10, seed=1, row_group_size=4)
    candidates, skips, _ = run(built.root)
    assert not skips and len(candidates) == 10
    c = candidates[7]
    assert (
        c.image.kind == "parquet"
        and c.image.index == 7
        and c.image.path == "image"
        and not c.image.data
    )
    assert c.image.load() == built.records[7]["image"]["bytes"]
    assert c.source_id == "OmniLMM-12B_VQAv2_7" and c.question == built.records[7]["question"]
    assert c.meta == {"layout": "rlaif-v", "ds_name": "RLAIF-V", "origin_dataset": "VQAv2"}


def test_rlaif_v_null_image_fails_only_when_loaded(tmp_path):
    built = make_rlaif_v_parquet(tmp_path, rows=3, bad=["null_image", "bomb_image"])
    candidates, skips, _ = run(built.root)
    assert len(candidates) == 5 and not skips  # images are not read while listing
    with pytest.raises(BadRow, match="image_missing"):
        candidates[built.bad["null_image"][0]].image.load()


def test_trl_parquet_with_an_images_list(tmp_path):
    built = make_trl_pairs(tmp_path, rows=10, seed=3)
    candidates, skips, _ = run(built.root)
    assert not skips and len(candidates) == 10
    assert candidates[0].question == built.records[0]["prompt"][0]["content"][1]["text"]
    assert candidates[0].chosen == built.records[0]["chosen"][0]["content"][0]["text"]
    assert [c.rejected is None for c in candidates] == [i % 5 == 4 for i in range(10)]
    assert candidates[2].image.kind == "bytes" and candidates[2].image.load() == jpeg_bytes(
        3 * 100003 + 2
    )


def test_trl_jsonl_with_a_single_image_path(tmp_path):
    built = make_trl_pairs(tmp_path, rows=4, fmt="jsonl", single=True)
    candidates, skips, _ = run(built.root)
    assert not skips and [c.image.path for c in candidates] == [f"images/{i}.jpg" for i in range(4)]


def test_trl_rows_with_several_images_are_skipped(tmp_path):
    rows = [
        {"images": ["a.jpg", "a.jpg"], "prompt": "Q?", "chosen": "yes", "rejected": "no"},
        {"images": [], "prompt": "Q?", "chosen": "yes", "rejected": "no"},
    ]
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(0))
    _, skips, items = run(write_jsonl(tmp_path / "d.jsonl", rows), image_root=tmp_path)
    assert skips == {"not_one_image": 2} and items[0].detail == "2 images"


def test_ha_dpo_reject_column_and_bare_image_ids(tmp_path):
    built = make_ha_dpo_json(tmp_path, rows=4)
    candidates, skips, _ = run(built.data, image_root=built.images)
    assert not skips and candidates[1].image.path == "2350001.jpg"
    assert (
        candidates[1].rejected == built.records[1]["reject"]
        and candidates[1].source_id == "2350001"
    )


def test_povid_conversations(tmp_path):
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes(1))
    row = {
        "id": "povid-1",
        "image": "x.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "A cat."},
        ],
        "rejected_conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "A dog."},
        ],
    }
    (c,), _, _ = run(write_jsonl(tmp_path / "povid.jsonl", [row]))
    assert (c.question, c.chosen, c.rejected, c.source_id) == (
        "What is shown?",
        "A cat.",
        "A dog.",
        "povid-1",
    )


# ---------------------------------------------------------------- column maps and errors


def test_column_map_reads_any_layout(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "p.jpg").write_bytes(jpeg_bytes(5))
    rows = [{"uid": "u1", "pic": "p.jpg", "q": "Colour?", "good": "Red.", "bad": "Blue."}]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    columns = {"image": "pic", "question": "q", "chosen": "good", "rejected": "bad", "id": "uid"}
    (c,), _, _ = run(path, image_root=tmp_path / "pics", columns=columns)
    assert (c.source_id, c.question, c.chosen, c.rejected, c.meta["layout"]) == (
        "u1",
        "Colour?",
        "Red.",
        "Blue.",
        "mapped",
    )
    del columns["rejected"]
    (c,), _, _ = run(path, image_root=tmp_path / "pics", columns=columns)
    assert c.rejected is None  # gold-only data: bootstrapped later


def test_unknown_layout_lists_the_columns_and_the_columns_syntax(tmp_path):
    path = write_jsonl(
        tmp_path / "custom.jsonl", [{"pic": "p.jpg", "q": "?", "good": "a", "bad": "b"}]
    )
    with pytest.raises(SourceError) as error:
        open_source("pairs", path=str(path))
    message = str(error.value)
    assert "columns found: bad, good, pic, q" in message
    assert "--columns image=COL,question=COL,chosen=COL[,rejected=COL][,id=COL]" in message


@pytest.mark.parametrize(
    "columns, match",
    [
        (
            {"image": "pic", "question": "q", "chosen": "good", "picture": "x"},
            "unknown --columns key.*picture",
        ),
        ({"image": "pic", "chosen": "good"}, "must map question"),
        (
            {"image": "pic", "question": "query", "chosen": "good"},
            r"question=query: no such column.*columns found: bad, good, pic, q",
        ),
    ],
)
def test_bad_column_maps_are_clear_errors(tmp_path, columns, match):
    path = write_jsonl(
        tmp_path / "custom.jsonl", [{"pic": "p.jpg", "q": "?", "good": "a", "bad": "b"}]
    )
    with pytest.raises(SourceError, match=match):
        open_source("pairs", path=str(path), columns=columns)


def test_malformed_lines_and_degenerate_rows_are_counted(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(0))
    good = {"image": "a.jpg", "question": "Q?", "chosen": "yes", "rejected": "no"}
    rows = [
        good,
        '{"image": "a.jpg", "question": ',
        "[1, 2]",
        {**good, "rejected": "yes"},
        {**good, "question": "<image>"},
        {**good, "image": "../a.jpg"},
        {**good, "image": "/etc/passwd"},
        {**good, "chosen": None},
        good,
    ]
    candidates, skips, items = run(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [c.row for c in candidates] == [0, 8]
    assert skips == {
        "malformed_json": 1,
        "malformed_record": 1,
        "identical_responses": 1,
        "empty_question": 1,
        "image_path_escapes_root": 2,
        "empty_response": 1,
    }
    assert items[1].where == "d.jsonl:2"


def test_a_folder_of_files_numbers_rows_across_files(tmp_path):
    built = make_trl_pairs(tmp_path / "a", rows=3)
    make_trl_pairs(tmp_path / "b", rows=2)
    candidates, _, _ = run(tmp_path)
    assert [c.row for c in candidates] == [0, 1, 2, 3, 4]
    assert candidates[3].image.load() == jpeg_bytes(0)
    assert built.data.name == "train.parquet"


def test_parquet_with_a_mapped_embedded_image_column(tmp_path):
    table = pa.table(
        {
            "photo": pa.array(
                [{"bytes": jpeg_bytes(9), "path": None}],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "ask": ["Q?"],
            "win": ["A."],
            "lose": ["B."],
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    (c,), _, _ = run(
        tmp_path / "x.parquet",
        columns={"image": "photo", "question": "ask", "chosen": "win", "rejected": "lose"},
    )
    assert c.image.kind == "parquet" and c.image.load() == jpeg_bytes(9)


def test_pairs_needs_a_path(tmp_path):
    with pytest.raises(SourceError, match="needs --source-path"):
        open_source("pairs")
    with pytest.raises(SourceError, match="no .json, .jsonl or .parquet files"):
        open_source("pairs", path=str(tmp_path))


def test_messages_stored_as_a_struct_of_lists_read_like_a_list_of_messages():
    columnar = {
        "role": ["user", "assistant"],
        "content": [
            {"type": ["image", "text"], "text": [None, "Q?"]},
            {"type": ["text"], "text": ["A."]},
        ],
    }
    assert message_text(columnar, ("user",)) == "Q?"
    assert message_text(columnar, ("assistant",)) == "A."
    assert message_text([{"from": "gpt", "value": "B."}], ("assistant", "gpt")) == "B."
