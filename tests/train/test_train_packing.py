"""The trainer's packed rows (y_w and y_l after one copy of their prefix) train exactly as
separate sequences: same MDPO loss and LoRA gradients (1e-4 relative), through the trainer's
own collate, policy and loss, on M-RoPE models with images of different sizes in a batch."""

import pytest
import torch
from score_fixtures import make_row
from train_fixtures import one_thread

from mdpo_data.format import schema
from mdpo_data.scoring.logprobs import packed_logps
from mdpo_train.config import TrainConfig
from mdpo_train.data import make_batch
from mdpo_train.losses import SEQUENCES, compute_loss
from mdpo_train.model import make_policy, prefix_sharing_support

GRAD_RTOL = 1e-4


def _rows():
    """Three examples with images of three sizes (different grids) and uneven responses."""
    rows = [make_row(i, size=(48 + 28 * i, 40 + 14 * i)) for i in range(3)]
    for i, row in enumerate(rows):  # reference log-probs away from the policy's: non-zero rewards
        for k, column in enumerate(schema.REF_LOGP_COLUMNS):
            row[column] = -20.0 - 3 * i - k
    return rows


def _loss_and_grads(model, processor, rows, share: bool):
    batch = make_batch(rows, processor, SEQUENCES, None, share=share)
    model.zero_grad()
    logps, _ = packed_logps(model, batch.inputs)
    policy = dict(zip(batch.sequences, logps.view(len(batch.sequences), -1)))
    loss = compute_loss("mdpo", policy, batch.reference).losses.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return batch.inputs, float(loss.detach()), grads


@pytest.mark.parametrize("name", ["qwen", "qwen2_5", "qwen3"])
def test_packed_training_step_equals_separate_sequences(request, name):
    base, processor = request.getfixturevalue(name)
    supported, why = prefix_sharing_support(base)
    assert supported and "M-RoPE" in why, why
    torch.manual_seed(0)
    model = make_policy(base, TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0))
    try:
        for name_, param in model.named_parameters():  # B = 0 at init would zero A's gradients
            if "lora_B" in name_:
                torch.nn.init.normal_(param, std=0.05)
        with one_thread():
            shared, loss_shared, got = _loss_and_grads(model, processor, _rows(), True)
            separate, loss_separate, want = _loss_and_grads(model, processor, _rows(), False)
        assert shared.block and shared.rows == 6 and separate.rows == 9  # 9 sequences in 6 rows
        assert loss_shared == pytest.approx(loss_separate, rel=1e-5)
        assert got and got.keys() == want.keys()
        for key, expected in want.items():
            assert expected.abs().max() > 0, key
            assert (got[key] - expected).abs().max() <= GRAD_RTOL * expected.abs().max(), key
    finally:
        model.unload()  # the module-scoped base model without adapters again
        base.eval()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_qwen2_5_vl_scores_and_trains_packed_and_says_so(tmp_path, capsys):
    """Score then train on Qwen2.5-VL: both pack (the score stats and the run log say so), the
    trainer's start-up check finds packed = separate, and step 1's loss is 3 ln 2."""
    from mdpo_data.build.stage import run_build
    from mdpo_data.config.runtime import Runtime
    from mdpo_data.config.build import BuildConfig
    from mdpo_data.demo.tiny import build_tiny_qwen2_5_vl
    from mdpo_data.scoring.stage import score_build
    from mdpo_train.config import load_config
    from mdpo_train.loop import run
    from mdpo_train.metrics import read_jsonl

    model = build_tiny_qwen2_5_vl(tmp_path / "model")
    data = tmp_path / "data"
    with one_thread():
        run_build(BuildConfig(source="demo", n=8, rejected="crop:0-0.2", seed=0, eval_fraction=0.0),
                  data, runtime=Runtime(overwrite=True), progress=False)
        stats = score_build(data, str(model), progress=False)
    assert stats["prefix_reuse"] is True and "M-RoPE" in stats["prefix_reuse_reason"], stats
    with one_thread():
        recipe = run(load_config(None, {
            "shards": str(data), "output_dir": str(tmp_path / "run"), "max_steps": 2,
            "global_batch_size": 4, "per_device_batch_size": 2, "lora_r": 4, "lora_alpha": 8,
            "lora_dropout": 0.0, "progress": False, "save_steps": 0, "seed": 1,
        }))
    assert recipe.prefix_sharing is True
    log = capsys.readouterr().out
    assert "prefix sharing on: qwen2_5_vl: 3-D M-RoPE positions restarted per response" in log
    assert "equal to separate sequences on 2 rows" in log
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert losses[0] == pytest.approx(3 * 0.693147, abs=1e-4)
