"""Built-in demo source: synthetic shape scenes whose right answer depends on the image.

No files, no network: every scene is drawn from (seed, row), so the same seed gives the same
candidates and the same PNG bytes. A scene holds a target group (one shape, one colour,
1-5 items) and sometimes a distractor group of another shape and colour. Questions ask
the count, colour, shape, position or presence of the target; `chosen` is right and
`rejected` is a fluent answer that is wrong for this image (wrong count/colour/shape/side),
which is exactly the contrast MDPO needs: only the image tells the two apart.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections.abc import Iterator

from mdpo_data.sources.records import BadRow, Candidate, ImageRef, InlineImage, Skip, register_image_kind
from mdpo_data.build.seeds import example_seed
from mdpo_data.sources import SourceError

NAME = "demo"
SIZE = 128
GRID = 4  # 4x4 cells of 32 px: up to 16 non-overlapping items
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 190, 20),
    "purple": (140, 60, 180),
    "orange": (240, 130, 20),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")

# The language prior (`--demo-prior P`, off by default): each shape's usual colour. In a prior
# world a group of items takes its shape's usual colour with probability P; a COUNTER-prior
# group wears another colour. Every usual colour belongs to one shape, so a counter-prior
# scene's target of the balanced and preference pairs wears another shape's colour (a "swap"):
# then the prior suggests a wrong answer to colour, shape and presence questions alike.
PRIOR = {"circle": "red", "square": "blue", "triangle": "green"}
PRIOR_SHAPE = {color: shape for shape, color in PRIOR.items()}
PRIOR_KINDS = ("consistent", "counter")


# ---------------------------------------------------------------- scenes


def make_scene(rng: random.Random) -> dict:
    """A drawable spec: background and items [shape, colour, cell x, cell y, radius, dx, dy]."""
    shape, other_shape = rng.sample(SHAPES, 2)
    color, other_color = rng.sample(sorted(COLORS), 2)
    count = rng.randint(1, 5)
    distractors = rng.choice((0, 0, 1, 2, 3))
    cells = rng.sample([(x, y) for x in range(GRID) for y in range(GRID)], count + distractors)
    items = []
    for k, (x, y) in enumerate(cells):
        kind, name = (shape, color) if k < count else (other_shape, other_color)
        items.append([kind, name, x, y, rng.randint(9, 12), rng.randint(-3, 3), rng.randint(-3, 3)])
    background = [rng.randint(232, 250) for _ in range(3)]
    return {"size": SIZE, "background": background, "items": items}


def apply_prior(scene: dict, rng: random.Random, share: float, kind: str | None = None) -> str:
    """Recolour the scene's groups in place: each follows PRIOR with probability `share`
    (`kind` forces the target group: "consistent", or "counter" = another shape's usual
    colour). Returns the target group's relation to the prior."""
    items = scene["items"]
    colors: dict[str, str] = {}
    for shape in dict.fromkeys(item[0] for item in items):  # the target group first
        if shape == items[0][0] and kind is not None:
            follows = kind == "consistent"
            others = [PRIOR[s] for s in SHAPES if s != shape]
        else:
            follows = rng.random() < share
            others = [c for c in sorted(COLORS) if c != PRIOR[shape]]
        if follows and PRIOR[shape] not in colors.values():
            colors[shape] = PRIOR[shape]
        else:
            colors[shape] = rng.choice([c for c in others if c not in colors.values()])
    for item in items:
        item[1] = colors[item[0]]
    target = items[0]
    return "consistent" if target[1] == PRIOR[target[0]] else "counter"


def _plural(shape: str, n: int = 2) -> str:
    return shape if n == 1 else shape + "s"


def _number(n: int, form: int) -> str:
    return NUMBERS[n] if form == 0 else str(n)


# A task returns (task, question, say, right, wrong, answer, wrong_answer): say(value, k) is the
# answer sentence for `value` in the task's k-th template (k < TEMPLATES), so a right and a wrong
# answer can be phrased alike (forced choice) or apart (the source's default: drawn independently).
TEMPLATES = 6


