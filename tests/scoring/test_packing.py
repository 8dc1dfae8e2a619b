"""Prefix sharing is exact: packed rows [prefix, y_w, y_l] give the separate forwards' log-probs
(1e-5, fp32) and LoRA gradients (1e-4 relative), with padding and uneven lengths in the batch."""

import pytest
import torch
from PIL import Image
from score_fixtures import make_row
from train_fixtures import one_thread

from mdpo_data.scoring.logprobs import (
    PrefixGroup, block_attention_mask, encode, packed_logps, response_logps,
)
from mdpo_data.scoring.packing import _members, encode_groups
from mdpo_train.model import prefix_sharing_support

LOGP_TOL, GRAD_RTOL = 1e-5, 1e-4


def _groups():
    """MDPO-shaped groups of uneven lengths: (y_w, y_l) under m_w, y_w under m_l, and a text-only one."""
    groups = []
    for i in range(3):
        image = Image.new("RGB", (56 + 28 * i, 56), (60 * i, 200 - 50 * i, 90))
        question = "What color is the circle?" + " Answer briefly." * i
        chosen = "The circle is red." + " It is large and round." * (2 - i)
        groups.append(PrefixGroup(image, question, (chosen, "A blue square." if i else "No.")))
        groups.append(PrefixGroup(image.rotate(90), question, (chosen,)))
    groups.append(PrefixGroup(None, "How many shapes?", ("Three.", "There are five blue squares.")))
    return groups


def _separate(model, processor, groups):
    seqs = [s for g in groups for s in g.sequences()]
    batch, kept = encode(processor, seqs)
    assert kept == list(range(len(seqs)))
    return response_logps(model, batch)


def _attention(model, name):
    model.set_attn_implementation(name)
    return model


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_llava_packed_logps_equal_separate_forwards(llava, attention):
    model, processor = llava
    _attention(model, attention)
    groups = _groups()
    with one_thread(), torch.no_grad():
        want, want_counts = _separate(model, processor, groups)
        packed = encode_groups(processor, groups, share=True)
        got, counts = packed_logps(model, packed)
    assert packed.rows == len(groups) and packed.split_groups == 0  # 11 sequences in 7 rows
    assert packed.segments.max() == 2 and (packed.segments == -1).any()  # packed and padded
    assert torch.equal(counts.cpu(), want_counts.cpu())
    assert torch.allclose(got, want, atol=LOGP_TOL, rtol=0), (got - want).abs().max()
    _attention(model, "sdpa")


# The M-RoPE families (3-D positions from the image grid) pack with restarted positions.
MROPE = ["qwen", "qwen2_5", "qwen3"]


@pytest.mark.parametrize("name", MROPE)
def test_mrope_packed_logps_equal_separate_forwards(request, name):
    model, processor = request.getfixturevalue(name)
    supported, why = prefix_sharing_support(model)
    assert supported and "M-RoPE positions restarted" in why, why
    groups = _groups()  # images of three sizes: different grids, padded rows
    with one_thread(), torch.no_grad():
        want, want_counts = _separate(model, processor, groups)
        packed = encode_groups(processor, groups, share=True)
        got, counts = packed_logps(model, packed)
    assert packed.block and packed.rows == len(groups) and packed.split_groups == 0
    assert packed.segments.max() == 2 and (packed.segments == -1).any()
    assert torch.equal(counts.cpu(), want_counts.cpu())
    assert torch.allclose(got, want, atol=LOGP_TOL, rtol=0), (got - want).abs().max()


@pytest.mark.parametrize("name", MROPE)
def test_mrope_positions_are_those_of_the_separate_sequences(request, name):
    """Token for token, the packed row's 3-D positions are what the model's own get_rope_index
    gives each separate [prefix, r_k] sequence (prefix from the image grid, r_k right after it)."""
    from mdpo_data.scoring.logprobs import model_inputs
    from mdpo_data.scoring.positions import packed_mrope_positions, rope_index

    model, processor = request.getfixturevalue(name)
    groups = _groups()
    packed = encode_groups(processor, groups, share=True)
    inputs = model_inputs(model, packed.inputs)
    got = packed_mrope_positions(model, inputs, packed.segments, packed.position_ids)
    seqs = [s for g in groups for s in g.sequences()]
    batch, _ = encode(processor, seqs)
    want, _ = rope_index(model)(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                image_grid_thw=batch.get("image_grid_thw"),
                                attention_mask=batch["attention_mask"])
    assert got.shape[0] == 3 and (got[1:] != got[:1]).any()  # image tokens: real 3-D positions
    real = batch["attention_mask"].bool()
    for n in range(packed.n_sequences):
        row = int(packed.score_row[packed.score_seq == n][0])
        mine = (packed.segments[row] == 0) | (packed.segments[row] == _segment_of(packed, n))
        assert torch.equal(got[:, row, mine], want[:, n, real[n]]), n


def _segment_of(packed, n: int) -> int:
    """The segment id that holds output sequence n in its row."""
    at = (packed.score_seq == n).nonzero()[0, 0]
    return int(packed.segments[packed.score_row[at], packed.score_tgt[at]])


