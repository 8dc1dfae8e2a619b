"""The silkie (VLFeedback) source: both layouts, pairing rules, filters and counted skips."""

from __future__ import annotations

import random
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures import jpeg_bytes, make_vlfeedback_jsonl, make_vlfeedback_parquet, vlfeedback_record

from mdpo_data.config.build import BuildConfig
from mdpo_data.sources.records import Candidate, Skip
from mdpo_data.sources import SourceError, open_source
from mdpo_data.sources.silkie import choose_pairs, clean_response, parse_rating


def run(built_or_path, **options):
    """The layout and filter tests read one pair per row: best-worst unless a test says otherwise."""
    options.setdefault("pairing", "best-worst")
    path = str(built_or_path if isinstance(built_or_path, (str, Path)) else built_or_path.root)
    items = list(open_source("silkie", path=path, **options))
    candidates = [c for c in items if isinstance(c, Candidate)]
    skips = Counter(s.reason for s in items if isinstance(s, Skip))
    return candidates, skips, items


def rated(source_id, *ratings, prompt="What is in the image?"):
    """A VLFeedback row whose completion k has ratings[k] and response "answer k"."""
    models = ["gpt-4v", "llava-v1.5-13b", "qwen-vl-chat", "fuyu-8b"]
    return vlfeedback_record(
        source_id, prompt, [(f"answer {k}", models[k], r) for k, r in enumerate(ratings)]
    )


# ---------------------------------------------------------------- layouts


def test_jsonl_with_zip_reads_every_row_with_a_lazy_zip_image(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, rows=10, seed=3)
    candidates, skips, _ = run(built)
    assert not skips
    assert [c.row for c in candidates] == list(range(10))
    for c, record in zip(candidates, built.records):
        assert (
            c.source == "silkie" and c.source_id == record["id"] and c.question == record["prompt"]
        )
        assert c.image.kind == "zip" and c.image.path == f"merged_images/{record['id']}.jpg"
    with zipfile.ZipFile(built.images) as archive:
        assert candidates[4].image.load() == archive.read(
            f"merged_images/{built.records[4]['id']}.jpg"
        )


def test_unpacked_folder_gives_the_same_pairs_and_bytes_as_the_zip(tmp_path):
    zipped, _, _ = run(make_vlfeedback_jsonl(tmp_path / "zip", rows=8, seed=1))
    folder, _, _ = run(make_vlfeedback_jsonl(tmp_path / "folder", rows=8, seed=1, images="folder"))
    key = lambda c: (c.row, c.pair, c.question, c.chosen, c.rejected)  # noqa: E731
    assert [key(c) for c in zipped] == [key(c) for c in folder]
    assert {c.image.kind for c in folder} == {"file"}
    assert [c.image.load() for c in zipped] == [c.image.load() for c in folder]


def test_a_single_jsonl_file_path_finds_the_images_beside_it(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, rows=3)
    candidates, _, _ = run(built.data)
    assert len(candidates) == 3


@pytest.mark.parametrize("completions_as", ["struct_of_lists", "list_of_structs"])
def test_parquet_shards_with_embedded_images_reference_rows_not_bytes(tmp_path, completions_as):
    jsonl, _, _ = run(make_vlfeedback_jsonl(tmp_path / "j", rows=12, seed=5))
    built = make_vlfeedback_parquet(
        tmp_path / "p", rows=12, seed=5, shards=2, completions_as=completions_as
    )
    completions_type = pq.read_schema(built.data).field("completions").type
    assert (str(completions_type).startswith("struct<")) == (completions_as == "struct_of_lists")
    candidates, skips, _ = run(built)
    assert not skips
    assert [c.row for c in candidates] == list(range(12))  # numbering runs on across shards
    assert {c.image.kind for c in candidates} == {"parquet"}
    assert [c.image.index for c in candidates] == list(range(6)) * 2  # row inside each shard
    assert {c.image.data for c in candidates} == {b""}
    assert [(c.question, c.chosen, c.rejected, c.pair) for c in candidates] == [
        (c.question, c.chosen, c.rejected, c.pair) for c in jsonl
    ]
    assert [c.image.load() for c in candidates] == [c.image.load() for c in jsonl]


