"""BPO generation: the weakened image, greedy decoding cut at the end of turn, and the two
generators (`Weaken`: the VLM on a noised image; `Inject`: a text LLM rewriting the answer).
torch and transformers are imported inside the functions that run a model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mdpo_data.format import schema
from mdpo_data.bpo.cache import sha
from mdpo_data.bpo.spec import INJECT_PROMPT, PLAIN_SUFFIX, ResponseStrategy, clean_rewrite
from mdpo_data.scoring.logprobs import add_special_tokens
from mdpo_data.sources.records import BadRow, Candidate

# Plain greedy decoding: an answer is a function of (model, inputs), whatever the batch.
GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
          "min_new_tokens": 0}


# --------------------------------------------------------------------------- weakened image


def weakened_image(image, t: int, seed: int, image_processor=None):
    """The image the model sees under `weaken:t`: resized to its input size, then noised.

    BPO noises the model's input tensor. Noise added at full resolution would be averaged away
    by the processor's downscale (a 4x downscale cuts its std 4x), so the image is first brought
    to the size the processor gives it, then noised."""
    from PIL import Image

    from mdpo_data.rejected.model_input import ModelInput
    from mdpo_data.rejected.noise import diffusion_noise

    if image_processor is not None:  # the processor's own resize rule, as `noise:T` uses
        size = ModelInput.of(image_processor).resize_to(*image.size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC)
    return diffusion_noise(image, t, seed)


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generated:
    tokens: list[int]  # new tokens up to and including the first end-of-turn token
    finished: bool  # an end-of-turn token was generated within max_new_tokens
    text: str  # decoded answer before the end of turn, special tokens removed, stripped


def eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"{type(model).__name__} defines no end-of-turn token: cannot tell a finished answer"
        )
    return [eos] if isinstance(eos, int) else list(eos)


def greedy(model, tokenizer, batch, max_new_tokens: int) -> list[Generated]:
    """Greedy decoding of a left-padded batch; each row cut at its first end-of-turn token."""
    import torch
    from transformers import GenerationConfig

    from mdpo_data.scoring.logprobs import model_inputs

    eos = eos_ids(model, tokenizer)
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
        results.append(Generated(row if stop is None else row[: stop + 1], stop is not None, text))
    return results


def greedy_texts(model, processor, images: list, questions: list[str], *, max_new_tokens: int,
                 batch_size: int = 32, progress=None) -> list[Generated]:
    """Greedy answers to (image, question) prompts in the processor's chat template, in
    batches of `batch_size` (`progress(n)` after each); the evaluators' one decoding path."""
    out: list[Generated] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        prompts = [processor.apply_chat_template(schema.prompt_messages(q), add_generation_prompt=True,
                                                 tokenize=False) for q in chunk]
        inputs = processor(
            text=prompts, images=images[start : start + batch_size], padding=True, padding_side="left",
            add_special_tokens=add_special_tokens(processor.tokenizer, prompts[0]), return_tensors="pt",
        )
        out += greedy(model, processor.tokenizer, inputs, max_new_tokens)
        if progress is not None:
            progress(len(chunk))
    return out


class Weaken:
    """The VLM answering with a diffusion-noised image (`weaken:T`)."""

    def __init__(self, strategy: ResponseStrategy, seed: int, max_pixels: int):
        self.t, self.seed, self.max_pixels = strategy.t, seed, max_pixels

    def input_digest(self, c: Candidate) -> str:
        return sha(c.image.key, c.question, *([c.system] if c.system else []))

    def sort_key(self, c: Candidate) -> int:
        return len(c.question)

    def load(self, name: str, **options) -> None:
        from mdpo_data.scoring.models import load_model

        self.model, self.processor = load_model(name, **options)
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"{name}: the processor has no chat template, so no prompt to answer; "
                             "use a chat/instruct checkpoint")

    def generate(self, batch: list[Candidate], max_new_tokens: int, failed: dict[str, str]):
        """-> [(candidate, Generated)]; candidates whose image fails go to `failed` (id -> reason)."""
        from mdpo_data.build import images
        from mdpo_data.build.seeds import example_seed

        kept, pictures = [], []
        for c in batch:
            where = f"{c.source} row {c.row} (id {c.source_id!r})"
            try:
                image, _ = images.load_image(c.image.load(), max_pixels=self.max_pixels, where=where)
            except BadRow as error:
                failed[c.example_id] = error.reason
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
            add_special_tokens=add_special_tokens(tokenizer, prompts[0]), return_tensors="pt",
        )
        return list(zip(kept, greedy(self.model, tokenizer, batch_inputs, max_new_tokens)))


class Inject:
    """A text-only LLM rewriting the gold answer (`inject`)."""

    def __init__(self, strategy: ResponseStrategy, seed: int, max_pixels: int):
        pass  # the rewrite depends on the text only

    def input_digest(self, c: Candidate) -> str:
        return sha(c.question, c.chosen)

    def sort_key(self, c: Candidate) -> int:
        return len(c.question) + len(c.chosen)

    def load(self, name: str, **options) -> None:
        from mdpo_data.scoring.models import load_text_model

        self.model, self.tokenizer = load_text_model(name, **options)

    def prompt(self, c: Candidate) -> str:
        text = INJECT_PROMPT.format(question=c.question, answer=c.chosen)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + PLAIN_SUFFIX

    def generate(self, batch: list[Candidate], max_new_tokens: int, failed: dict[str, str]):
        prompts = [self.prompt(c) for c in batch]
        inputs = self.tokenizer(
            prompts, padding=True, padding_side="left",
            add_special_tokens=add_special_tokens(self.tokenizer, prompts[0]), return_tensors="pt",
        )
        out = greedy(self.model, self.tokenizer, dict(inputs), max_new_tokens)
        return [(c, dataclasses.replace(g, text=clean_rewrite(g.text))) for c, g in zip(batch, out)]


# One generator per strategy in bpo.spec's RESPONSE_KINDS (spec.py stays torch-free: it never imports this).
GENERATORS: dict[str, type[Weaken] | type[Inject]] = {"weaken": Weaken, "inject": Inject}
