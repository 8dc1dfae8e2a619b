"""BPO's rejected-response strategies as specs (`weaken[:T]`, `inject`), the inject prompt,
and the pure filters that decide whether a generated answer is a usable negative.
Parsing imports nothing heavy: the CLI validates `--rejected-response` with it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

DEFAULT_STEP = 900  # BPO's image-weakening noise step
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
    """A parsed `--rejected-response` spec; `resolved` is what manifests and rows record.

    A plain value (picklable, comparable); what the strategy does lives in its `ResponseKind`
    in `RESPONSE_KINDS`, keyed by `kind`."""

    kind: str  # a key of RESPONSE_KINDS: "weaken" | "inject"
    t: int | None = None  # diffusion step for weaken

    @property
    def handler(self) -> ResponseKind:
        return RESPONSE_KINDS[self.kind]

    @property
    def resolved(self) -> str:
        return self.handler.resolved(self)

    def describe(self) -> str:
        return self.handler.describe(self)

    @property
    def prompt(self) -> str | None:
        """The text prompt given to the generating model, if any (recorded and cache-keyed)."""
        return self.handler.prompt

    @property
    def uses_seed(self) -> bool:
        """Whether the build seed shapes the answers (the noise draw), so keys the cache."""
        return self.handler.uses_seed

    def missing_model(self, model: str | None, inject_model: str | None) -> str | None:
        """What is missing to generate (a one-line message naming the option), or None."""
        return self.handler.missing_model(model, inject_model)

    def generating_model(self, model: str | None, inject_model: str | None) -> str | None:
        """Which of the two models generates this strategy's answers."""
        return self.handler.generating_model(model, inject_model)


class ResponseKind:
    """One rejected-response strategy; subclasses set `name` and override what differs."""

    name: ClassVar[str]
    form: ClassVar[str]  # for --help ("weaken[:T]")
    usage: ClassVar[str]  # the forms explained, for errors
    prompt: ClassVar[str | None] = None
    uses_seed: ClassVar[bool] = False
    needs: ClassVar[str] = "a model (model=...)"  # what generates its answers, for errors

    def parse(self, arg: str | None) -> ResponseStrategy:
        """`arg` is the text after ':' (None without one); ValueError names the problem."""
        if arg is not None:
            raise ValueError(f"{self.name} takes no argument")
        return ResponseStrategy(self.name)

    def resolved(self, strategy: ResponseStrategy) -> str:
        return self.name

    def describe(self, strategy: ResponseStrategy) -> str:
        raise NotImplementedError

    def missing_model(self, model: str | None, inject_model: str | None) -> str | None:
        return None

    def generating_model(self, model: str | None, inject_model: str | None) -> str | None:
        return model


RESPONSE_KINDS: dict[str, ResponseKind] = {}  # in registration order, as help and errors list them


def forms() -> str:
    """The registered strategies' forms, as --rejected-response's help lists them."""
    return " | ".join(kind.form for kind in RESPONSE_KINDS.values())


def valid_forms() -> str:
    """The registered strategies' forms explained, as a bad spec's error lists them."""
    return ", ".join(kind.usage for kind in RESPONSE_KINDS.values())


def register(cls: type[ResponseKind]) -> type[ResponseKind]:
    RESPONSE_KINDS[cls.name] = cls()
    return cls


@register
class WeakenResponse(ResponseKind):
    name = "weaken"
    form = "weaken[:T]"
    usage = "weaken (= weaken:900), weaken:T (diffusion step T in 1..1000)"
    uses_seed = True
    needs = "a vision-language model (model=...)"

    def parse(self, arg):
        if arg is None:
            return ResponseStrategy(self.name, DEFAULT_STEP)
        from mdpo_data.rejected.noise import NOISE_STEPS  # the one schedule (numpy, no torch)

        if arg.isdigit() and 1 <= int(arg) <= NOISE_STEPS:
            return ResponseStrategy(self.name, int(arg))
        raise ValueError(f"weaken needs a whole diffusion step T in 1..{NOISE_STEPS}, got {arg!r}")

    def resolved(self, strategy):
        return f"weaken:{strategy.t}"

    def describe(self, strategy):
        from mdpo_data.rejected.noise import NOISE_STEPS, noise_schedule

        abar = float(noise_schedule()[strategy.t - 1])
        return (
            "BPO image weakening: the rejected answer is the model's own greedy answer to the "
            f"question while it sees the image under forward diffusion noise at step {strategy.t} "
            f"of {NOISE_STEPS} (x_t = {abar ** 0.5:.3f} x_0 + {(1 - abar) ** 0.5:.3f} eps, at "
            "the model's input resolution), which exposes its pretraining bias; the chosen "
            "answer is the gold one."
        )

    def missing_model(self, model, inject_model):
        if not model:
            return "--rejected-response weaken needs a model: pass --ref-model or --rejected-response-model"
        return None


@register
class InjectResponse(ResponseKind):
    name = "inject"
    form = usage = "inject"
    prompt = INJECT_PROMPT
    needs = "a text LLM (inject_model=...)"

    def describe(self, strategy):
        return (
            "BPO error injection: a text-only LLM rewrites the gold answer (greedy decoding, prompt "
            "in the manifest), changing objects, counts or attributes so it stays fluent but no "
            "longer matches the image; the chosen answer is the gold one."
        )

    def missing_model(self, model, inject_model):
        if not inject_model:
            return "--rejected-response inject needs --inject-model (a text LLM id or path)"
        return None

    def generating_model(self, model, inject_model):
        return inject_model


def parse_response_strategy(spec: str) -> ResponseStrategy:
    """"weaken", "weaken:T" or "inject" -> ResponseStrategy; ValueError listing the valid forms."""
    if not isinstance(spec, str):
        raise ValueError(
            f"bad rejected-response strategy {spec!r}: expected a string. Valid forms: {valid_forms()}"
        )
    name, sep, arg = spec.strip().lower().partition(":")
    name, arg = name.strip(), arg.strip()
    try:
        if name not in RESPONSE_KINDS:
            raise ValueError(f"unknown strategy {name!r}")
        return RESPONSE_KINDS[name].parse(arg if sep else None)
    except ValueError as error:
        raise ValueError(
            f"bad rejected-response strategy {spec!r}: {error}. Valid forms: {valid_forms()}"
        ) from None


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
