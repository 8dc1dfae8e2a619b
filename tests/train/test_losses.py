"""Every registered loss against values worked out by hand.

Fixture (beta = 0.5, every reference log-prob = -2):
    policy chosen                 [-1, -2, -3]  -> r_c   = 0.5 * ([-1,-2,-3] + 2) = [ 0.5, 0.0, -0.5]
    policy rejected               [-3, -2, -1]  -> r_l   =                          [-0.5, 0.0,  0.5]
    policy chosen, rejected image [-2, -3, -2]  -> r_cri =                          [ 0.0, -0.5, 0.0]
With L(x) = -log sigmoid(x) = log(1 + e^-x):
    L(1) = 0.313262   L(0.5) = 0.474077   L(0) = 0.693147   L(-0.5) = 0.974077   L(-1) = 1.313262
    dpo          L(r_c - r_l)   = L([1, 0, -1])        = [0.313262, 0.693147, 1.313262]
    conditional  L(r_c - r_cri) = L([0.5, 0.5, -0.5])  = [0.474077, 0.474077, 0.974077]
    anchor       L(r_c - 0)     = L([0.5, 0, -0.5])    = [0.474077, 0.693147, 0.974077]
    anchor_rejected        L(0 - r_l)   = L([0.5, 0, -0.5]) = [0.474077, 0.693147, 0.974077]
    anchor_rejected_image  L(0 - r_cri) = L([0, 0.5, 0])    = [0.693147, 0.474077, 0.693147]
    sft (chosen response tokens [2, 4, 3])  -log pi / tokens = [1/2, 2/4, 3/3] = [0.5, 0.5, 1.0]
"""

import pytest
import torch

from mdpo_train.losses import (
    CHOSEN,
    CHOSEN_REJECTED_IMAGE,
    LOSSES,
    REJECTED,
    LossOptions,
    compute_loss,
    register_loss,
    required_sequences,
    uses_reference,
)

DPO = [0.313262, 0.693147, 1.313262]
COND = [0.474077, 0.474077, 0.974077]
ANCHOR = [0.474077, 0.693147, 0.974077]
ANCHOR_REJ = [0.474077, 0.693147, 0.974077]
ANCHOR_REJ_IMG = [0.693147, 0.474077, 0.693147]


def _add(*rows):
    return [round(sum(values), 6) for values in zip(*rows)]


@pytest.fixture
def logps():
    policy = {
        CHOSEN: torch.tensor([-1.0, -2.0, -3.0], requires_grad=True),
        REJECTED: torch.tensor([-3.0, -2.0, -1.0], requires_grad=True),
        CHOSEN_REJECTED_IMAGE: torch.tensor([-2.0, -3.0, -2.0], requires_grad=True),
    }
    reference = {name: torch.full((3,), -2.0) for name in policy}
    return policy, reference


OPTS = LossOptions(beta=0.5)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mdpo", _add(DPO, COND, ANCHOR)),  # [1.261416, 1.860371, 3.261416]
        ("dpo", DPO),
        ("mdpo_no_cond", _add(DPO, ANCHOR)),
        ("mdpo_no_anchor", _add(DPO, COND)),
    ],
)
def test_registered_losses_match_hand_values(logps, name, expected):
    out = compute_loss(name, *logps, OPTS)
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-5)
    assert out.losses.requires_grad
    assert all(not t.requires_grad for t in out.terms.values())
    assert all(not r.requires_grad for r in out.rewards.values())


def test_mdpo_terms_and_rewards(logps):
    out = compute_loss("mdpo", *logps, OPTS)
    assert set(out.terms) == {"dpo", "conditional", "anchor"}
    assert out.terms["dpo"].tolist() == pytest.approx(DPO, abs=1e-5)
    assert out.terms["conditional"].tolist() == pytest.approx(COND, abs=1e-5)
    assert out.terms["anchor"].tolist() == pytest.approx(ANCHOR, abs=1e-5)
    assert out.rewards[CHOSEN].tolist() == pytest.approx([0.5, 0.0, -0.5])
    assert out.rewards[REJECTED].tolist() == pytest.approx([-0.5, 0.0, 0.5])
    assert out.rewards[CHOSEN_REJECTED_IMAGE].tolist() == pytest.approx([0.0, -0.5, 0.0])


def test_extra_anchors_push_rewards_below_delta(logps):
    opts = LossOptions(beta=0.5, anchor_rejected=True, anchor_rejected_image=True)
    out = compute_loss("mdpo", *logps, opts)
    assert out.terms["anchor_rejected"].tolist() == pytest.approx(ANCHOR_REJ, abs=1e-5)
    assert out.terms["anchor_rejected_image"].tolist() == pytest.approx(ANCHOR_REJ_IMG, abs=1e-5)
    expected = _add(DPO, COND, ANCHOR, ANCHOR_REJ, ANCHOR_REJ_IMG)
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-5)