def test_parquet_with_img_path_column_reads_images_from_the_zip(tmp_path):
    built = make_vlfeedback_parquet(tmp_path, rows=6, seed=2, image_column="img_path")
    candidates, skips, _ = run(built)
    assert len(candidates) == 6 and not skips
    assert candidates[0].image.kind == "zip"
    assert candidates[0].image.load() == jpeg_bytes(2 * 100003 + 0)


def test_parquet_without_any_image_column_is_a_clear_error(tmp_path):
    built = make_vlfeedback_parquet(tmp_path, rows=4, image_column="none")
    with pytest.raises(
        SourceError, match="no image column.*columns found: id, prompt, models, completions"
    ):
        open_source("silkie", path=str(built.root))


def test_missing_images_are_a_clear_error_naming_the_fix(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, rows=3, images="none")
    with pytest.raises(SourceError, match="merged_images.zip.*--image-root"):
        open_source("silkie", path=str(built.root))


def test_image_root_option_points_at_a_zip_kept_elsewhere(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path / "data", rows=3)
    moved = shutil.move(built.images, tmp_path / "elsewhere.zip")
    candidates, _, _ = run(built, image_root=str(moved))
    assert len(candidates) == 3 and candidates[0].image.root == str(moved)


def test_errors_surface_when_the_source_is_opened_not_while_iterating(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source("silkie", path=str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="no data under"):
        open_source("silkie", path=str(tmp_path))


def test_iterating_never_reads_image_bytes(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, rows=5)
    stream = open_source("silkie", path=str(built.root), pairing="best-worst")
    built.images.unlink()  # the member list was read when the source was opened
    assert len([c for c in stream if isinstance(c, Candidate)]) == 5


# ---------------------------------------------------------------- pairing


def test_pure_pairing_rules_on_worked_means():
    means = [5.0, 4.0, 4.0, 2.0]
    rng = random.Random(0)
    assert choose_pairs(means, "best-worst", rng) == ([(0, 3)], [])
    pairs, ties = choose_pairs(means, "all", rng)
    assert sorted(pairs) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)] and ties == [(1, 2)]
    assert choose_pairs([3.0, 3.0, 3.0], "best-worst", rng) == ([], [(0, 2)])
    assert choose_pairs([3.0, 3.0], "best-random", rng) == ([], [(0, 1)])
    assert choose_pairs([1.0, 4.0, 2.0], "best-worst", rng) == (
        [(1, 0)],
        [],
    )  # chosen can be any index
    drawn = {choose_pairs(means, "best-random", random.Random(s))[0][0] for s in range(50)}
    assert drawn == {(0, 1), (0, 2), (0, 3)}


def test_best_worst_uses_the_mean_of_the_three_aspects(tmp_path):
    # means: 4.0, 3.67, 4.33, 1.0 -> best 2, worst 3 (helpfulness alone would pick 0)
    record = rated("llava-detail-1", (5, 4, 3), (4, 4, 3), (3, 5, 5), (1, 1, 1))
    built = make_vlfeedback_jsonl(tmp_path, records=[record])
    (c,), skips, _ = run(built)
    assert (c.pair, c.chosen, c.rejected) == ("2>3", "answer 2", "answer 3") and not skips
    assert c.meta["chosen_ratings"] == {
        "Helpfulness": 3.0,
        "Ethical Considerations": 5.0,
        "Visual Faithfulness": 5.0,
    }
    assert c.meta["rejected_model"] == "fuyu-8b" and c.meta["chosen_model"] == "qwen-vl-chat"
    assert c.meta["chosen_mean"] == pytest.approx(13 / 3) and c.meta["rejected_mean"] == 1.0


def test_the_default_pairing_is_all_as_vlfeedbacks_authors_pair_it(tmp_path):
    record = rated("llava-0", (5, 5, 5), (1, 1, 1), (3, 3, 3), (2, 2, 2))
    built = make_vlfeedback_jsonl(tmp_path, records=[record])
    default = [c for c in open_source("silkie", path=str(built.root)) if isinstance(c, Candidate)]
    assert len(default) == 6  # every pair of the four completions (no ties here)
    assert BuildConfig().pairing == "all"


