"""Object hallucination in the demo world: POPE-style presence questions and CHAIR.

An object is a colour-shape pair ("red circle"). Held-out scenes alternate prior-consistent and
counter-prior targets (`demo.PRIOR_KINDS`), so a model that answers from the prior fails half.

- `pope_questions`: per scene one positive (the target group) and, per setting, one negative:
  random (any absent object), popular (an absent usual object: the most frequent in training),
  adversarial (an absent object that co-occurs with what is shown: a shown shape in its usual
  colour first, the prior's own hallucination, else one sharing a shown group's colour or shape);
- `export_pope`: those questions in POPE's published format, with PNG files, so `mdpo-eval pope`
  scores the miniature with the evaluator a real POPE run uses;
- `chair`: CHAIR_i / CHAIR_s of "Describe the image." answers (Rohrbach et al., 2018).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from mdpo_data.build.seeds import example_seed
from mdpo_data.sources.demo import (
    COLORS, HELDOUT_FIRST_ROW, PRIOR, PRIOR_KINDS, SHAPES, groups_of, make_candidate, render_image,
)
from mdpo_data.sources.records import ImageRef

SETTINGS = ("random", "popular", "adversarial")
POPE_FIRST_ROW = HELDOUT_FIRST_ROW + 10_000  # held-out rows apart from the forced-choice ones
CHAIR_FIRST_ROW = HELDOUT_FIRST_ROW + 20_000
DESCRIBE = "Describe the image."
_MENTION = re.compile(r"\b(" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r")s?\b")


def heldout_scenes(n: int, first_row: int, *, seed: int = 0, prior: float = 0.9) -> list[tuple[ImageRef, dict]]:
    """n held-out scenes of the prior world, targets alternating consistent / counter-prior."""
    out = []
    for i in range(n):
        image = make_candidate(seed, first_row + i, prior=prior, kind=PRIOR_KINDS[i % 2]).image
        out.append((image, json.loads(image.data)))
    return out


def objects_in(scene: dict) -> set[tuple[str, str]]:
    return {(color, shape) for shape, color, _ in groups_of(scene)}


def negatives(scene: dict, rng: random.Random) -> dict[str, tuple[str, str]]:
    """One absent (colour, shape) per setting."""
    present = objects_in(scene)
    absent = [(c, s) for s in SHAPES for c in sorted(COLORS) if (c, s) not in present]
    popular = [(PRIOR[s], s) for s in SHAPES if (PRIOR[s], s) not in present]
    usual = [(PRIOR[s], s) for s, _, _ in groups_of(scene) if (PRIOR[s], s) not in present]
    near = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
    return {"random": rng.choice(absent), "popular": rng.choice(popular), "adversarial": rng.choice(usual or near)}


def question(obj: tuple[str, str]) -> str:
    return f"Is there a {obj[0]} {obj[1]} in the image?"


def pope_questions(n: int, *, seed: int = 0, prior: float = 0.9) -> dict[str, list[dict]]:
    """{setting: POPE-format question dicts}; images are named "demo-{row}.png"."""
    out: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for i, (image, scene) in enumerate(heldout_scenes(n, POPE_FIRST_ROW, seed=seed, prior=prior)):
        name = f"demo-{image.index}.png"
        target = (scene["items"][0][1], scene["items"][0][0])
        rng = random.Random(example_seed(seed, name, "pope"))
        for setting, negative in negatives(scene, rng).items():
            for obj, label in ((target, "yes"), (negative, "no")):
                out[setting].append({"question_id": len(out[setting]) + 1, "image": name,
                                     "text": question(obj), "label": label})
    return out


def pope_images(n: int, *, seed: int = 0, prior: float = 0.9) -> dict[str, ImageRef]:
    return {f"demo-{image.index}.png": image
            for image, _ in heldout_scenes(n, POPE_FIRST_ROW, seed=seed, prior=prior)}


def export_pope(out: str | Path, n: int, *, seed: int = 0, prior: float = 0.9) -> list[Path]:
    """Write OUT/images/*.png and OUT/demo_pope_{setting}.json (JSON lines, as POPE's files)."""
    from mdpo_data.format.folder import write_owned

    out = Path(out)
    for name, image in pope_images(n, seed=seed, prior=prior).items():
        write_owned(out, out / "images" / name, render_image(image))
    files = []
    for setting, items in pope_questions(n, seed=seed, prior=prior).items():
        path = out / f"demo_pope_{setting}.json"
        write_owned(out, path, "".join(json.dumps(q) + "\n" for q in items).encode())
        files.append(path)
    return files


def mentions(text: str) -> list[tuple[str, str]]:
    """The (colour, shape) objects an answer names, in order."""
    return [(m.group(1), m.group(2)) for m in _MENTION.finditer(text.lower())]


def chair(answers: list[str], scenes: list[dict]) -> dict[str, float]:
    """CHAIR_i (hallucinated mentions / mentions), CHAIR_s (answers with one / answers), and
    mentions per answer (naming nothing hallucinates nothing)."""
    named = hallucinated = bad_answers = 0
    for text, scene in zip(answers, scenes, strict=True):
        said = mentions(text)
        wrong = sum(obj not in objects_in(scene) for obj in said)
        named, hallucinated, bad_answers = named + len(said), hallucinated + wrong, bad_answers + bool(wrong)
    return {"chair_i": hallucinated / named if named else 0.0,
            "chair_s": bad_answers / len(answers) if answers else 0.0,
            "mentions": named / len(answers) if answers else 0.0}
