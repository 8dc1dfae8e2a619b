"""`--system-prompt auto` and the model family: LLaVA-1.5's training prompt is conv_vicuna_v1's
("curious user"), the family of a local model comes from its config.json (not the folder's
name), and `score` with a model of a known family on a build made without one refuses with the
exact build command that stores the prompt (through the real CLI)."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import rows_of, run_cli
from fixtures import MDPO_SYSTEM

from mdpo_data.build import system_prompts
from mdpo_data.demo.tiny import build_tiny_llava, build_tiny_qwen2_vl
from mdpo_data.format import schema
from cli_helpers import manifest_json

CONV_VICUNA_V1 = ("A chat between a curious user and an artificial intelligence assistant. The "
                  "assistant gives helpful, detailed, and polite answers to the user's questions.")


def test_llava_1_5_family_prompt_is_conv_vicuna_v1_as_in_the_mdpo_json():
    assert system_prompts.VICUNA_V1 == CONV_VICUNA_V1 == MDPO_SYSTEM
    assert system_prompts.choose("auto", None, "vicuna_v1") == (CONV_VICUNA_V1, "model")


def _with_config(path, **changes):
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    for key, value in changes.items():
        if key == "text_name":
            config.setdefault("text_config", {})["_name_or_path"] = value
        else:
            config[key] = value
    config_path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")


def test_a_local_model_is_known_by_its_config_not_its_folder_name(tiny_llava, tmp_path):
    named_like_llava = shutil.copytree(tiny_llava, tmp_path / "llava-v1.5-7b")  # names no base model
    assert system_prompts.model_family(str(named_like_llava)) is None
    vicuna = _with_config(shutil.copytree(tiny_llava, tmp_path / "ref"), text_name="lmsys/vicuna-7b-v1.5")
    assert system_prompts.model_family(str(vicuna)) == "vicuna_v1"
    original = _with_config(shutil.copytree(tiny_llava, tmp_path / "orig"),
                            architectures=["LlavaLlamaForCausalLM"])
    assert system_prompts.model_family(str(original)) == "vicuna_v1"
    qwen = build_tiny_qwen2_vl(tmp_path / "llava-1.5-but-qwen")
    assert system_prompts.model_family(str(qwen)) is None
    assert system_prompts.model_family("llava-hf/llava-1.5-7b-hf") == "vicuna_v1"  # a Hub id: its name


@pytest.mark.slow
def test_build_with_a_local_ref_model_stores_its_familys_prompt(tiny_llava, tmp_path):
    ref = _with_config(shutil.copytree(tiny_llava, tmp_path / "ref"), text_name="lmsys/vicuna-7b-v1.5")
    out = tmp_path / "o"
    run_cli("build", "--source", "demo", "--n", 3, "--demo-size", 20, "--quiet", "--ref-model", ref,
            "--out", out)
    assert all(schema.system_of(r["prompt"]) == CONV_VICUNA_V1 for r in rows_of(out))
    assert manifest_json(out)["system_prompt"]["model_family"] == "vicuna_v1"


@pytest.mark.slow
def test_score_refuses_a_build_without_the_familys_prompt_and_names_the_command(tiny_llava, tmp_path):
    ref = _with_config(shutil.copytree(tiny_llava, tmp_path / "ref"), text_name="lmsys/vicuna-7b-v1.5")
    out = tmp_path / "o"
    run_cli("build", "--source", "demo", "--n", 3, "--demo-size", 20, "--quiet", "--out", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = run_cli("score", out, "--ref-model", ref, "--quiet", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert "curious user" in errors[0]
    command = errors[0].split("`")[1]
    assert command.startswith("mdpo-data build ") and f"--ref-model {ref}" in command
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written
    run_cli(*command.split()[1:])  # the printed command works as given
    rows = rows_of(out)
    assert rows and all(schema.system_of(r["prompt"]) == CONV_VICUNA_V1 for r in rows)
    assert all(r["ref_chosen_logps"] is not None for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["none", "Be brief."])
def test_score_accepts_a_build_whose_prompt_was_chosen_explicitly(tiny_llava, tmp_path, spec):
    ref = _with_config(shutil.copytree(tiny_llava, tmp_path / "ref"), text_name="lmsys/vicuna-7b-v1.5")
    out = tmp_path / "o"
    run_cli("build", "--source", "demo", "--n", 2, "--demo-size", 20, "--quiet", "--system-prompt", spec,
            "--out", out)
    run_cli("score", out, "--ref-model", ref, "--quiet")
    assert all(r["ref_chosen_logps"] is not None for r in rows_of(out))
