"""Score + 2 train steps on four architectures' tiny configs: LLaVA, Qwen2-VL, Qwen2.5-VL and
Idefics3 (SmolVLM). The stored reference log-probs equal an independent unbatched forward
over prompt + response + end-of-turn (system prompt included), and the trainer's spot check
(the policy before LoRA recomputes them) passes, so training runs."""

import pytest
from score_fixtures import load, make_build, manual_logp

from mdpo_data.scoring import logprobs

from mdpo_data.format import shards
from mdpo_data.format.manifest import read_manifest
from mdpo_data.scoring.stage import score_build
from mdpo_data.demo.tiny import build_tiny_idefics3, build_tiny_llava, build_tiny_qwen2_5_vl, build_tiny_qwen2_vl
from mdpo_train.config import load_config
from mdpo_train.loop import run
from mdpo_train.metrics import read_jsonl
from train_fixtures import one_thread

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

BUILDERS = {"llava": build_tiny_llava, "qwen2_vl": build_tiny_qwen2_vl,
            "qwen2_5_vl": build_tiny_qwen2_5_vl, "idefics3": build_tiny_idefics3}
SYSTEM = "Answer in one short sentence."


def _with_system(row):
    row["prompt"] = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}] + row["prompt"]
    return row


@pytest.mark.parametrize("family", list(BUILDERS))
def test_score_then_two_train_steps(family, tmp_path):
    model_dir = BUILDERS[family](tmp_path / "model")
    build = make_build(tmp_path / "data", shard_rows=(4,), eval_rows=(), sizes=[(56, 56), (90, 60)],
                       edit=_with_system)
    with one_thread():
        score_build(build, str(model_dir), progress=False)
    reference = read_manifest(build)["reference"]
    assert reference["fingerprint"]["response_rule"] == logprobs.RESPONSE_RULE
    model, processor = load(model_dir)
    row = shards.read_shard(build / "train-00000-of-00001.arrow").to_pylist()[0]
    for column, seq in logprobs.row_sequences(row).items():
        assert seq.system == SYSTEM
        want, count = manual_logp(model, processor, seq.image, seq.question, seq.response,
                                  system=SYSTEM, end_of_turn=logprobs.end_of_turn(processor))
        assert row[column] == pytest.approx(want, abs=1e-4)
    options = {"shards": str(build), "output_dir": str(tmp_path / "run"), "max_steps": 2,
               "global_batch_size": 2, "per_device_batch_size": 2, "lora_r": 4, "lora_alpha": 8,
               "lr": 1e-3, "progress": False, "save_steps": 0, "spot_check_rows": 2}
    with one_thread():
        run(load_config(None, options))
    steps = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
