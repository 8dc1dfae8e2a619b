"""MDPO and its ablations as pure functions of summed response log-probs (docs/method.md).

A reward is r = beta * (log pi - log pi_ref) for each of the three sequences of an example:
    chosen                 (m_w, q, y_w)
    rejected               (m_w, q, y_l)
    chosen_rejected_image  (m_l, q, y_w)

A loss is a short function from rewards to named per-example terms, registered by name; the
trainer never branches on the loss name. `compute_loss` adds the optional extra anchors, weights
and sums the terms, and returns per-example losses (with grad) plus detached terms and rewards;
the caller reduces over the batch.

One term reads no reference: `sft`, the per-token negative log-likelihood of y_w given m_w
(log pi / response tokens), so a loss made of it alone trains from unscored data. Any term
joins any loss through a positive weight (RPO-style DPO + SFT: `--loss dpo --loss-weight sft=1`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

CHOSEN = "chosen"
REJECTED = "rejected"
CHOSEN_REJECTED_IMAGE = "chosen_rejected_image"
SEQUENCES = (CHOSEN, REJECTED, CHOSEN_REJECTED_IMAGE)

Rewards = dict[str, Tensor]  # sequence name -> [B] reward


@dataclass(frozen=True)
class TermInputs:
    """What a term may read: rewards, the policy's summed log-probs and response token counts."""

    rewards: Rewards
    policy: Mapping[str, Tensor]
    tokens: Mapping[str, Tensor] | None
    delta: float


@dataclass(frozen=True)
class LossOptions:
    beta: float = 0.1  # paper: 0.1 for all three terms
    delta: float = 0.0  # anchor value; paper: 0
    anchor_rejected: bool = False  # extra anchor: r(m_w, q, y_l) pushed below delta
    anchor_rejected_image: bool = False  # extra anchor: r(m_l, q, y_w) pushed below delta
    weights: Mapping[str, float] = field(default_factory=dict)  # term -> weight (default 1);
    # a positive weight on a term the loss lacks adds that term


@dataclass(frozen=True)
class LossOutput:
    losses: Tensor  # [B] weighted sum of the terms; carries the gradient
    terms: dict[str, Tensor]  # term -> [B], detached
    rewards: Rewards  # sequence -> [B], detached


# ---------------------------------------------------------------- terms: one line each
def prefer(better: Tensor, worse: Tensor | float) -> Tensor:
    """-log sigmoid(better - worse): small when `better` exceeds `worse`."""
    return -F.logsigmoid(better - worse)


def dpo_term(x: TermInputs) -> Tensor:
    return prefer(x.rewards[CHOSEN], x.rewards[REJECTED])


def conditional_term(x: TermInputs) -> Tensor:
    return prefer(x.rewards[CHOSEN], x.rewards[CHOSEN_REJECTED_IMAGE])


def anchor_term(x: TermInputs) -> Tensor:
    return prefer(x.rewards[CHOSEN], x.delta)


def anchor_rejected_term(x: TermInputs) -> Tensor:
    return prefer(x.delta, x.rewards[REJECTED])


def anchor_rejected_image_term(x: TermInputs) -> Tensor:
    return prefer(x.delta, x.rewards[CHOSEN_REJECTED_IMAGE])


def sft_term(x: TermInputs) -> Tensor:
    """Per-token NLL of y_w given m_w: -log pi(y_w|m_w,q) / its response tokens (no reference)."""
    if x.tokens is None or CHOSEN not in x.tokens:
        raise ValueError("the sft term needs the response token counts of the chosen sequence")
    return -x.policy[CHOSEN] / x.tokens[CHOSEN].clamp(min=1).to(x.policy[CHOSEN].dtype)


@dataclass(frozen=True)
class Term:
    function: Callable[[TermInputs], Tensor]
    sequences: tuple[str, ...]  # the policy sequences it reads
    uses_reference: bool = True  # reads rewards (so stored reference log-probs)


TERMS: dict[str, Term] = {
    "dpo": Term(dpo_term, (CHOSEN, REJECTED)),
    "conditional": Term(conditional_term, (CHOSEN, CHOSEN_REJECTED_IMAGE)),
    "anchor": Term(anchor_term, (CHOSEN,)),
    "anchor_rejected": Term(anchor_rejected_term, (REJECTED,)),
    "anchor_rejected_image": Term(anchor_rejected_image_term, (CHOSEN_REJECTED_IMAGE,)),
    "sft": Term(sft_term, (CHOSEN,), uses_reference=False),
}

# ---------------------------------------------------------------- losses: named sets of terms
LOSSES: dict[str, tuple[str, ...]] = {}


def register_loss(name: str, terms: tuple[str, ...]) -> None:
    unknown = [t for t in terms if t not in TERMS]
    if unknown:
        raise ValueError(f"loss {name!r} names unknown terms {unknown}; known: {sorted(TERMS)}")
    LOSSES[name] = terms


register_loss("mdpo", ("dpo", "conditional", "anchor"))  # the paper's objective
register_loss("dpo", ("dpo",))
register_loss("mdpo_no_cond", ("dpo", "anchor"))  # ablation: no conditional term
register_loss("mdpo_no_anchor", ("dpo", "conditional"))  # ablation: no anchor
register_loss("sft", ("sft",))  # supervised fine-tuning on y_w; needs no reference log-probs


def active_terms(name: str, options: LossOptions) -> tuple[str, ...]:
    """The loss's own terms, the extra anchors the options switch on, and any other term
    given a positive weight."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    extra = (("anchor_rejected",) if options.anchor_rejected else ()) + (
        ("anchor_rejected_image",) if options.anchor_rejected_image else ()
    )
    extra += tuple(t for t in TERMS if options.weights.get(t, 0.0) > 0)
    own = LOSSES[name]
    return own + tuple(dict.fromkeys(t for t in extra if t not in own))


def required_sequences(name: str, options: LossOptions) -> tuple[str, ...]:
    """Which of the three sequences the policy must run: DPO needs two, MDPO three."""
    needed = {seq for term in active_terms(name, options) for seq in TERMS[term].sequences}
    return tuple(seq for seq in SEQUENCES if seq in needed)


def uses_reference(name: str, options: LossOptions) -> bool:
    """False when no active term reads a reward: such a loss trains from unscored data."""
    return any(TERMS[term].uses_reference for term in active_terms(name, options))


def rewards(policy: Mapping[str, Tensor], reference: Mapping[str, Tensor], beta: float) -> Rewards:
    """r = beta * (log pi - log pi_ref) for every sequence the policy ran and the reference has."""
    return {name: beta * (policy[name] - reference[name]) for name in policy if name in reference}


def compute_loss(
    name: str,
    policy: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    options: LossOptions = LossOptions(),
    tokens: Mapping[str, Tensor] | None = None,
) -> LossOutput:
    """Per-example weighted sum of the loss's terms, with detached terms and rewards.

    `tokens` (sequence -> [B] response token counts) is needed by per-token terms (sft). A
    loss that reads no reward gets no rewards, so its `reference` may be empty or NaN."""
    active = active_terms(name, options)
    r = rewards(policy, reference, options.beta) if uses_reference(name, options) else {}
    x = TermInputs(r, policy, tokens, options.delta)
    terms = {t: TERMS[t].function(x) for t in active}
    losses = torch.stack([options.weights.get(t, 1.0) * v for t, v in terms.items()]).sum(0)
    return LossOutput(
        losses=losses,
        terms={t: v.detach() for t, v in terms.items()},
        rewards={k: v.detach() for k, v in r.items()},
    )