def test_delta_moves_the_anchor(logps):
    # delta = 0.5: anchor = L(r_c - 0.5) = L([0, -0.5, -1]) = [0.693147, 0.974077, 1.313262]
    out = compute_loss("mdpo", *logps, LossOptions(beta=0.5, delta=0.5))
    assert out.terms["anchor"].tolist() == pytest.approx([0.693147, 0.974077, 1.313262], abs=1e-5)


def test_weights_scale_each_term(logps):
    # 2 * dpo + 0 * conditional + 1 * anchor
    opts = LossOptions(beta=0.5, weights={"dpo": 2.0, "conditional": 0.0})
    out = compute_loss("mdpo", *logps, opts)
    assert out.losses.tolist() == pytest.approx(_add(DPO, DPO, ANCHOR), abs=1e-5)


def test_gradient_raises_chosen_and_lowers_rejected(logps):
    policy, reference = logps
    compute_loss("mdpo", policy, reference, OPTS).losses.sum().backward()
    assert (policy[CHOSEN].grad < 0).all()  # descending the loss raises log pi(y_w|m_w)
    assert (policy[REJECTED].grad > 0).all()
    assert (policy[CHOSEN_REJECTED_IMAGE].grad > 0).all()


def test_dpo_needs_two_sequences_mdpo_three():
    assert required_sequences("dpo", LossOptions()) == (CHOSEN, REJECTED)
    assert required_sequences("mdpo_no_cond", LossOptions()) == (CHOSEN, REJECTED)
    assert required_sequences("mdpo", LossOptions()) == (CHOSEN, REJECTED, CHOSEN_REJECTED_IMAGE)
    with_image_anchor = LossOptions(anchor_rejected_image=True)
    assert CHOSEN_REJECTED_IMAGE in required_sequences("dpo", with_image_anchor)


def test_dpo_runs_on_two_sequences_only():
    policy = {CHOSEN: torch.tensor([-1.0, -2.0, -3.0]), REJECTED: torch.tensor([-3.0, -2.0, -1.0])}
    reference = {name: torch.full((3,), -2.0) for name in policy}
    assert compute_loss("dpo", policy, reference, OPTS).losses.tolist() == pytest.approx(DPO, abs=1e-5)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown loss 'ipo'.*mdpo"):
        compute_loss("ipo", {}, {}, OPTS)
    with pytest.raises(ValueError, match="unknown terms"):
        register_loss("bad", ("dpo", "hinge"))
    assert "bad" not in LOSSES


TOKENS = {CHOSEN: torch.tensor([2, 4, 3]), REJECTED: torch.tensor([5, 5, 5])}
SFT = [0.5, 0.5, 1.0]


def test_sft_is_the_per_token_nll_of_the_chosen_response_without_a_reference():
    policy = {CHOSEN: torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)}
    out = compute_loss("sft", policy, {}, OPTS, tokens=TOKENS)
    assert out.losses.tolist() == pytest.approx(SFT, abs=1e-6)
    assert out.rewards == {} and set(out.terms) == {"sft"}
    out.losses.sum().backward()
    assert policy[CHOSEN].grad.tolist() == pytest.approx([-0.5, -0.25, -1 / 3])  # raises log pi(y_w)
    assert required_sequences("sft", LossOptions()) == (CHOSEN,)
    assert not uses_reference("sft", LossOptions()) and uses_reference("dpo", LossOptions())
    nan_reference = {CHOSEN: torch.full((3,), float("nan"))}  # unscored rows
    assert compute_loss("sft", policy, nan_reference, OPTS, tokens=TOKENS).losses.isfinite().all()
    with pytest.raises(ValueError, match="token counts"):
        compute_loss("sft", policy, {}, OPTS)


def test_a_positive_weight_adds_a_term_to_a_loss(logps):
    # RPO-style: dpo + 2 * sft; a zero weight adds nothing
    opts = LossOptions(beta=0.5, weights={"sft": 2.0, "anchor": 0.0})
    assert required_sequences("dpo", opts) == (CHOSEN, REJECTED)
    out = compute_loss("dpo", *logps, opts, tokens=TOKENS)
    assert set(out.terms) == {"dpo", "sft"}
    assert out.losses.tolist() == pytest.approx(_add(DPO, SFT, SFT), abs=1e-5)
    cond = LossOptions(beta=0.5, weights={"conditional": 1.0})
    assert compute_loss("dpo", *logps, cond).losses.tolist() == pytest.approx(_add(DPO, COND), abs=1e-5)
