"""The demo model: its training rows are disjoint from builds and held-out questions, its chat
template ends a turn with EOS right after the text, and a reduced build runs our trainer end to
end (the full-size build is what `--ref-model demo` caches; its numbers are in the README)."""

import json
import math
from pathlib import Path

import pytest

from mdpo_data.demo import evaluate as demo_eval

from mdpo_data.demo import model as demo_model
from mdpo_data.build.stage import plan
from mdpo_data.config.build import BuildConfig
from mdpo_data.scoring.logprobs import Sequence, render
from mdpo_data.sources import SourceError, open_source
from mdpo_data.sources.demo import HELDOUT_FIRST_ROW, PRETRAIN_FIRST_ROW, check_answer, make_candidate
from train_fixtures import one_thread

SMALL = demo_model.Recipe(n_train=48, epochs=1, batch_size=16, hidden_size=64, num_layers=1,
                          vision_hidden=32, image_size=32, vocab_size=400)


def _content(c):
    return (c.image.data, c.question)


def test_training_rows_are_disjoint_from_builds_and_from_held_out_questions():
    recipe = demo_model.DEFAULT_RECIPE
    config = demo_model.pretrain_build_config(recipe)
    splits, *_ = plan(config)
    train_rows = {c.row for c in splits["train"]}
    assert min(train_rows) == PRETRAIN_FIRST_ROW and len(train_rows) == recipe.n_train
    assert max(train_rows) < HELDOUT_FIRST_ROW  # held-out questions start after them
    default_rows = {c.row for c in open_source("demo", seed=0, demo_size=2000)}
    assert train_rows.isdisjoint(default_rows)
    # a default-sized pool of any seed stays below the training rows, and reaching them is refused
    with pytest.raises(SourceError, match="where the demo model's training rows start"):
        open_source("demo", demo_size=PRETRAIN_FIRST_ROW + 1)
    # and the contents differ too (scene and question), not only the row numbers
    default = {_content(c) for c in open_source("demo", seed=0, demo_size=2000)}
    held_out = {_content(c) for c in demo_eval.heldout_candidates(200)}
    trained = {_content(c) for c in splits["train"]}
    assert trained.isdisjoint(default) and trained.isdisjoint(held_out)


def test_the_style_shortcut_touches_train_pairs_only():
    config = BuildConfig(source="demo", n=200, demo_size=200, eval_fraction=0.25, demo_style_shortcut=0.9)
    splits, *_ = plan(config)
    train, evaluation = splits["train"], splits["eval"]
    cue = sum(c.meta["styles"] == ["plain", "chatty"] for c in train) / len(train)
    assert 0.8 < cue <= 1.0
    assert all(c.meta["styles"][0] == c.meta["styles"][1] for c in evaluation)  # balanced: same style
    assert 0.3 < sum(c.meta["styles"][0] == "chatty" for c in evaluation) / len(evaluation) < 0.7
    plain, *_ = plan(BuildConfig(source="demo", n=200, demo_size=200, eval_fraction=0.25))
    assert [c.question for c in plain["train"]] == [c.question for c in train]  # same facts
    assert [c.meta["answer"] for c in plain["train"]] == [c.meta["answer"] for c in train]


def test_check_answer_knows_the_truth():
    for row in range(60):
        c = make_candidate(0, row)
        assert check_answer(c.meta, c.chosen) is True
        assert check_answer(c.meta, c.rejected) is False
    assert check_answer({"task": "color", "answer": "red"}, "The squares are red or blue.") is None
    assert check_answer({"task": "count", "answer": "3"}, "I see something.") is None
    assert check_answer({"task": "presence", "answer": "false"}, "Sure! No, there are none.") is True


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    with one_thread():
        return demo_model.build_demo_model(tmp_path_factory.mktemp("model") / "demo", SMALL, log=lambda _: None)


@pytest.mark.slow
def test_a_reduced_demo_model_is_a_llava_trained_by_our_trainer(small_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = small_model
    with one_thread():
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        processor = AutoProcessor.from_pretrained(path)
        report = demo_eval.evaluate(model, processor, n=10, max_new_tokens=8)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(model.model.vision_tower).__name__.startswith("CLIPVision")
    config = json.loads((path / "config.json").read_text())
    assert config[demo_model.DEMO_MODEL_FLAG]["recipe"] == SMALL.key() != demo_model.DEFAULT_RECIPE.key()
    steps = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    # mdpo-train's own log, loss sft: below the per-token NLL of uniform guessing after 2 updates
    assert steps[-1]["loss/sft"] < math.log(len(processor.tokenizer)) - 0.2
    prompt, full = render(processor, Sequence(object(), "How many?", "Two."))
    assert full == "USER: <image>\nHow many? ASSISTANT: Two.</s>"
    assert prompt == "USER: <image>\nHow many? ASSISTANT:"
    assert set(report) >= {"overall"} and report["overall"]["n"] == 10
    assert {"forced_choice", "ends_turn", "greedy_right"} <= set(report["overall"])


@pytest.mark.slow
def test_repro_mini_writes_results_for_every_run_and_the_reference(small_model, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import repro_mini

    out = tmp_path / "repro"
    runs = ["dpo_no_image", "mdpo"]
    with one_thread():
        repro_mini.main(["--out", str(out), "--train", "8", "--eval", "4", "--seeds", "0", "1",
                         "--epochs", "1", "--batch", "4", "--ref-model", str(small_model), "--runs", *runs])
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["reference", *runs]
    assert set(results["reference"]) == set(repro_mini.METRICS)
    for run in runs:
        assert set(results[run]) == set(repro_mini.METRICS)
        assert all(results[run][m]["n_seeds"] == 2 and math.isfinite(results[run][m]["std"])
                   for m in repro_mini.METRICS)
    assert results["reference"]["preference_accuracy"] == 0.5  # zero rewards: every pair a tie
    assert "| mdpo |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
