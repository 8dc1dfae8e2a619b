"""BPO: rejected responses bootstrapped from a model, for data that has only a gold answer.

BPO (arXiv 2403.08730) pairs the gold answer (chosen) with an answer that exposes the
model's pretraining bias (rejected). Two strategies:

  weaken[:T]  the VLM answers the question while it sees the image under forward diffusion
              noise at step T of 1000 (default 900, BPO's recipe), seeded per example
  inject      a text-only LLM rewrites the gold answer, changing objects, counts or
              attributes so it stays fluent but is wrong for the image (`INJECT_PROMPT`)

Decoding is greedy, so an answer depends only on (model, inputs), never on batching or on
where a killed run resumed (checked by the tests at fp32). Answers are appended per batch
to a JSONL cache in the build's state folder (flush + fsync); a re-run generates only the
missing ones and ignores lines written under other settings.

Filters (each a counted skip, BPO keeps only usable negatives):
  rejected_too_long        generation hit max_new_tokens without ending its turn: a cut-off
                           answer would teach "truncated is bad", not "ungrounded is bad"
  rejected_empty           nothing but whitespace before the end of turn
  rejected_same_as_chosen  equal to the gold answer after collapsing whitespace and case
Images that fail to load (weaken only: inject never reads the image) skip with the
`BadRow` reason, e.g. image_corrupt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdpo_data import schema
from mdpo_data.records import BadRow, Candidate

VALID_FORMS = "weaken (= weaken:900), weaken:T (diffusion step T in 1..1000), inject"
DEFAULT_STEP = 900  # BPO's image-weakening noise step
NOISE_STEPS = 1000
# Plain greedy decoding: an answer is a function of (model, inputs), whatever the batch.
GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
          "min_new_tokens": 0}
CACHE_VERSION = 1  # bump when the cache line format or what a line means changes

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


# --------------------------------------------------------------------------- weakened image


def input_resolution(image_processor, width: int, height: int) -> tuple[int, int]:
    """The (width, height) the processor brings an image to, as far as a config tells; never larger.

    BPO noises the model's input tensor. Noise added at full resolution would be averaged
    away by the processor's downscale (a 4x downscale cuts its std 4x), so the image is
    first resized to the model's input size, then noised. Rules by processor config:
    pixel-budget processors (Qwen-VL style, `merge_size`): area <= size.longest_edge pixels;
    size.height/width: exactly that; size.shortest_edge: that short side (CLIP/LLaVA);
    size.longest_edge: that long side. Anything else: unchanged.
    """
    size = getattr(image_processor, "size", None)
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    scale = 1.0
    if getattr(image_processor, "merge_size", None) is not None and get("longest_edge"):
        scale = min(1.0, (get("longest_edge") / (width * height)) ** 0.5)
    elif get("height") and get("width"):  # the processor stretches to exactly this size
        return min(width, get("width")), min(height, get("height"))
    elif get("shortest_edge"):  # as transformers' get_resize_output_image_size rounds
        short, long = sorted((width, height))
        if get("shortest_edge") >= short:
            return width, height
        new_short, new_long = get("shortest_edge"), int(get("shortest_edge") * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    elif get("longest_edge"):
        scale = min(1.0, get("longest_edge") / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def weakened_image(image, t: int, seed: int, image_processor=None):
    """The image the model sees under `weaken:t`: resized to its input size, then noised."""
    from PIL import Image

    from mdpo_data.contrast import diffusion_noise

    if image_processor is not None:
        size = input_resolution(image_processor, *image.size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC)
    return diffusion_noise(image, t, seed)


# --------------------------------------------------------------------------- cache


class _Cache:
    """Append-only JSONL of generated answers for ONE settings key; torn last line tolerated."""

    def __init__(self, path: Path, ident: dict[str, str]):
        self.path = path
        self.ident = ident  # strategy, model, settings: every line must carry the same values

    def load(self) -> dict[str, dict[str, Any]]:
        """example id -> latest matching line; a partial last line is cut off the file."""
        found: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return found
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # killed mid-write: drop the fragment so appends start clean
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for raw in data[:end].splitlines():
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if (isinstance(line, dict) and all(line.get(k) == v for k, v in self.ident.items())
                    and isinstance(line.get("text"), str) and isinstance(line.get("finished"), bool)):
                found[str(line.get("id"))] = line
        return found

    def append(self, lines: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = "".join(json.dumps({**self.ident, **line}, ensure_ascii=False) + "\n" for line in lines)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def _sha(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def model_identity(model_id_or_path: str, revision: str | None) -> str:
    """Cheap identity of a checkpoint: id@revision for the Hub; for a folder, a hash of its
    small config files and its weight files' names and sizes (not their 14 GB of bytes)."""
    from mdpo_data.models import resolve_model

    path = Path(resolve_model(model_id_or_path)) if model_id_or_path else None
    if path is None or not path.is_dir():
        return f"{model_id_or_path}@{revision or 'default'}"
    parts = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name = file.relative_to(path).as_posix()
        small = file.suffix in (".json", ".jinja", ".txt", ".model") and file.stat().st_size < 50_000_000
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if small else file.stat().st_size
        parts.append(f"{name}:{digest}")
    return "sha256:" + _sha(*parts)


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _Generated:
    tokens: list[int]  # new tokens up to and including the first end-of-turn token
    finished: bool  # an end-of-turn token was generated within max_new_tokens
    text: str  # decoded answer before the end of turn, special tokens removed, stripped


