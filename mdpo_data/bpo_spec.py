"""BPO's rejected-response strategies as specs (`weaken[:T]`, `inject`), the inject prompt,
and the pure filters that decide whether a generated answer is a usable negative.
Parsing imports nothing heavy: the CLI validates `--rejected-response` with it."""

from __future__ import annotations

import re
from dataclasses import dataclass

VALID_FORMS = "weaken (= weaken:900), weaken:T (diffusion step T in 1..1000), inject"
DEFAULT_STEP = 900  # BPO's image-weakening noise step
NOISE_STEPS = 1000
INJECT_PROMPT = """\
Here is a question about an image and its correct answer.

Question: {question}
Correct answer: {answer}

Rewrite the correct answer so that it becomes wrong for the image while still sounding \
natural and confident. Keep its style, length and structure, but change a few details: \
replace some objects with other objects that often appear in similar scenes, change counts, \
and change attributes such as colors, sizes, positions or actions. Do not mention that \
anything was changed and add no comments. Reply with the rewritten answer only."""
PLAIN_SUFFIX = "\n\nRewritten answer:"  # ends the prompt for models without a chat template
_LABEL = re.compile(r"^\s*rewritten answer\s*:\s*", re.IGNORECASE)



# --------------------------------------------------------------------------- strategy


@dataclass(frozen=True)
class ResponseStrategy:
    """A parsed `--rejected-response` spec; `resolved` is what manifests and rows record."""

    kind: str  # "weaken" | "inject"
    t: int | None = None  # diffusion step for weaken

    @property
    def resolved(self) -> str:
        return f"weaken:{self.t}" if self.kind == "weaken" else "inject"

    def describe(self) -> str:
        if self.kind == "weaken":
            from mdpo_data.contrast import noise_schedule

            abar = float(noise_schedule()[self.t - 1])
            return (
                "BPO image weakening: the rejected answer is the model's own greedy answer to the "
                f"question while it sees the image under forward diffusion noise at step {self.t} "
                f"of {NOISE_STEPS} (x_t = {abar ** 0.5:.3f} x_0 + {(1 - abar) ** 0.5:.3f} eps, at "
                "the model's input resolution), which exposes its pretraining bias; the chosen "
                "answer is the gold one."
            )
        return (
            "BPO error injection: a text-only LLM rewrites the gold answer (greedy decoding, prompt "
            "in the manifest), changing objects, counts or attributes so it stays fluent but no "
            "longer matches the image; the chosen answer is the gold one."
        )


def parse_response_strategy(spec: str) -> ResponseStrategy:
    """"weaken", "weaken:T" or "inject" -> ResponseStrategy; ValueError listing the valid forms."""
    if not isinstance(spec, str):
        raise ValueError(
            f"bad rejected-response strategy {spec!r}: expected a string. Valid forms: {VALID_FORMS}"
        )
    name, sep, arg = spec.strip().lower().partition(":")
    name, arg = name.strip(), arg.strip()
    if name == "weaken":
        if not sep:
            return ResponseStrategy("weaken", DEFAULT_STEP)
        if arg.isdigit() and 1 <= int(arg) <= NOISE_STEPS:
            return ResponseStrategy("weaken", int(arg))
        problem = f"weaken needs a whole diffusion step T in 1..{NOISE_STEPS}, got {arg!r}"
    elif name == "inject":
        if not sep:
            return ResponseStrategy("inject")
        problem = "inject takes no argument"
    else:
        problem = f"unknown strategy {name!r}"
    raise ValueError(f"bad rejected-response strategy {spec!r}: {problem}. Valid forms: {VALID_FORMS}")


# --------------------------------------------------------------------------- filters (pure)


def normalize(text: str) -> str:
    """Whitespace collapsed, case folded: what 'the same answer' means for the filter."""
    return " ".join(text.split()).casefold()


def rejected_problem(text: str, finished: bool, chosen: str) -> str | None:
    """The skip reason for a generated answer, or None when it is a usable rejected answer."""
    if not finished:
        return "rejected_too_long"
    if not text.strip():
        return "rejected_empty"
    if normalize(text) == normalize(chosen):
        return "rejected_same_as_chosen"
    return None


def clean_rewrite(text: str) -> str:
    """An injected rewrite without the 'Rewritten answer:' label some models echo back."""
    return _LABEL.sub("", text.strip(), count=1).strip()
