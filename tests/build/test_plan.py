"""Planning by refs: `draw` over a source's `refs()` samples exactly what collect + sample do
over its full candidates, and re-read rows come back as they were first read."""

from __future__ import annotations

import json

import pytest
from fixtures import make_vlfeedback_jsonl, make_vlfeedback_parquet, vlfeedback_record

from mdpo_data.sources.records import Candidate
from mdpo_data.build.sampling import collect, draw, sample
from mdpo_data.sources import open_source
from mdpo_data.sources.readers import iter_records, records_at


def _both(path: str, n: int, seed: int, **options):
    """(draw over refs, draw over the plain stream, collect + sample) for one source."""
    def opened():
        return open_source("silkie", path=path, seed=seed, **options)

    by_refs = draw(opened(), n, seed)
    plain = draw(iter(list(opened())), n, seed)  # a plain iterator: no refs(), full candidates
    pool = collect(opened())
    return by_refs, plain, (pool, sample(pool.candidates, n, seed))


def _same_pool(a, b) -> None:
    assert (a.read, a.rows, a.pairs) == (b.read, b.rows, b.pairs)
    assert dict(a.skipped) == dict(b.skipped)
    assert a.skip_examples == b.skip_examples


@pytest.mark.parametrize("pairing", ["all", "best-worst", "best-random"])
@pytest.mark.parametrize("n", [5, 1000])
def test_draw_by_refs_equals_collect_and_sample(tmp_path, pairing, n):
    built = make_vlfeedback_jsonl(tmp_path, 40, bad=True)  # bad rows include a duplicate pair
    (pool, sampled, _), (plain_pool, plain, _), (full, expected) = _both(
        str(built.root), n, seed=3, pairing=pairing
    )
    assert [c.example_id for c in sampled] == [c.example_id for c in expected]
    assert sampled == expected and [c.meta for c in sampled] == [c.meta for c in expected]
    assert plain == expected
    _same_pool(pool, full)
    _same_pool(plain_pool, full)
    assert pool.available == plain_pool.available == len(full.candidates)
    if pairing == "all":
        assert full.skipped["duplicate_pair"] >= 1


def test_draw_resolves_duplicates_within_and_across_rows(tmp_path):
    same = [("same answer", "m", (5, 5, 5)), ("other", "m", (1, 1, 1))]
    records = [
        vlfeedback_record("a", "Q?", same + [("same answer", "m", (4, 4, 4))]),  # 0>1 == 2>1
        vlfeedback_record("b", "Q?", same),
        vlfeedback_record("a", "Q?", same),  # repeats row 0's image and question: duplicate
    ]
    built = make_vlfeedback_jsonl(tmp_path, records=records)
    (pool, sampled, _), _, (full, expected) = _both(str(built.root), 10, seed=0)
    assert sampled == expected
    _same_pool(pool, full)
    assert pool.skipped["duplicate_pair"] == full.skipped["duplicate_pair"] == 2


def test_draw_over_parquet_re_reads_the_sampled_rows(tmp_path):
    built = make_vlfeedback_parquet(tmp_path, 30, shards=2, row_group_size=4)
    (pool, sampled, _), _, (full, expected) = _both(str(built.root), 12, seed=1)
    assert sampled == expected
    assert [c.image.load() for c in sampled] == [c.image.load() for c in expected]
    _same_pool(pool, full)


def test_records_at_reads_json_lines_back_by_byte_span(tmp_path):
    """CRLF, a lone CR (text mode ends a line there too), blank and malformed lines, UTF-8."""
    lines = [json.dumps({"k": 1}), "", json.dumps({"k": "ü 【1†x】"}), "{broken", json.dumps({"k": 3})]
    raw = ("\r\n".join(lines[:3]) + "\r" + "\n".join(lines[3:]) + "\n").encode()
    path = tmp_path / "data.jsonl"
    path.write_bytes(raw)
    first = list(iter_records([path], tmp_path))
    with open(path, encoding="utf-8") as handle:  # what text mode makes of the same bytes
        text_lines = [line for line in handle if line.strip()]
    assert len(first) == len(text_lines) == 4
    assert [r.where for r in first] == ["data.jsonl:1", "data.jsonl:3", "data.jsonl:4", "data.jsonl:5"]
    assert first[2].data is None and first[2].reason == "malformed_json"
    again = list(records_at([r.location for r in reversed(first)]))
    assert again == list(reversed(first))


def test_materialize_gives_full_candidates(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, 8)
    stream = open_source("silkie", path=str(built.root))
    refs = [item for item in stream.refs() if not hasattr(item, "reason")]
    full = [c for c in open_source("silkie", path=str(built.root)) if isinstance(c, Candidate)]
    assert stream.materialize(refs[::-1]) == full[::-1]


def test_records_at_reads_back_lines_with_invalid_utf8(tmp_path):
    """Undecodable bytes are an invalid_utf8 skip (never U+FFFD); the byte spans still point at
    the raw line, and records_at reads the same records back."""
    raw = b'{"k": "caf\xc3\xa9"}\n{"k": "x\xff\xfey"}\r{"k": "\xe2\x80"}\n\xef\xbb\xbf{"k": 4}\n'
    path = tmp_path / "data.jsonl"
    path.write_bytes(raw)
    first = list(iter_records([path], tmp_path))
    assert [r.data for r in first] == [{"k": "café"}, None, None, {"k": 4}]  # a BOM mid-file too
    assert [r.reason for r in first[1:3]] == ["invalid_utf8", "invalid_utf8"]
    assert "byte 8 " in first[1].detail  # 0-based, as UnicodeDecodeError counts
    assert b"".join(raw[r.span[0] : sum(r.span)] for r in first) == raw
    assert list(records_at([r.location for r in reversed(first)])) == list(reversed(first))