def _add_special_tokens(tokenizer, text: str) -> bool:
    """apply_chat_template(tokenize=True)'s rule: no extra BOS when the template wrote one."""
    return not (tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token))


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"{type(model).__name__} defines no end-of-turn token: cannot tell a finished answer"
        )
    return [eos] if isinstance(eos, int) else list(eos)


def _greedy(model, tokenizer, batch, max_new_tokens: int) -> list[_Generated]:
    """Greedy decoding of a left-padded batch; each row cut at its first end-of-turn token."""
    import torch
    from transformers import GenerationConfig

    from mdpo_data.logprobs import model_inputs

    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    # Explicit values beat the checkpoint's generation_config.json (which fills only unset
    # fields): a chat model's sampling defaults or repetition penalty must not leak in.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **GREEDY,
        temperature=1.0, top_p=1.0, top_k=50,  # unused by greedy; pinned so none is inherited
    )
    inputs = model_inputs(model, batch)
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config)
    results = []
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        stop = next((i for i, token in enumerate(row) if token in eos), None)
        kept = row if stop is None else row[:stop]
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        results.append(_Generated(row if stop is None else row[: stop + 1], stop is not None, text))
    return results


class _Weaken:
    """The VLM answering with a diffusion-noised image (`weaken:T`)."""

    def __init__(self, strategy: ResponseStrategy, seed: int, max_pixels: int):
        self.t, self.seed, self.max_pixels = strategy.t, seed, max_pixels

    def input_digest(self, c: Candidate) -> str:
        return _sha(c.image.key, c.question, *([c.system] if c.system else []))

    def sort_key(self, c: Candidate) -> int:
        return len(c.question)

    def load(self, name: str, **options) -> None:
        from mdpo_data.models import load_model

        self.model, self.processor = load_model(name, **options)
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"{name}: the processor has no chat template, so no prompt to answer; "
                             "use a chat/instruct checkpoint")

    def generate(self, batch: list[Candidate], max_new_tokens: int, skipped: Counter):
        """-> [(candidate, _Generated)]; candidates whose image fails are counted in `skipped`."""
        from mdpo_data import images
        from mdpo_data.seeds import example_seed

        kept, pictures = [], []
        for c in batch:
            where = f"{c.source} row {c.row} (id {c.source_id!r})"
            try:
                image, _ = images.load_image(c.image.load(), max_pixels=self.max_pixels, where=where)
            except BadRow as error:
                skipped[error.reason] += 1
                continue
            seed = example_seed(self.seed, c.example_id, "bpo")
            pictures.append(weakened_image(image, self.t, seed, self.processor.image_processor))
            kept.append(c)
        if not kept:
            return []
        tokenizer = self.processor.tokenizer
        render = self.processor.apply_chat_template
        prompts = [render(schema.prompt_messages(c.question, c.system), add_generation_prompt=True,
                          tokenize=False)
                   for c in kept]
        batch_inputs = self.processor(
            text=prompts, images=pictures, padding=True, padding_side="left",
            add_special_tokens=_add_special_tokens(tokenizer, prompts[0]), return_tensors="pt",
        )
        return list(zip(kept, _greedy(self.model, tokenizer, batch_inputs, max_new_tokens)))


