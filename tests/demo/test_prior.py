"""The demo world with a language prior: off by default (old bytes and the demo model's cache key
unchanged), scenes that follow it at the asked rate, prior pairs whose rejected answer is the
prior's, a build where a text-only rule predicts the train preference and fails half the eval
split, and CHAIR on the demo's descriptions."""

import json
import random

import pytest

from mdpo_data.build.stage import plan
from mdpo_data.config.build import BuildConfig
from mdpo_data.config.options import check_fields
from mdpo_data.demo import hallucination
from mdpo_data.demo import model as demo_model
from mdpo_data.sources import SourceError, open_source
from mdpo_data.sources.demo import PRIOR, PRIOR_KINDS, check_answer, describe, groups_of, make_candidate


def test_without_the_option_the_world_and_the_demo_model_are_unchanged():
    for row in range(200):
        plain = make_candidate(0, row)
        assert make_candidate(0, row, prior=0.0) == plain
        assert "prior" not in plain.meta and plain.meta["task"] != "describe"
    assert "demo_prior" not in BuildConfig().public() and "demo_prior_pairs" not in BuildConfig().public()
    assert BuildConfig(demo_prior=0.5).public()["demo_prior"] == 0.5
    # the cache key existing demo models were built under (a changed key rebuilds for minutes)
    assert demo_model.DEFAULT_RECIPE.key() == "6d53021e91eb"
    assert demo_model.PRIOR_RECIPE.key() != demo_model.DEFAULT_RECIPE.key()
    assert demo_model.pretrain_build_config(demo_model.PRIOR_RECIPE).demo_prior == 0.9


def test_scene_groups_follow_the_prior_at_the_asked_rate():
    follows = []
    for row in range(600):
        c = make_candidate(0, row, prior=0.9)
        scene = json.loads(c.image.data)
        follows += [color == PRIOR[shape] for shape, color, _ in groups_of(scene)]
        assert c.meta["prior"] == ("consistent" if scene["items"][0][1] == PRIOR[scene["items"][0][0]] else "counter")
        assert check_answer(c.meta, c.chosen) in (True, None)
    assert 0.85 < sum(follows) / len(follows) < 0.95
    assert any(make_candidate(0, row, prior=0.9).meta["task"] == "describe" for row in range(100))


@pytest.mark.parametrize("kind", PRIOR_KINDS)
def test_prior_pairs_put_the_prior_answer_where_the_kind_says(kind):
    for row in range(150):
        c = make_candidate(3, row, kind=kind, prior=0.9)
        scene = json.loads(c.image.data)
        shape, color = scene["items"][0][:2]
        assert c.meta["prior"] == kind and c.meta["task"] in ("color", "shape", "presence", "describe")
        assert (color == PRIOR[shape]) == (kind == "consistent")
        if kind == "counter":
            assert color in PRIOR.values()  # another shape's usual colour: the prior misleads
            assert c.meta["wrong"] == c.meta["prior_answer"] != c.meta["answer"]
        else:
            assert c.meta["answer"] == c.meta["prior_answer"] != c.meta["wrong"]
        if c.meta["task"] != "describe":
            assert check_answer(c.meta, c.chosen) is True and check_answer(c.meta, c.rejected) is False


def test_a_prior_build_lets_a_text_rule_predict_train_and_fail_half_of_eval():
    config = BuildConfig(source="demo", n=300, demo_size=300, eval_fraction=0.3, demo_prior=0.9,
                         demo_prior_pairs=0.9)
    splits, *_ = plan(config)

    def rule(c):  # prefer the answer that is not the prior's
        prior = c.meta.get("prior_answer")
        return 1.0 if c.meta["wrong"] == prior else 0.0 if c.meta["answer"] == prior else 0.5

    train, evaluation = splits["train"], splits["eval"]
    assert sum(map(rule, train)) / len(train) > 0.85
    kinds = [c.meta["prior"] for c in evaluation]
    assert abs(kinds.count("consistent") - kinds.count("counter")) <= 1
    assert {rule(c) for c in evaluation if c.meta["prior"] == "counter"} == {1.0}
    assert {rule(c) for c in evaluation if c.meta["prior"] == "consistent"} == {0.0}
    assert config.key() != BuildConfig(source="demo", n=300, demo_size=300, eval_fraction=0.3).key()


def test_bad_prior_options_are_one_line_errors():
    """The bounds live on the fields (checked once with the types, every problem listed)."""
    _, problems = check_fields(BuildConfig, {"demo_prior": 1.5, "demo_prior_pairs": -0.1})
    assert problems == ["--demo-prior: must be in [0, 1], got 1.5",
                        "--demo-prior-pairs: must be in [0, 1], got -0.1"]
    with pytest.raises(SourceError, match="--demo-prior must be in"):
        list(open_source("demo", demo_size=2, demo_prior=2.0))


def test_chair_counts_hallucinated_objects_in_descriptions():
    scenes = [scene for _, scene in hallucination.heldout_scenes(40, hallucination.CHAIR_FIRST_ROW)]
    truths = [describe(groups_of(s)) for s in scenes]
    assert hallucination.chair(truths, scenes) == {"chair_i": 0.0, "chair_s": 0.0,
                                                   "mentions": pytest.approx(
                                                       sum(len(groups_of(s)) for s in scenes) / 40)}
    # the prior's hallucination: every target group named in its shape's usual colour
    hallucinated = [describe([(sh, PRIOR[sh], n)] + groups_of(s)[1:]) for s in scenes
                    for sh, _, n in groups_of(s)[:1]]
    counter = sum(s["items"][0][1] != PRIOR[s["items"][0][0]] for s in scenes)
    got = hallucination.chair(hallucinated, scenes)
    assert got["chair_s"] == counter / 40 and counter == 20
    named = sum(len(hallucination.mentions(t)) for t in hallucinated)
    assert got["chair_i"] == pytest.approx(counter / named)
    assert hallucination.chair(["I see nothing."], scenes[:1]) == {"chair_i": 0.0, "chair_s": 0.0, "mentions": 0.0}


def test_pope_negatives_are_absent_and_settings_differ():
    rng = random.Random(0)
    for _, scene in hallucination.heldout_scenes(60, hallucination.POPE_FIRST_ROW):
        present = hallucination.objects_in(scene)
        negatives = hallucination.negatives(scene, rng)
        assert not present & set(negatives.values())
        assert negatives["popular"] in {(c, s) for s, c in PRIOR.items()}
