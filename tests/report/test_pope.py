"""`mdpo-eval pope`: POPE's answer rule and metrics, a POPE-format file with bad lines and a
missing image (counted, never a crash), an adapter from peft, and the demo world's export."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from mdpo_data.demo import hallucination
from mdpo_data.report import pope
from mdpo_data.report.eval_cli import main
from mdpo_data.sources.demo import PRIOR


def test_answers_are_parsed_as_pope_does():
    # first sentence only, commas dropped, "No"/"no"/"not" as a whole word means no
    assert pope.parse_answer("No, there is no red circle in the image.") == "no"
    assert pope.parse_answer("Yes, there is a red circle. No doubt.") == "yes"
    assert pope.parse_answer("There is not a circle") == "no"
    assert pope.parse_answer("Nothing here, I think.") == "yes"  # "Nothing" is not "No"
    assert pope.parse_answer("Sure! No, there are no red circles in the image.") == "no"
    assert pope.parse_answer("") == "yes"


def test_the_five_metrics_follow_their_definitions():
    predictions = ["yes", "yes", "no", "no", "yes", "no"]
    labels = ["yes", "no", "no", "yes", "yes", "no"]
    tp, fp, tn, fn = 2, 1, 2, 1
    got = pope.scores(predictions, labels)
    assert got["accuracy"] == pytest.approx((tp + tn) / 6)
    assert got["precision"] == pytest.approx(tp / (tp + fp))
    assert got["recall"] == pytest.approx(tp / (tp + fn))
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert got["f1"] == pytest.approx(2 * p * r / (p + r))
    assert got["yes_ratio"] == pytest.approx(3 / 6)
    assert pope.scores(["no", "no"], ["no", "no"])["f1"] == 0.0  # undefined: 0, not a crash


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from mdpo_data.demo.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny"))


def _pope_folder(tmp_path):
    images = tmp_path / "val2014"
    images.mkdir()
    for name, color in (("a.jpg", "red"), ("b.png", "blue")):
        Image.new("RGB", (40, 30), color).save(images / name)
    (tmp_path / "secret.png").write_bytes((images / "b.png").read_bytes())
    lines = [
        json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}),
        json.dumps({"question_id": 2, "image": "b.png", "text": "Is there a cat in the image?", "label": "no"}),
        "{not json",
        json.dumps({"question_id": 4, "image": "a.jpg", "text": "Is there a car?", "label": "maybe"}),
        json.dumps({"question_id": 5, "image": "missing.jpg", "text": "Is there a car?", "label": "no"}),
        json.dumps({"question_id": 6, "image": "../secret.png", "text": "Is there a car?", "label": "no"}),
        json.dumps({"question_id": 7, "image": "a.jpg", "text": "Is there a person in the image?", "label": "no"}),
        "",
    ]
    questions = tmp_path / "coco_pope_random.json"
    questions.write_text("\n".join(lines) + "\n")
    return questions, images


def test_a_pope_file_is_scored_and_bad_lines_are_counted(tmp_path, tiny_model_dir):
    questions, images = _pope_folder(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["pope", "--model", str(tiny_model_dir), "--questions", str(questions),
                                       "--image-root", str(images), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 4 and all("\n" not in s for s in skipped)
    assert any("coco_pope_random.json:3: not JSON" in s for s in skipped)
    assert any(":4: label must be yes or no" in s for s in skipped)
    assert any("question 5" in s and "missing.jpg" in s for s in skipped)
    assert any("question 6" in s and "escapes" in s for s in skipped)
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [1, 2, 7]
    assert all(a["prediction"] == pope.parse_answer(a["answer"]) for a in answers)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["skipped"] == 4
    assert metrics == {**pope.scores([a["prediction"] for a in answers], [a["label"] for a in answers]),
                       "skipped": 4, "errors": metrics["errors"]}


def test_nothing_answerable_is_one_line_and_nonzero(tmp_path):
    questions = tmp_path / "q.json"
    questions.write_text('{"question_id": 1}\n')
    proc = subprocess.run([sys.executable, "-m", "mdpo_data.report.eval_cli", "pope", "--model", "tiny",
                           "--questions", str(questions), "--image-root", str(tmp_path), "--out",
                           str(tmp_path / "o"), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "q.json:1: missing image, text, label" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "Error: " + f"{questions}: no answerable question (1 errors)"


def test_an_adapter_folder_is_applied(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "run")
    with_adapter, _ = pope.load_with_adapter(str(tiny_model_dir), str(tmp_path / "run"))
    assert type(with_adapter).__name__ == "PeftModel"
    with pytest.raises(ValueError, match="no adapter_config.json"):
        pope.load_with_adapter(str(tiny_model_dir), str(tmp_path))


def test_the_demo_export_is_pope_format_and_the_same_evaluator_scores_it(tmp_path, tiny_model_dir):
    result = CliRunner().invoke(main, ["demo-pope", "--out", str(tmp_path / "demo"), "--n", "8"])
    assert result.exit_code == 0, result.output
    for setting in hallucination.SETTINGS:
        questions, errors = pope.read_questions(tmp_path / "demo" / f"demo_pope_{setting}.json")
        assert not errors and len(questions) == 16
        assert [q.label for q in questions] == ["yes", "no"] * 8
        images, image_errors = pope.load_images(questions, tmp_path / "demo" / "images")
        assert not image_errors and len(images) == 8
    # the truth of each label, from the scene itself
    by_name = {f"demo-{image.index}.png": scene
               for image, scene in hallucination.heldout_scenes(8, hallucination.POPE_FIRST_ROW)}
    adversarial, _ = pope.read_questions(tmp_path / "demo" / "demo_pope_adversarial.json")
    for q in adversarial:
        color, shape = q.text.removeprefix("Is there a ").removesuffix(" in the image?").split()
        assert ((color, shape) in hallucination.objects_in(by_name[q.image])) == (q.label == "yes")
        target_shape, target_color = by_name[q.image]["items"][0][:2]
        if q.label == "no" and target_color != PRIOR[target_shape]:  # counter-prior: a prior's object
            shown = {s for _, s in hallucination.objects_in(by_name[q.image])}
            assert shape in shown and color == PRIOR[shape]
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["pope", "--model", str(tiny_model_dir), "--questions",
                                       str(tmp_path / "demo" / "demo_pope_adversarial.json"),
                                       "--image-root", str(tmp_path / "demo" / "images"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["n"] == 16


def test_pope_out_follows_the_ownership_rule(tmp_path, tiny_model_dir):
    """--out of both commands is new, empty or ours (.mdpo-eval.json, written first): a user's
    metrics.json is never overwritten and nothing of ours is written through a symlink."""
    questions, images = _pope_folder(tmp_path)

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    def pope_into(out):
        return run("pope", "--model", tiny_model_dir, "--questions", questions, "--image-root", images,
                   "--out", out, "--quiet")

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("my numbers")
    for result in (pope_into(mine), run("demo-pope", "--out", mine, "--n", "2")):
        assert result.exit_code != 0 and "not empty" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.json"]
    assert (mine / "metrics.json").read_text() == "my numbers"
    assert pope_into("").exit_code != 0  # an unset variable is never the working folder

    built = tmp_path / "built"  # a data folder of ours is another kind: refused too
    (built / ".state").mkdir(parents=True)
    (built / ".state" / "build.json").write_text("{}")
    assert "not an mdpo-eval output" in pope_into(built).output

    ours = tmp_path / "ours"
    assert pope_into(ours).exit_code == 0 and (ours / ".mdpo-eval.json").is_file()
    assert run("demo-pope", "--out", ours, "--n", "2").exit_code == 0  # ours again: rewritten
    assert pope_into(ours).exit_code == 0
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (ours / "answers.jsonl").unlink()
    (ours / "answers.jsonl").symlink_to(outside)
    result = pope_into(ours)
    assert result.exit_code != 0 and "symlink" in result.output and outside.read_text() == "keep"


def test_an_adapter_is_verified_before_it_is_loaded(tmp_path, tiny_model_dir):
    """A run's weights are checked against the sha256 list mdpo-train wrote last; pickled
    weights are never loaded; a damaged file is one line, never a traceback."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mdpo_data.format.integrity import WEIGHTS_FILE, weights_listing

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    run = tmp_path / "run"
    lora.save_pretrained(run)
    (run / WEIGHTS_FILE).write_bytes(weights_listing(run))
    pope.load_with_adapter(str(tiny_model_dir), str(run))  # intact: loads
    weights = run / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="adapter_model.safetensors: sha256 does not match"):
        pope.load_with_adapter(str(tiny_model_dir), str(run))
    (run / WEIGHTS_FILE).unlink()  # not listed (an adapter made elsewhere): loaded if it parses
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be applied to this model") as caught:
        pope.load_with_adapter(str(tiny_model_dir), str(run))
    assert "\n" not in str(caught.value)
    (run / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickled weights are never loaded"):
        pope.load_with_adapter(str(tiny_model_dir), str(run))


def test_demo_pope_refuses_a_linked_question_file_up_front(tmp_path):
    """A demo_pope_*.json of ours that is a symlink is refused in one line before anything is
    written, and its target is never created."""
    ours = tmp_path / "ours"
    assert CliRunner().invoke(main, ["demo-pope", "--out", str(ours), "--n", "2"]).exit_code == 0
    target = tmp_path / "target.json"
    (ours / "demo_pope_random.json").unlink()
    (ours / "demo_pope_random.json").symlink_to(target)
    result = CliRunner().invoke(main, ["demo-pope", "--out", str(ours), "--n", "2"])
    assert result.exit_code != 0 and "symlink" in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert not target.exists()


def test_a_damaged_weights_listing_is_one_line_never_a_crash(tmp_path):
    """weights.sha256.json that is not a {"files": {name: sha256}} of the run's own weight
    files (nested too deep for the parser, or naming a file outside the run) is refused."""
    from mdpo_data.format.integrity import WEIGHTS_FILE, weights_problems

    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text("{}")
    (run / WEIGHTS_FILE).write_text("[" * 100_000)
    problems = weights_problems(run)
    assert len(problems) == 1 and "is damaged" in problems[0]
    (tmp_path / "outside.json").write_text("{}")
    (run / WEIGHTS_FILE).write_text(json.dumps({"files": {"../outside.json": "0" * 64}}))
    problems = weights_problems(run)
    assert problems and "is damaged" in problems[0] and "../outside.json" in problems[0]


def test_a_question_line_nested_too_deep_is_a_counted_error(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("[" * 100_000 + "\n")
    items, errors = pope.read_questions(questions)
    assert items == [] and errors == ["q.jsonl:1: not JSON (nested too deeply)"]
