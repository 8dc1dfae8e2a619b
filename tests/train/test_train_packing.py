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