@pytest.mark.parametrize("name", ["llava", *MROPE])
def test_lora_gradients_equal_separate_forwards(request, name):
    from peft import LoraConfig, get_peft_model

    from mdpo_train.model import language_model_linear_names

    base, processor = request.getfixturevalue(name)
    assert prefix_sharing_support(base)[0]
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=language_model_linear_names(base))
    model = get_peft_model(base, config)
    try:
        groups = _groups()
        weights = torch.randn(sum(len(g.responses) for g in groups))
        grads = []
        with one_thread():
            for packed in (True, False):
                model.zero_grad()
                if packed:
                    logps, _ = packed_logps(model, encode_groups(processor, groups, share=True))
                else:
                    logps, _ = _separate(model, processor, groups)
                (weights * logps).sum().backward()
                grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert grads[0] and grads[0].keys() == grads[1].keys()
        for name, want in grads[1].items():
            got = grads[0][name]
            assert want.abs().max() > 0, name
            assert (got - want).abs().max() <= GRAD_RTOL * want.abs().max(), name
    finally:
        model.unload()  # the module-scoped base model without adapters again


def test_trainer_rows_share_the_chosen_image_and_keep_sequence_major_order(llava):
    from mdpo_train.data import pack_rows
    from mdpo_train.losses import SEQUENCES

    model, processor = llava
    rows = [make_row(i) for i in range(3)]
    with one_thread(), torch.no_grad():
        shared, _ = packed_logps(model, pack_rows(rows, processor, SEQUENCES, share=True))
        separate, _ = packed_logps(model, pack_rows(rows, processor, SEQUENCES, share=False))
        dpo = pack_rows(rows, processor, SEQUENCES[:2], share=True)
    assert dpo.rows == 3 and dpo.n_sequences == 6  # DPO: one row per example
    assert torch.allclose(shared, separate, atol=LOGP_TOL, rtol=0)


def test_block_mask_hides_the_other_response():
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    allowed = block_attention_mask(segments, torch.float32)[0, 0] == 0
    assert allowed[3].tolist() == [True, True, True, True, False, False, False]  # y_w: prefix + itself
    assert allowed[5].tolist() == [True, True, False, False, True, True, False]  # y_l: never y_w
    assert allowed[6].tolist() == [True, True, False, False, False, False, True]  # padding: itself
    assert not allowed.triu(1).any()  # causal