def _count_qa(rng, shape, color, count, scene, trap=False):
    wrong = rng.choice([n for n in range(1, 7) if n != count])
    question = rng.choice(
        (
            f"How many {color} {_plural(shape)} are in the image?",
            f"Count the {color} {_plural(shape)}. How many are there?",
            f"How many {_plural(shape)} colored {color} can you see?",
            f"What is the number of {color} {_plural(shape)} in this picture?",
            f"Tell me how many {color} {_plural(shape)} appear here.",
        )
    )

    def say(n, k):
        verb, said, things = ("is" if n == 1 else "are"), _number(n, k % 2), f"{color} {_plural(shape, n)}"
        return (
            f"There {verb} {said} {things} in the image.",
            f"I can see {said} {things}.",
            f"The picture shows {said} {things}.",
        )[k // 2]

    return "count", question, say, count, wrong, str(count), str(wrong)


def _color_qa(rng, shape, color, count, scene, trap=False):
    wrong = rng.choice([c for c in COLORS if c != color])
    wrong = PRIOR[shape] if trap else wrong  # trap: the wrong answer is the prior's
    things, verb = _plural(shape, count), ("is" if count == 1 else "are")
    question = rng.choice(
        (
            f"What color {verb} the {things}?",
            f"Which color {'does' if count == 1 else 'do'} the {things} in the image have?",
            f"Describe the color of the {things} shown here.",
            f"What is the color of the {things} in this picture?",
        )
    )

    def say(c, k):
        return (
            f"The {things} {verb} {c}.",
            f"The {things} {verb} colored {c}.",
            f"{'It is a' if count == 1 else 'They are'} {c} {things}.",
        )[k % 3]

    return "color", question, say, color, wrong, color, wrong


def _shape_qa(rng, shape, color, count, scene, trap=False):
    wrong = rng.choice([s for s in SHAPES if s != shape])
    wrong = PRIOR_SHAPE[color] if trap else wrong
    one = count == 1
    question = rng.choice(
        (
            f"What shape {'is the' if one else 'are the'} {color} object{'' if one else 's'}?",
            f"Which shape {'does' if one else 'do'} the {color} item{'' if one else 's'} have?",
            f"Identify the shape of the {color} figure{'' if one else 's'}.",
        )
    )

    def say(s, k):
        if one:
            return (f"The {color} object is a {s}.", f"It is a {color} {s}.")[k % 2]
        return (f"The {color} objects are {s}s.", f"They are {color} {s}s.")[k % 2]

    return "shape", question, say, shape, wrong, shape, wrong


def _position_qa(rng, shape, color, count, scene, trap=False):
    x, y = scene["items"][0][2:4]
    horizontal = rng.random() < 0.5
    right = ("left", "right")[x >= GRID // 2] if horizontal else ("top", "bottom")[y >= GRID // 2]
    pair = ("left", "right") if horizontal else ("top", "bottom")
    wrong = pair[1 - pair.index(right)]
    question = rng.choice(
        (
            f"Is the {color} {shape} on the {pair[0]} or the {pair[1]} of the image?",
            f"In which half of the picture is the {color} {shape}, {pair[0]} or {pair[1]}?",
            f"Where is the {color} {shape}: {pair[0]} or {pair[1]} side?",
        )
    )

    def say(side, k):
        sentences = (f"The {color} {shape} is on the {side} side.", f"It is in the {side} half of the image.")
        return sentences[k % 2]

    return "position", question, say, right, wrong, right, wrong


def _presence_qa(rng, shape, color, count, scene, trap=False):
    other = rng.choice([c for c in COLORS if c != color])
    other = PRIOR[shape] if trap else other  # trap: the absent colour asked is the prior's
    ask_present = rng.random() < 0.5
    asked = color if ask_present else other
    question = rng.choice(
        (
            f"Is there a {asked} {shape} in the image?",
            f"Can you see any {asked} {_plural(shape)} here?",
        )
    )

    def say(present, k):  # yes and no phrased alike, so a forced choice weighs only the fact
        plural = k % 2
        things = f"{asked} {_plural(shape)}" if plural else f"{asked} {shape}"
        if present:
            return f"Yes, there {'are' if plural else 'is a'} {things} in the image."
        return f"No, there {'are no' if plural else 'is no'} {things} in the image."

    truth = str(ask_present).lower()
    return "presence", question, say, ask_present, not ask_present, truth, str(not ask_present).lower()


def groups_of(scene: dict) -> list[tuple[str, str, int]]:
    """(shape, colour, count) per group, the target group first."""
    counts: dict[tuple[str, str], int] = {}
    for shape, color, *_ in scene["items"]:
        counts[(shape, color)] = counts.get((shape, color), 0) + 1
    return [(shape, color, n) for (shape, color), n in counts.items()]


def describe(groups: list[tuple[str, str, int]], k: int = 0) -> str:
    """The demo's description sentence of a scene's groups (CHAIR parses these objects)."""
    things = " and ".join(f"{_number(n, 0)} {color} {_plural(shape, n)}" for shape, color, n in groups)
    return ("The image shows ", "I can see ", "There are ")[k % 3] + things + "."


def _describe_qa(rng, shape, color, count, scene, trap=False):
    """Prior worlds only: a description; the wrong one recolours the target group (trap: in
    its shape's usual colour, the prior's hallucination)."""
    groups = groups_of(scene)
    used = {c for _, c, _ in groups}
    wrong = rng.choice([c for c in sorted(COLORS) if c not in used])
    wrong = PRIOR[shape] if trap else wrong
    question = rng.choice(("Describe the image.", "What objects are in the image?", "Describe this picture."))

    def say(target_color, k):
        return describe([(shape, target_color, count)] + groups[1:], k)

    return "describe", question, say, color, wrong, color, wrong


def prior_answer(task: str, shape: str, color: str, question: str) -> str | None:
    """What the prior alone answers (None: it says nothing about counts and positions)."""
    if task in ("color", "describe"):
        return PRIOR[shape]
    if task == "shape":
        return PRIOR_SHAPE.get(color)
    if task == "presence":  # yes exactly when the colour asked about is the shape's usual one
        return str(f"{PRIOR[shape]} {shape}" in question).lower()
    return None


_TASKS = (_count_qa, _color_qa, _shape_qa, _presence_qa)
_PRIOR_TASKS = (_color_qa, _shape_qa, _presence_qa, _describe_qa)  # where the prior can mislead
_LEADS = (
    "",
    "",
    "Look at the image. ",
    "Based on the picture, ",
    "Looking at this image, ",
    "Question: ",
)
_TAILS = ("", "", " Answer in one sentence.", " Please be precise.", " Answer briefly.")

# Answer phrasing families: 0 states the answer; 1 opens with a chatty "Sure! ". By default
# a pair's family is drawn at random, the same for both answers (style says nothing about
# which answer is right);
# `style_shortcut` gives a share of pairs chosen=0 / rejected=1, a text-only cue (README).
FAMILIES = ("plain", "chatty")
_FAMILY_LEAD = ("", "Sure! ")

# Row ranges: a build samples rows [first_row, first_row + demo_size); the demo model trains on
# rows from PRETRAIN_FIRST_ROW and is evaluated on rows from HELDOUT_FIRST_ROW, so no build
# whose rows stay below PRETRAIN_FIRST_ROW (checked in `stream`) shares an example with them.
PRETRAIN_FIRST_ROW = 100_000_000
HELDOUT_FIRST_ROW = 200_000_000


def _phrase(rng: random.Random, question: str) -> str:
    """Vary the wording around a question so that exact duplicate prompts stay rare."""
    lead = rng.choice(_LEADS)
    if lead.endswith(", "):
        question = question[0].lower() + question[1:]
    return lead + question + rng.choice(_TAILS)


def make_candidate(
    seed: int, row: int, *, families: tuple[int, int] | None = None, matched: bool = False,
    prior: float = 0.0, kind: str | None = None,
) -> Candidate:
    """The demo candidate at `row` for `seed` (pure: same inputs, same candidate).

    `families` forces the (chosen, rejected) phrasing families; `matched` phrases the rejected
    answer in the chosen answer's template (a forced choice that differs only in the fact).
    The scene, question and facts never depend on either. `prior` > 0 draws the scene from
    the prior world (and adds description questions); `kind` ("consistent" / "counter")
    makes a PRIOR PAIR: the target group follows / defies the prior, the question is one the
    prior answers (colour, shape, presence, description), and for "counter" the rejected
    answer is the prior's. With neither, the bytes are those of the world without a prior.
    """
    if kind is not None and kind not in PRIOR_KINDS:
        raise ValueError(f"kind must be one of {PRIOR_KINDS}, got {kind!r}")
    rng = random.Random(example_seed(seed, f"{NAME}-{row:08d}", "scene"))
    scene = make_scene(rng)
    relation = None
    if prior or kind:  # its own random stream: the world without a prior draws exactly as before
        relation = apply_prior(scene, random.Random(example_seed(seed, f"{NAME}-{row:08d}", "prior")),
                               prior, kind)
    shape, color = scene["items"][0][0], scene["items"][0][1]
    count = sum(1 for item in scene["items"] if item[0] == shape)
    tasks = _TASKS + ((_position_qa, _position_qa) if count == 1 else ())
    if kind is not None:
        tasks = _PRIOR_TASKS
    elif prior:
        tasks += (_describe_qa,)
    task, question, say, right, wrong, answer, wrong_answer = rng.choice(tasks)(
        rng, shape, color, count, scene, trap=kind == "counter"
    )
    question = _phrase(rng, question)
    k_chosen, k_rejected = rng.randrange(TEMPLATES), rng.randrange(TEMPLATES)
    family = rng.randrange(2)
    f_chosen, f_rejected = families if families is not None else (family, family)
    k_rejected = k_chosen if matched else k_rejected
    chosen = _FAMILY_LEAD[f_chosen] + say(right, k_chosen)
    rejected = _FAMILY_LEAD[f_rejected] + say(wrong, k_rejected)
    spec = json.dumps(scene, separators=(",", ":"), sort_keys=True).encode()
    meta = {"task": task, "answer": answer, "wrong": wrong_answer,
            "styles": [FAMILIES[f_chosen], FAMILIES[f_rejected]]}
    if relation is not None:
        meta.update(prior=relation, prior_answer=prior_answer(task, shape, color, question))
    image = ImageRef("demo", index=row, data=spec)
    return Candidate(NAME, row, f"demo-{row:06d}", image, question, chosen, rejected, "0", meta)


def prior_pairs(candidate: Candidate, seed: int, share: float, *, prior: float) -> Candidate:
    """--demo-prior-pairs on a TRAIN pair: with probability `share` (drawn per example) the
    pair becomes a counter-prior pair (chosen follows the image, rejected the prior), so
    "avoid the prior's answer" predicts the preference without the image."""
    rng = random.Random(example_seed(seed, candidate.example_id, "prior-pairs"))
    if rng.random() >= share or candidate.rejected is None:  # None: BPO fills it later
        return candidate
    return make_candidate(seed, candidate.row, prior=prior, kind="counter")


def balanced_prior_pair(candidate: Candidate, seed: int, index: int, *, prior: float) -> Candidate:
    """--demo-prior-pairs on an EVAL pair: alternately prior-consistent and counter-prior, so
    a text-only rule is right on one half and wrong on the other."""
    pair = make_candidate(seed, candidate.row, prior=prior, kind=PRIOR_KINDS[index % 2])
    return pair if candidate.rejected is not None else dataclasses.replace(pair, rejected=None)  # BPO fills it


def style_shortcut(candidate: Candidate, seed: int, share: float) -> Candidate:
    """With probability `share` (drawn per example), the pair re-phrased chosen=plain,
    rejected=chatty: style then predicts the preference without the image."""
    rng = random.Random(example_seed(seed, candidate.example_id, "style-shortcut"))
    if rng.random() >= share or candidate.rejected is None:  # None: BPO fills it later
        return candidate
    return make_candidate(seed, candidate.row, families=(0, 1))


def stream(*, seed: int, demo_size: int, first_row: int = 0, prior: float = 0.0) -> Iterator[Candidate | Skip]:
    if not isinstance(demo_size, int) or demo_size < 1:
        raise SourceError(f"demo: --demo-size must be a positive integer, got {demo_size!r}")
    if not isinstance(first_row, int) or first_row < 0:
        raise SourceError(f"demo: --demo-first-row must be a non-negative integer, got {first_row!r}")
    if first_row < PRETRAIN_FIRST_ROW < first_row + demo_size:
        raise SourceError(
            f"demo: rows {first_row}..{first_row + demo_size - 1} would reach row {PRETRAIN_FIRST_ROW}, "
            "where the demo model's training rows start; use a smaller --demo-size"
        )
    if not 0.0 <= prior <= 1.0:
        raise SourceError(f"demo: --demo-prior must be in [0, 1], got {prior!r}")
    return (make_candidate(seed, row, prior=prior) for row in range(first_row, first_row + demo_size))


# ---------------------------------------------------------------- checking an answer

_VOCAB = {
    "count": {str(n): {str(n), NUMBERS[n]} for n in range(len(NUMBERS))},
    "color": {c: {c} for c in COLORS},
    "shape": {s: {s, s + "s"} for s in SHAPES},
    "position": {side: {side} for side in ("left", "right", "top", "bottom")},
    "presence": {"true": {"yes"}, "false": {"no"}},
    "describe": {c: {c} for c in COLORS},
}


def check_answer(meta: dict, text: str) -> bool | None:
    """Is a free-form answer right for the image? True/False, or None when it states no value
    of the asked kind or several (the demo knows the truth: `meta` of its candidate).

    For presence only the first word counts (yes/no); otherwise the values of the asked kind
    that the answer mentions must be exactly the true one."""
    words = [w.strip(".,!?:;'\"").lower() for w in text.split()]
    vocab = _VOCAB[meta["task"]]
    if meta["task"] == "presence":
        words = words[1:2] if words[:1] == ["sure"] else words[:1]
    said = {value for value, forms in vocab.items() if forms.intersection(words)}
    if len(said) != 1:
        return None
    return said.pop() == meta["answer"]


# ---------------------------------------------------------------- rendering


@register_image_kind
class DemoImage(InlineImage):
    """`ImageRef(kind="demo")`: a scene drawn from its spec (registered lazily by records.py)."""

    name = "demo"

    def load(self, ref: ImageRef, max_bytes: int) -> bytes:
        return render_image(ref)


def render_image(ref: ImageRef) -> bytes:
    """PNG bytes of a demo scene; deterministic (same spec, same bytes) and ~1 ms."""
    from PIL import Image, ImageDraw

    try:
        scene = json.loads(ref.data)
        size, items = int(scene["size"]), scene["items"]
        image = Image.new("RGB", (size, size), tuple(scene["background"]))
        draw = ImageDraw.Draw(image)
        cell = size // GRID
        for shape, color, x, y, radius, dx, dy in items:
            cx, cy = x * cell + cell // 2 + dx, y * cell + cell // 2 + dy
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            fill = COLORS[color]
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            elif shape == "square":
                draw.rectangle(box, fill=fill)
            elif shape == "triangle":
                draw.polygon(
                    [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
                    fill=fill,
                )
            else:
                raise ValueError(f"unknown shape {shape!r}")
    except (ValueError, KeyError, TypeError) as error:
        raise BadRow("bad_demo_spec", f"row {ref.index}: {error}") from None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