def test_all_pairing_is_the_official_silkie_rule_with_ties_counted(tmp_path):
    record = rated("llava-detail-1", (5, 5, 5), (4, 4, 4), (4, 4, 4), (1, 2, 3))
    candidates, skips, _ = run(make_vlfeedback_jsonl(tmp_path, records=[record]), pairing="all")
    assert sorted(c.pair for c in candidates) == ["0>1", "0>2", "0>3", "1>3", "2>3"]
    assert skips == {"rating_tie": 1}
    assert len({c.example_id for c in candidates}) == 5


def test_best_random_is_seeded_per_row_and_always_below_the_best(tmp_path):
    records = [
        rated(f"llava-detail-{i}", (5, 5, 5), (4, 4, 4), (3, 3, 3), (2, 2, 2)) for i in range(40)
    ]
    built = make_vlfeedback_jsonl(tmp_path, records=records)
    first, _, _ = run(built, pairing="best-random", seed=7)
    again, _, _ = run(built, pairing="best-random", seed=7)
    other, _, _ = run(built, pairing="best-random", seed=8)
    assert [c.pair for c in first] == [c.pair for c in again]
    assert [c.pair for c in first] != [c.pair for c in other]
    assert {c.pair for c in first} == {"0>1", "0>2", "0>3"}


def test_a_full_tie_drops_the_row_and_is_counted(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, records=[rated("llava-detail-1", *[(3, 3, 3)] * 4)])
    assert run(built)[:2] == ([], {"rating_tie": 1})
    assert run(built, pairing="all")[:2] == ([], {"rating_tie": 6})


def test_non_numeric_and_missing_ratings_exclude_only_that_completion(tmp_path):
    record = rated("llava-detail-1", ("N/A", 5, 5), (" 4 ", "4.0", 4), (2, "", 2), (1, 1, 1))
    (c,), skips, items = run(make_vlfeedback_jsonl(tmp_path, records=[record]))
    assert c.pair == "1>3"  # completion 0 would have been best, but it cannot be compared
    assert skips == {"non_numeric_rating": 1, "missing_rating": 1}
    details = sorted(s.detail for s in items if isinstance(s, Skip))
    assert details == [
        "completion 0: Helpfulness='N/A'",
        "completion 2: Ethical Considerations has no rating",
    ]


def test_too_few_comparable_completions(tmp_path):
    record = rated("llava-detail-1", ("N/A", 5, 5), ("x", 4, 4), (2, "?", 2), (1, 1, 1))
    assert run(make_vlfeedback_jsonl(tmp_path, records=[record]))[:2] == (
        [],
        {"non_numeric_rating": 3, "too_few_completions": 1},
    )


@pytest.mark.parametrize("value", ["N/A", "", None, "nan", "inf", True, []])
def test_parse_rating_refuses_non_numbers(value):
    with pytest.raises(ValueError) as error:
        parse_rating(value, "Helpfulness")
    assert error.value.reason in ("non_numeric_rating", "missing_rating")


def test_parse_rating_accepts_the_published_string_form():
    assert parse_rating({"Rating": "4", "Rationale": "ok"}, "Helpfulness") == 4.0
    assert parse_rating(" 3.5 ", "Helpfulness") == 3.5
    assert parse_rating(2, "Helpfulness") == 2.0


# ---------------------------------------------------------------- filters and clean-up


def test_subset_llava_and_id_prefix(tmp_path):
    ratings = [(5, 5, 5), (1, 1, 1)]
    ids = ["llava-detail-1", "svit-conversation-2", "llava-reasoning-3", "lrv-instruction-4"]
    built = make_vlfeedback_jsonl(tmp_path, records=[rated(i, *ratings) for i in ids])
    candidates, skips, _ = run(built, subset="llava")
    assert [c.source_id for c in candidates] == ["llava-detail-1", "llava-reasoning-3"]
    assert skips == {"not_in_subset": 2}
    assert [c.source_id for c in run(built, id_prefix="svit-")[0]] == ["svit-conversation-2"]
    assert [c.source_id for c in run(built, subset="llava", id_prefix="llava-reasoning")[0]] == [
        "llava-reasoning-3"
    ]
    with pytest.raises(SourceError, match="unknown subset 'coco'.*llava"):
        open_source("silkie", path=str(built.root), subset="coco")