def test_groups_share_their_longest_common_prefix_else_split():
    from mdpo_data.scoring.logprobs import Rendered
    from mdpo_data.scoring.packing import _shared

    same = [Rendered("", True, [1, 2, 3], 1), Rendered("", True, [1, 2, 4, 5], 2)]
    # the heads differ in their last token (a template space merged with each response):
    # they share [1] and each appends its own unscored tail
    merged = [Rendered("", True, [1, 2, 3], 1), Rendered("", True, [1, 9, 4], 1)]
    disjoint = [Rendered("", True, [5, 2, 3], 1), Rendered("", True, [1, 9, 4], 1)]
    image_after = [Rendered("", True, [1, 7, 3], 1), Rendered("", True, [1, 8, 4], 1)]
    assert _members(same, True) == ([[0, 1]], 0) and _shared(same) == 2
    assert _members(merged, True) == ([[0, 1]], 0) and _shared(merged) == 1
    assert _members(disjoint, True) == ([[0], [1]], 1)
    assert _members(image_after, True, image_token=7) == ([[0], [1]], 1)  # images stay in the prefix
    assert _members(same, False) == ([[0], [1]], 0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_training_with_and_without_sharing_takes_the_same_steps(tmp_path, capsys):
    """The spot check passes and the losses of a few steps match: sharing changes no number."""
    from mdpo_train.config import load_config
    from mdpo_train.loop import run
    from mdpo_train.metrics import read_jsonl
    from train_fixtures import scored_demo

    data = scored_demo(tmp_path / "demo", n=12, eval_fraction=0.0)
    losses = {}
    for share in (True, False):
        out = tmp_path / f"run-{share}"
        with one_thread():
            recipe = run(load_config(None, {
                "shards": str(data), "output_dir": str(out), "max_steps": 2, "global_batch_size": 4,
                "per_device_batch_size": 2, "lr": 5e-3, "lora_r": 4, "lora_alpha": 8, "seed": 1,
                "lora_dropout": 0.0, "progress": False, "save_steps": 0, "prefix_sharing": share,
            }))
        assert recipe.spot_check["values"] > 0 and recipe.prefix_sharing is share
        losses[share] = [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
    log = capsys.readouterr().out
    assert "prefix sharing on: llava: 1-D positions" in log
    assert "prefix sharing off, separate sequences: prefix_sharing: false" in log
    assert "equal to separate sequences on 2 rows" in log
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[True][0] == pytest.approx(3 * 0.693147, abs=1e-4)  # policy == reference at step 1


def test_qwen3_vl_deepstack_features_land_where_they_do_alone(qwen3):
    """Qwen3-VL adds its vision tower's deepstack features to the first decoder layers at the
    image tokens: in a packed row they reach the same positions, with the same values, as in
    the separate sequence of the row's first response (the prefix leads both)."""
    model, processor = qwen3
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append((kwargs["visual_pos_masks"], kwargs["deepstack_visual_embeds"])),
        with_kwargs=True)
    groups = _groups()
    try:
        with one_thread(), torch.no_grad():
            packed = encode_groups(processor, groups, share=True)
            packed_logps(model, packed)
            _separate(model, processor, groups)
    finally:
        hook.remove()
    (rows_mask, rows_embeds), (seq_mask, seq_embeds) = seen
    assert len(rows_embeds) == 2 and rows_mask.any()  # two deepstack layers, image tokens present
    first = [int(packed.score_seq[packed.score_row == r].min()) for r in range(packed.rows)]
    width = min(rows_mask.shape[1], seq_mask.shape[1])  # no image token past either's width
    assert not rows_mask[:, width:].any() and not seq_mask[:, width:].any()
    for r, n in enumerate(first):
        assert torch.equal(rows_mask[r, :width], seq_mask[n, :width]), r
    for got, want in zip(rows_embeds, seq_embeds):
        per_seq = want.split(seq_mask.sum(1).tolist())
        assert torch.equal(got, torch.cat([per_seq[n] for n in first]))


def test_gemma3_packed_rows_keep_bidirectional_images_and_sliding_window(gemma3):
    """Gemma 3's image tokens see each other both ways and its sliding layers see 16 positions:
    packed rows (longer than the window) give the plain forwards' log-probs, and would not
    with the block mask alone. One group per forward: on this branch the batched Gemma 3
    processor call wants nested image lists (the families work changes `process_rendered` for that)."""
    model, processor = gemma3
    supported, why = prefix_sharing_support(model)
    assert supported and "bidirectional" in why, why
    got, want, naive = [], [], []
    with one_thread(), torch.no_grad():
        for group in _groups()[:-1]:
            packed = encode_groups(processor, [group], share=True)
            assert packed.block and packed.segments.shape[1] > 16 and (packed.inputs["token_type_ids"] == 1).any()
            got.append(packed_logps(model, packed)[0])
            want.append(torch.cat([_separate(model, processor, [PrefixGroup(group.image, group.question, (r,))])[0]
                                   for r in group.responses]))
            model.config.model_type = "not-gemma3"  # the generic block mask, no image/window rules
            try:
                naive.append(packed_logps(model, packed)[0])
            finally:
                model.config.model_type = "gemma3"
    got, want, naive = torch.cat(got), torch.cat(want), torch.cat(naive)
    assert torch.allclose(got, want, atol=LOGP_TOL, rtol=0), (got - want).abs().max()
    assert (naive - want).abs().max() > 100 * LOGP_TOL


def test_gemma3_layer_masks_open_image_blocks_and_cut_the_window_by_position():
    from types import SimpleNamespace

    from mdpo_data.scoring.image_attention import layer_masks

    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]])
    types = torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0]])  # one image: tokens 1 and 2
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 4, 5]])  # y_l restarts after the prefix
    masks = layer_masks(SimpleNamespace(sliding_window=3), block_attention_mask(segments, torch.float32),
                        types, positions)
    full, sliding = (masks[k][0, 0] == 0 for k in ("full_attention", "sliding_attention"))
    assert full[1].tolist() == [True, True, True, False, False, False, False, False]  # sees its image's next token
    assert full[7].tolist() == [True, True, True, True, False, False, True, True]  # y_l: never y_w
    assert sliding[7].tolist() == [False, False, False, True, False, False, True, True]  # positions 3..5


def test_gemma3_lora_gradients_equal_separate_forwards(gemma3):
    """The trainer's side of the Gemma 3 rule: LoRA gradients through the per-layer-type masks
    equal the separate sequences' (1e-4 relative); one group per forward, as above."""
    from peft import LoraConfig, get_peft_model

    from mdpo_train.model import language_model_linear_names

    base, processor = gemma3
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=language_model_linear_names(base))
    model = get_peft_model(base, config)
    try:
        groups = _groups()[:-1]
        weights = torch.randn(sum(len(g.responses) for g in groups))
        grads = []
        with one_thread():
            for packed in (True, False):
                model.zero_grad()
                if packed:
                    logps = [packed_logps(model, encode_groups(processor, [g], share=True))[0] for g in groups]
                else:
                    logps = [_separate(model, processor, [PrefixGroup(g.image, g.question, (r,))])[0]
                             for g in groups for r in g.responses]
                (weights * torch.cat(logps)).sum().backward()
                grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert grads[0] and grads[0].keys() == grads[1].keys()
        for name, want in grads[1].items():
            assert want.abs().max() > 0, name
            assert (grads[0][name] - want).abs().max() <= GRAD_RTOL * want.abs().max(), name
    finally:
        model.unload()
