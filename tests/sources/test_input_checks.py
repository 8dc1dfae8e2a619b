"""Input rules every source shares (mdpo_data.sources.readers), through the real CLI: bytes that
are not UTF-8 are a counted skip (`invalid_utf8`), never stored as U+FFFD; a UTF-8 BOM keeps the
first row; JSON nested too deeply is a counted skip (JSON lines) or one line (a JSON array), never a
RecursionError; a build whose --out lies inside --source-path never reads its own output."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import folder_bytes, rows_of, run_cli
from fixtures import make_mdpo_json, make_rlaif_v_parquet, make_vlfeedback_jsonl

from cli_helpers import manifest_json


def _build(*args, out, check=True):
    return run_cli("build", *args, "--out", out, "--quiet", "--workers", 1, check=check)


def _silkie(built, out, n=50, check=True):
    return _build("--source", "silkie", "--source-path", built.root, "--n", n, out=out, check=check)


def _pairs(path, images, out, n=50, check=True):
    args = ["--source", "pairs", "--source-path", path] + (["--image-root", images] if images else [])
    return _build(*args, "--n", n, out=out, check=check)


def _skipped(out) -> dict:
    return manifest_json(out)["counts"]["skipped"]


def _no_replacement_char(out):
    for row in rows_of(out):
        text = json.dumps([row["prompt"], row["chosen"], row["rejected"]], ensure_ascii=False)
        assert "\ufffd" not in text


def test_jsonl_line_that_is_not_utf8_is_a_counted_skip(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=6, seed=3)
    lines = built.data.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"prompt": "', b'"prompt": "caf\xe9 \xff ', 1)
    assert b"\xff" in lines[2]
    built.data.write_bytes(b"\n".join(lines))
    _silkie(built, tmp_path / "o")
    assert _skipped(tmp_path / "o").get("invalid_utf8") == 1  # (silkie also skips rating ties)
    assert manifest_json(tmp_path / "o")["counts"]["read"] == 6
    _no_replacement_char(tmp_path / "o")


def test_json_array_record_that_is_not_utf8_is_a_counted_skip(tmp_path):
    built = make_mdpo_json(tmp_path / "src", rows=5, seed=2)
    text = built.data.read_bytes()
    first = text.index(b'"chosen": "') + len(b'"chosen": "')
    built.data.write_bytes(text[:first] + b"\xc3\x28 " + text[first:])  # an invalid 2-byte sequence
    _pairs(built.data, built.images, tmp_path / "o")
    assert _skipped(tmp_path / "o") == {"invalid_utf8": 1}
    assert len(rows_of(tmp_path / "o")) == 4
    _no_replacement_char(tmp_path / "o")


def test_an_escaped_lone_surrogate_is_no_text_either(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=4, seed=5)
    lines = built.data.read_text().split("\n")
    lines[1] = lines[1].replace('"prompt": "', '"prompt": "\\udc80 ', 1)
    built.data.write_text("\n".join(lines))
    _silkie(built, tmp_path / "o")
    assert _skipped(tmp_path / "o").get("invalid_utf8") == 1


def test_parquet_string_cell_that_is_not_utf8_is_a_counted_skip(tmp_path):
    built = make_rlaif_v_parquet(tmp_path / "src", rows=10, seed=1, row_group_size=4)
    table = pq.read_table(built.data)
    questions = [q.encode() for q in table.column("question").to_pylist()]
    questions[6] = b"what is \xff\xfe this?"
    column = pa.array(questions, pa.binary()).view(pa.string())  # no validation, as a foreign writer
    table = table.set_column(table.schema.get_field_index("question"), "question", column)
    pq.write_table(table, built.data, row_group_size=4)
    _pairs(built.root, None, tmp_path / "o")
    assert _skipped(tmp_path / "o") == {"invalid_utf8": 1}
    assert len(rows_of(tmp_path / "o")) == 9
    _no_replacement_char(tmp_path / "o")


@pytest.mark.parametrize("layout", ["jsonl", "array"])
def test_a_bom_keeps_the_first_row(tmp_path, layout):
    if layout == "jsonl":
        built = make_vlfeedback_jsonl(tmp_path / "src", rows=5, seed=4)
        built.data.write_bytes(b"\xef\xbb\xbf" + built.data.read_bytes())
        _silkie(built, tmp_path / "o")
        first = built.records[0]["prompt"]
    else:
        built = make_mdpo_json(tmp_path / "src", rows=5, seed=4)
        built.data.write_bytes(b"\xef\xbb\xbf" + built.data.read_bytes())
        _pairs(built.data, built.images, tmp_path / "o")
        first = built.records[0]["prompt"].split("<image>\n", 1)[1].split(" ASSISTANT:")[0]
    manifest = manifest_json(tmp_path / "o")
    assert not {"malformed_json", "invalid_utf8"} & set(manifest["counts"]["skipped"])
    assert manifest["counts"]["read"] == 5
    assert first in json.dumps([r["prompt"] for r in rows_of(tmp_path / "o")], ensure_ascii=False)


def test_a_bom_on_a_pairs_jsonl(tmp_path):
    built = make_mdpo_json(tmp_path / "src", rows=4, seed=6)
    records = json.loads(built.data.read_text())
    jsonl = tmp_path / "src" / "pairs.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in records).encode())
    _pairs(jsonl, built.images, tmp_path / "o")
    assert manifest_json(tmp_path / "o")["counts"]["skipped"] == {}
    assert len(rows_of(tmp_path / "o")) == 4


def test_deeply_nested_json_line_is_a_counted_skip(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "src", rows=5, seed=7)
    lines = built.data.read_text().split("\n")
    lines.insert(3, '{"id": "deep", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    built.data.write_text("\n".join(lines))
    proc = _silkie(built, tmp_path / "o")
    assert "Traceback" not in proc.stderr
    assert _skipped(tmp_path / "o").get("malformed_json") == 1


def test_deeply_nested_json_array_is_one_line(tmp_path):
    built = make_mdpo_json(tmp_path / "src", rows=3, seed=8)
    text = built.data.read_text()
    built.data.write_text(text[:-1].rstrip() + ', {"x": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    proc = _pairs(built.data, built.images, tmp_path / "o", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(errors) == 1
    assert "nested too deeply" in errors[0] and built.data.name in errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["pairs", "silkie"])
def test_out_inside_source_path_is_never_read_back(tmp_path, source):
    if source == "pairs":
        built = make_mdpo_json(tmp_path / "src", rows=6, seed=9)
        args = ["--source", "pairs", "--source-path", built.root, "--image-root", built.images]
    else:
        built = make_vlfeedback_jsonl(tmp_path / "src", rows=6, seed=9, images="folder")
        args = ["--source", "silkie", "--source-path", built.root]
    out = built.root / "builds" / "o"
    _build(*args, "--n", 50, out=out)
    first, counts = folder_bytes(out), manifest_json(out)["counts"]
    _build(*args, "--n", 50, out=out)  # a re-run: resumes, reads the same source rows
    assert manifest_json(out)["counts"] == counts and folder_bytes(out) == first
    _build(*args, "--n", 50, out=built.root / "o2")  # a second build beside the first
    assert manifest_json(built.root / "o2")["counts"] == counts


def test_llava_instruct_array_bom_and_bad_bytes(tmp_path):
    """(llava-instruct builds need a BPO model; its reader is checked through the source.)"""
    from fixtures import make_llava_instruct

    from mdpo_data.sources import open_source
    from mdpo_data.sources.records import Skip

    built = make_llava_instruct(tmp_path / "src", rows=5, seed=3)
    text = built.data.read_bytes()
    second = text.index(b'"value": "', text.index(b'"id": "' + built.records[1]["id"].encode()))
    text = text[:second + 10] + b"\xff\xfe" + text[second + 10:]
    built.data.write_bytes(b"\xef\xbb\xbf" + text)
    items = list(open_source("llava-instruct", path=str(built.data), image_root=str(built.images)))
    skips = [item for item in items if isinstance(item, Skip)]
    assert [(s.reason, s.row) for s in skips] == [("invalid_utf8", 1)]
    kept = [item for item in items if not isinstance(item, Skip)]
    assert kept[0].row == 0 and all("\ufffd" not in c.question + c.chosen for c in kept)