class _Inject:
    """A text-only LLM rewriting the gold answer (`inject`)."""

    def input_digest(self, c: Candidate) -> str:
        return _sha(c.question, c.chosen)

    def sort_key(self, c: Candidate) -> int:
        return len(c.question) + len(c.chosen)

    def load(self, name: str, *, dtype, device, trust_remote_code, revision) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from mdpo_data.models import ModelLoadError, resolve_device, resolve_dtype

        device = resolve_device(device)
        options = {"trust_remote_code": trust_remote_code, "revision": revision}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **options)
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=getattr(torch, resolve_dtype(dtype, device)), **options)
        except (OSError, ValueError, KeyError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ModelLoadError(
                f"cannot load inject model {name!r} as a text LLM with AutoModelForCausalLM ({first})"
            ) from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model.to(device).eval(), tokenizer

    def prompt(self, c: Candidate) -> str:
        text = INJECT_PROMPT.format(question=c.question, answer=c.chosen)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + PLAIN_SUFFIX

    def generate(self, batch: list[Candidate], max_new_tokens: int, skipped: Counter):
        prompts = [self.prompt(c) for c in batch]
        inputs = self.tokenizer(
            prompts, padding=True, padding_side="left",
            add_special_tokens=_add_special_tokens(self.tokenizer, prompts[0]), return_tensors="pt",
        )
        out = _greedy(self.model, self.tokenizer, dict(inputs), max_new_tokens)
        return [(c, dataclasses.replace(g, text=clean_rewrite(g.text))) for c, g in zip(batch, out)]


# --------------------------------------------------------------------------- the stage


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def bootstrap_rejected(
    candidates: list[Candidate],
    strategy: ResponseStrategy,
    *,
    model: str,
    seed: int,
    state_dir: Path,
    inject_model: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 256,
    max_pixels: int = 40_000_000,
    trust_remote_code: bool = False,
    revision: str | None = None,
    progress: bool = True,
) -> tuple[list[Candidate], Counter, dict[str, Any]]:
    """Give every candidate a bootstrapped `rejected` answer, or count why it has none.

    Returns (filled candidates in input order, skips by reason, the manifest record).
    Every candidate given is (re)generated, whatever its `rejected`; the caller passes those
    lacking one. `model` is the VLM for weaken; `inject_model` the text LLM for inject
    (`revision` applies to whichever is loaded). The model loads only if some answer is not
    in the cache, so a finished stage re-runs in seconds.
    """
    from tqdm.auto import tqdm

    from mdpo_data.manifest import library_versions
    from mdpo_data.models import resolve_device, resolve_dtype

    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    if strategy.kind == "weaken":
        generator, name = _Weaken(strategy, seed, max_pixels), model
        if not model:
            raise ValueError("rejected-response weaken needs a vision-language model (model=...)")
    else:
        generator, name = _Inject(), inject_model
        if not inject_model:
            raise ValueError("rejected-response inject needs a text LLM (inject_model=...)")
    resolved_dtype = resolve_dtype(dtype, resolve_device(device))
    generation = {"max_new_tokens": max_new_tokens, **GREEDY, "dtype": resolved_dtype,
                  "stop": "the model's end-of-turn token(s) (generation_config.eos_token_id)"}
    prompt = INJECT_PROMPT if strategy.kind == "inject" else None
    settings = {
        "cache_version": CACHE_VERSION,
        "strategy": strategy.resolved,
        "model": model_identity(name, revision),
        "generation": generation,
        "prompt": prompt,
        "seed": seed if strategy.kind == "weaken" else None,  # greedy inject ignores the seed
        "versions": library_versions("torch", "transformers"),
    }
    settings_key = _sha(json.dumps(settings, sort_keys=True))[:16]
    record = {
        "strategy": strategy.resolved,
        "description": strategy.describe(),
        "model": name,
        "inject_model": inject_model if strategy.kind == "inject" else None,
        "prompt": prompt,
        "generation": generation,
        "settings_key": settings_key,
    }
    cache = _Cache(Path(state_dir) / f"bpo-{strategy.kind}-{settings_key}.jsonl",
                   {"strategy": strategy.resolved, "model": name, "settings": settings_key})
    done = cache.load()
    digests = {c.example_id: generator.input_digest(c) for c in candidates}
    todo = [c for c in candidates if done.get(c.example_id, {}).get("input") != digests[c.example_id]]
    todo.sort(key=lambda c: (generator.sort_key(c), c.example_id))  # less padding per batch

    skipped: Counter = Counter()
    if todo:
        generator.load(
            name, dtype=dtype, device=device, trust_remote_code=trust_remote_code, revision=revision
        )
        bar = tqdm(total=len(candidates), initial=len(candidates) - len(todo), unit="answer",
                   desc=f"bpo {strategy.resolved}", disable=not progress, dynamic_ncols=True)
        try:
            for batch in _chunks(todo, batch_size):
                results = generator.generate(batch, max_new_tokens, skipped)
                lines = [{"id": c.example_id, "input": digests[c.example_id], "text": g.text,
                          "finished": g.finished, "tokens": g.tokens} for c, g in results]
                cache.append(lines)
                done.update({line["id"]: line for line in lines})
                bar.update(len(batch))
        finally:
            bar.close()

    filled = []
    for c in candidates:
        line = done.get(c.example_id)
        if line is None or line.get("input") != digests[c.example_id]:
            continue  # its image failed to load: counted above
        problem = rejected_problem(line["text"], line["finished"], c.chosen)
        if problem:
            skipped[problem] += 1
            continue
        meta = {**c.meta, "rejected_response": {"strategy": strategy.resolved, "model": name}}
        filled.append(dataclasses.replace(c, rejected=line["text"].strip(), meta=meta))
    return filled, skipped, record