def test_citation_artifacts_are_stripped_and_whitespace_tidied():
    assert clean_response("A dog 【12†source】. Sunny 【3†source】 today.") == "A dog. Sunny today."
    assert clean_response("  Two cats【1†source】\nand a mat.  ") == "Two cats\nand a mat."
    assert clean_response("【7†source】") == ""
    assert clean_response("Keep 【note】 brackets.") == "Keep 【note】 brackets."


def test_empty_responses_are_skipped_after_cleaning(tmp_path):
    record = vlfeedback_record(
        "llava-detail-1",
        "Q?",
        [
            ("good", "m0", (5, 5, 5)),
            ("【2†source】", "m1", (1, 1, 1)),
            ("  ", "m2", (1, 1, 2)),
            ("ok", "m3", (2, 2, 2)),
        ],
    )
    (c,), skips, _ = run(make_vlfeedback_jsonl(tmp_path, records=[record]))
    assert (c.chosen, c.rejected, skips) == ("good", "ok", {"empty_response": 2})


def test_repeated_ids_stay_distinct_candidates(tmp_path):
    # VLFeedback ids are not unique: both rows are kept, told apart by their stream row.
    records = [
        rated("llava-detail-7", (5, 5, 5), (1, 1, 1), prompt=p) for p in ("First?", "Second?")
    ]
    candidates, _, _ = run(make_vlfeedback_jsonl(tmp_path, records=records))
    assert [c.question for c in candidates] == ["First?", "Second?"]
    assert len({c.example_id for c in candidates}) == 2
    assert candidates[0].image == candidates[1].image  # <id>.jpg: the published layout's ambiguity


def test_injected_bad_rows_are_counted_skips_with_their_line(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, rows=20, bad=True)
    candidates, skips, items = run(built)
    row_drops = {"rating_tie", "malformed_json", "missing_image", "escaping_id"}
    assert skips == {
        "non_numeric_rating": 1,
        "missing_rating": 1,
        "rating_tie": 1,
        "empty_response": 1,
        "malformed_json": 1,
        "image_missing": 1,
        "zip_member_escapes_target": 1,
    }
    assert len(candidates) == built.rows - len(row_drops)
    where = {s.reason: s.where for s in items if isinstance(s, Skip)}
    assert where["malformed_json"] == f"vlfeedback_80k.jsonl:{built.bad['malformed_json'][0] + 1}"
    assert where["image_missing"] == f"vlfeedback_80k.jsonl:{built.bad['missing_image'][0] + 1}"
    rows = {c.row for c in candidates}
    assert not rows & {built.bad[k][0] for k in row_drops}
    assert {built.bad[k][0] for k in ("citation", "repeated_id", "bomb_image", "mode_CMYK")} <= rows
    cited = next(c for c in candidates if c.row == built.bad["citation"][0])
    assert "†source" not in cited.chosen


def test_escaping_id_in_an_unpacked_folder_is_refused(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, rows=2, images="folder", bad=["escaping_id"])
    candidates, skips, _ = run(built)
    assert (tmp_path / "evil.jpg").exists()  # a naive join would have found it
    assert len(candidates) == 2 and skips == {"image_path_escapes_root": 1}


def test_parquet_layout_counts_the_same_rating_problems(tmp_path):
    built = make_vlfeedback_parquet(
        tmp_path, rows=10, bad=["non_numeric_rating", "rating_tie", "empty_response"]
    )
    candidates, skips, _ = run(built)
    assert skips == {"non_numeric_rating": 1, "rating_tie": 1, "empty_response": 1}
    assert len(candidates) == 12


def test_a_broken_image_archive_is_a_clear_source_error(tmp_path):
    built = make_vlfeedback_jsonl(tmp_path, 4)
    zip_path = tmp_path / "merged_images.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:-10])
    with pytest.raises(SourceError, match="cannot open image archive"):
        run(built)
