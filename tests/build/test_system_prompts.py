"""--system-prompt: a system message in the stored prompt (TRL conversational format), chosen by
auto | none | TEXT, recorded in the manifest, and seen by the log-prob function."""

import pytest
from fixtures import make_mdpo_json
from cli_helpers import rows_of, run_cli

from mdpo_data.format import schema

from mdpo_data.build import system_prompts
from mdpo_data.build.stage import run_build
from mdpo_data.config.build import BuildConfig
from mdpo_data.scoring.logprobs import row_sequences
from cli_helpers import manifest_json

VICUNA = system_prompts.VICUNA_V1


def test_prompt_helpers_round_trip_with_and_without_a_system_message():
    plain = schema.prompt_messages("What color?")
    with_system = schema.prompt_messages("What color?", "Be brief.")
    assert [m["role"] for m in with_system] == ["system", "user"]
    assert schema.question_of(plain) == schema.question_of(with_system) == "What color?"
    assert schema.system_of(plain) is None and schema.system_of(with_system) == "Be brief."
    row = schema.make_row(example_id="e", source="s", source_id="0", source_row=0, seed=0,
                          question="Q?", chosen="A.", rejected="B.", image=b"", rejected_image=b"",
                          rejected_image_strategy="crop:0.01-0.2", system="Be brief.")
    table = schema.rows_to_table([row])  # the shard schema holds a system message
    assert schema.system_of(table.to_pylist()[0]["prompt"]) == "Be brief."


@pytest.mark.parametrize("model, family", [
    ("llava-hf/llava-1.5-7b-hf", "vicuna_v1"), ("/models/llava-v1.5-13b", "vicuna_v1"),
    ("llava-hf/llava-v1.6-vicuna-7b-hf", "vicuna_v1"), ("Qwen/Qwen2-VL-2B-Instruct", None),
    ("OpenGVLab/InternVL3-1B-hf", "internvl2_5"), ("OpenGVLab/InternVL2_5-8B", "internvl2_5"),
    ("OpenGVLab/InternVL3_5-1B-HF", None), ("llava-hf/llava-v1.6-mistral-7b-hf", None),
    ("tiny", None), (None, None)])
def test_known_model_families(model, family):
    assert system_prompts.model_family(model) == family


def test_auto_keeps_the_sources_own_then_the_model_familys_then_none():
    assert system_prompts.choose("auto", "Own.", "vicuna_v1") == ("Own.", "source")
    assert system_prompts.choose("auto", None, "vicuna_v1") == (VICUNA, "model")
    assert system_prompts.choose("auto", None, None) == (None, "none")
    assert system_prompts.choose("none", "Own.", "vicuna_v1") == (None, "none")
    assert system_prompts.choose("Be brief.", "Own.", None) == ("Be brief.", "given")


def test_demo_default_auto_without_a_model_adds_nothing(tmp_path):
    run_build(BuildConfig(source="demo", n=6, demo_size=20), tmp_path / "a", progress=False)
    rows = rows_of(tmp_path / "a")
    assert rows and all([m["role"] for m in r["prompt"]] == ["user"] for r in rows)
    record = manifest_json(tmp_path / "a")["system_prompt"]
    assert record["spec"] == "auto" and record["rows_by_origin"] == {"none": 6}


def test_auto_with_a_known_family_stores_its_training_prompt_and_the_scorer_sees_it(tmp_path):
    config = BuildConfig(source="demo", n=4, demo_size=20, system_prompt_family="vicuna_v1")
    run_build(config, tmp_path / "b", progress=False)
    rows = rows_of(tmp_path / "b")
    assert all(schema.system_of(r["prompt"]) == VICUNA for r in rows)
    assert all(seq.system == VICUNA for r in rows for seq in row_sequences(r).values())
    assert manifest_json(tmp_path / "b")["system_prompt"]["model_family"] == "vicuna_v1"


@pytest.mark.slow
def test_cli_text_none_and_pipeline_yaml(tmp_path):
    source = make_mdpo_json(tmp_path / "src", rows=8, seed=1)
    common = ["build", "--source", "pairs", "--source-path", source.data, "--image-root", source.images,
              "--n", 8, "--quiet"]
    run_cli(*common, "--system-prompt", "none", "--out", tmp_path / "none")
    assert all(schema.system_of(r["prompt"]) is None for r in rows_of(tmp_path / "none"))
    run_cli(*common, "--system-prompt", "Answer briefly.", "--out", tmp_path / "text")
    assert all(schema.system_of(r["prompt"]) == "Answer briefly." for r in rows_of(tmp_path / "text"))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("source: demo\nn: 3\ndemo-size: 20\nsystem-prompt: From YAML.\n")
    run_cli("build", "--pipeline", pipeline, "--out", tmp_path / "yaml", "--quiet")
    assert all(schema.system_of(r["prompt"]) == "From YAML." for r in rows_of(tmp_path / "yaml"))
    bad = run_cli("build", "--source", "demo", "--n", 2, "--system-prompt", " ", "--out",
                  tmp_path / "bad", "--quiet", check=False)
    assert bad.returncode != 0 and "system-prompt" in bad.stderr and "Traceback" not in bad.stderr

