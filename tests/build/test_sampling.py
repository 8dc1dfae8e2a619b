"""Seeded sampling, duplicate removal and the eval split."""

from mdpo_data.sources.records import Candidate, ImageRef, Skip
from mdpo_data.build.sampling import collect, sample, split_eval


def cand(row, question="q", chosen="a", rejected="b", image="x.jpg"):
    return Candidate(source="t", row=row, source_id=str(row), image=ImageRef("file", "/r", image),
                     question=question, chosen=chosen, rejected=rejected)


def test_collect_counts_skips_and_drops_exact_duplicates():
    items = [cand(0), Skip("malformed_json", "f:2"), cand(1), cand(2, chosen="other"),
             cand(3, image="y.jpg"), Skip("malformed_json", "f:5")]
    pool = collect(items)
    assert pool.read == 6
    assert [c.row for c in pool.candidates] == [0, 2, 3]  # row 1 duplicates row 0
    assert pool.skipped == {"malformed_json": 2, "duplicate_pair": 1}
    assert pool.skip_examples["malformed_json"] == "f:2"


def test_sample_is_seeded_without_replacement_and_stable_under_growth():
    pool = [cand(i, question=str(i)) for i in range(100)]
    a, b = sample(pool, 10, seed=1), sample(pool, 10, seed=1)
    assert [c.row for c in a] == [c.row for c in b]
    assert len({c.row for c in a}) == 10
    assert [c.row for c in sample(pool, 10, seed=2)] != [c.row for c in a]
    # Rows added to the source never push out a sampled row ranked above them.
    grown = pool + [cand(i, question=str(i)) for i in range(100, 200)]
    kept = {c.row for c in sample(grown, 10, seed=1)}
    assert kept <= {c.row for c in sample(grown, 200, seed=1)}
    assert set(r for r in kept if r < 100) <= {c.row for c in a}
    assert len(sample(pool, 500, seed=1)) == 100


def test_split_eval():
    pool = [cand(i, question=str(i)) for i in range(40)]
    splits = split_eval(pool, 0.25)
    assert len(splits["eval"]) == 10 and len(splits["train"]) == 30
    assert not {c.row for c in splits["eval"]} & {c.row for c in splits["train"]}
    assert "eval" not in split_eval(pool, 0.0)
