"""The FlexAttention path: the packed block mask as a BlockMask gives sdpa's log-probs (1e-5,
fp32, CPU), and bf16 packed rows stay within bf16's own batch-composition noise of separate rows."""

import pytest
import torch
from train_fixtures import one_thread

from mdpo_data.scoring.flex import FLEX, block_mask, supports_flex
from mdpo_data.scoring.logprobs import block_attention_mask, packed_logps, prefix_reuse_support
from mdpo_data.scoring.packing import encode_groups

from test_packing import _groups, _separate  # noqa: E402 - the same uneven MDPO-shaped groups

# bf16 on CPU: packed vs separate rows of the tiny LLaVA differ by rounding only (measured
# 0.005 nats on a summed response of <= 40 tokens; the scorer's own bf16 batch-composition
# noise is ~0.003, see docs/gpu.md). Bound: 0.02, not fp32's 1e-5.
BF16_TOL = 0.02


def test_block_mask_is_the_dense_mask():
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, 2, -1], [0, 1, 1, -1, -1, -1, -1, -1]])
    dense = block_attention_mask(segments, torch.float32)[:, 0] == 0
    mask = block_mask(segments)
    mod = mask.mask_mod
    got = torch.zeros_like(dense)
    for b in range(2):
        for q in range(8):
            for k in range(8):
                got[b, q, k] = bool(mod(torch.tensor(b), torch.tensor(0), torch.tensor(q), torch.tensor(k)))
    assert torch.equal(got, dense)
    assert mask.shape == (2, 1, 8, 8)


def test_qwen2_vl_has_no_flex_path(qwen):
    ok, why = supports_flex(qwen[0])
    assert not ok and "not supported" in why


@pytest.mark.slow  # torch.compile of flex_attention on CPU: ~1 min cold on 2 cores, cached after
def test_flex_packed_logps_equal_sdpa(llava):
    model, processor = llava
    assert supports_flex(model)[0]
    groups = _groups()
    packed = encode_groups(processor, groups, share=True)
    try:
        with one_thread(), torch.no_grad():
            want, _ = packed_logps(model, packed)
            model.set_attn_implementation(FLEX)
            assert prefix_reuse_support(model)[0]
            got, _ = packed_logps(model, packed)
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_bf16_packed_within_batch_noise_of_separate(llava):
    model, processor = llava
    groups = _groups()
    model.to(torch.bfloat16)
    try:
        with one_thread(), torch.no_grad():
            separate, _ = _separate(model, processor, groups)
            alone, _ = _separate(model, processor, groups[:1])  # another batch composition
            packed, _ = packed_logps(model, encode_groups(processor, groups, share=True))
    finally:
        model.to(torch.float32)
    gap = (packed - separate).abs().max()
    noise = (alone - separate[: len(alone)]).abs().max()
    assert gap <= BF16_TOL, gap
    print(f"bf16 packed-separate {gap:.4f}, separate under two batch compositions {noise:.4f}")


def test_attention_option_loads_the_kernel_or_says_why(tmp_path):
    from mdpo_data.demo.tiny import build_tiny_llava, build_tiny_qwen2_vl
    from mdpo_data.scoring.logprobs import attention_implementation
    from mdpo_data.scoring.models import ModelLoadError, load_model

    model, _ = load_model(str(build_tiny_llava(tmp_path / "llava")), device="cpu", attention="eager")
    assert attention_implementation(model) == "eager"
    with pytest.raises(ModelLoadError, match="attention 'flex_attention' is not available"):
        load_model(str(build_tiny_qwen2_vl(tmp_path / "qwen")), device="cpu", attention=FLEX)
