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
missing ones and ignores lines written under other settings. When a part (split) is done,
its stage marker (`mdpo_data.format.markers`) records the answers' hash, the skips by reason
and the images that failed to load, with their bytes' hash: a re-run counts those again
without loading the model, and retries an image repaired in place.

Filters (each a counted skip, BPO keeps only usable negatives):
  rejected_too_long        generation hit max_new_tokens without ending its turn: a cut-off
                           answer would teach "truncated is bad", not "ungrounded is bad"
  rejected_empty           nothing but whitespace before the end of turn
  rejected_same_as_chosen  equal to the gold answer after collapsing whitespace and case
Images that fail to load (weaken only: inject never reads the image) skip with the
`BadRow` reason, e.g. image_corrupt.

Modules: `spec` (strategies, prompt, filters; imports no torch), `generate` (weakened image,
greedy decoding, the two generators), `cache` (the JSONL answer cache); this one is the stage.
"""

from __future__ import annotations

import dataclasses
import json
from hashlib import sha256
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mdpo_data.bpo.cache import CACHE_VERSION, AnswerCache, sha
from mdpo_data.bpo.generate import GENERATORS, GREEDY
from mdpo_data.bpo.spec import ResponseStrategy, rejected_problem
from mdpo_data.sources.records import BadRow, Candidate
from mdpo_data.format.markers import BpoMarker, bpo_cache_path, read_bpo_marker, write_bpo_marker


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
    part: str = "all",
) -> tuple[list[Candidate], Counter, dict[str, Any]]:
    """Give every candidate a bootstrapped `rejected` answer, or count why it has none.

    Returns (filled candidates in input order, skips by reason, the manifest record).
    Every candidate given is (re)generated, whatever its `rejected`; the caller passes those
    lacking one. `model` is the VLM for weaken; `inject_model` the text LLM for inject
    (`revision` applies to whichever is loaded). The model loads only if some answer is not
    in the cache and no image that failed before still fails, so a finished stage re-runs in
    seconds. The stage's marker for `part` (a split) records what it produced and skipped.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    name = strategy.generating_model(model, inject_model)
    if not name:
        raise ValueError(f"rejected-response {strategy.kind} needs {strategy.handler.needs}")
    generator = GENERATORS[strategy.kind](strategy, seed, max_pixels)
    settings_key, record = _settings(strategy, name, model, inject_model, seed, dtype, device,
                                     max_new_tokens, revision)
    cache = AnswerCache(bpo_cache_path(state_dir, strategy.kind, settings_key),
                        {"strategy": strategy.resolved, "model": name, "settings": settings_key})
    done = cache.load()
    digests = {c.example_id: generator.input_digest(c) for c in candidates}
    key = sha(settings_key, json.dumps(sorted(digests.items())), str(max_pixels))[:16]
    todo = [c for c in candidates if done.get(c.example_id, {}).get("input") != digests[c.example_id]]
    failed = _known_failures(read_bpo_marker(state_dir, part, key), todo)
    todo = [c for c in todo if c.example_id not in failed]
    todo.sort(key=lambda c: (generator.sort_key(c), c.example_id))  # less padding per batch
    if todo:
        generator.load(
            name, dtype=dtype, device=device, trust_remote_code=trust_remote_code, revision=revision
        )
        _generate(generator, todo, len(candidates), digests, cache, done, failed,
                  batch_size=batch_size, max_new_tokens=max_new_tokens,
                  desc=f"bpo {strategy.resolved}", progress=progress)
    skipped = Counter(failed.values())
    filled = _fill(candidates, strategy, name, digests, done, skipped)
    marker = _mark(state_dir, part, key, settings_key, filled, skipped,
                   {c.example_id: [failed[c.example_id], _image_digest(c)]
                    for c in candidates if c.example_id in failed})
    return filled, Counter(marker.skipped), record


def _image_digest(c: Candidate) -> str:
    """What an image that failed to load held: its bytes' sha256, or why they are unreadable."""
    try:
        return sha256(c.image.load()).hexdigest()
    except BadRow as error:
        return f"unreadable: {error.reason}"


def _known_failures(marker: BpoMarker | None, todo: list[Candidate]) -> dict[str, str]:
    """example id -> reason, for candidates whose image a finished run of this part failed to
    load and that still hold the same bytes: counted again without loading the model."""
    recorded = marker.unanswered if marker else {}
    known = {}
    for c in todo:
        entry = recorded.get(c.example_id)
        if isinstance(entry, list) and len(entry) == 2 and entry[1] == _image_digest(c):
            known[c.example_id] = str(entry[0])
    return known


def _mark(state_dir: Path, part: str, key: str, settings_key: str, filled: list[Candidate],
          skipped: Counter, unanswered: dict[str, list[str]]) -> BpoMarker:
    """Write the stage's completion marker for `part`: its key covers the settings and every
    candidate's input; its sha256 the answers given; `unanswered` the images that failed."""
    answers = json.dumps([[c.example_id, c.rejected] for c in filled], ensure_ascii=False)
    marker = BpoMarker(part=part, key=key, settings_key=settings_key, rows=len(filled), sha256=sha(answers),
                       skipped=dict(sorted(skipped.items())), unanswered=unanswered)
    write_bpo_marker(state_dir, marker)
    return marker


def _settings(strategy, name, model, inject_model, seed, dtype, device, max_new_tokens, revision):
    """(settings key, manifest record): every setting that shapes an answer keys the cache."""
    from mdpo_data.format.versions import library_versions
    from mdpo_data.scoring.models import checkpoint_identity, resolve_device, resolve_dtype

    resolved_dtype = resolve_dtype(dtype, resolve_device(device))
    generation = {"max_new_tokens": max_new_tokens, **GREEDY, "dtype": resolved_dtype,
                  "stop": "the model's end-of-turn token(s) (generation_config.eos_token_id)"}
    prompt = strategy.prompt
    settings = {
        "cache_version": CACHE_VERSION,
        "strategy": strategy.resolved,
        "model": checkpoint_identity(name, revision, cheap=True),
        "generation": generation,
        "prompt": prompt,
        "seed": seed if strategy.uses_seed else None,  # greedy inject ignores the seed
        "versions": library_versions("torch", "transformers"),
    }
    settings_key = sha(json.dumps(settings, sort_keys=True))[:16]
    record = {
        "strategy": strategy.resolved,
        "description": strategy.describe(),
        "model": name,
        "inject_model": strategy.generating_model(None, inject_model),
        "prompt": prompt,
        "generation": generation,
        "settings_key": settings_key,
    }
    return settings_key, record


def _generate(generator, todo, total, digests, cache, done, failed, *, batch_size,
              max_new_tokens, desc, progress) -> None:
    """Generate `todo` batch by batch, appending each batch's answers to the cache; images
    that fail to load go to `failed` (example id -> reason)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=total - len(todo), unit="answer", desc=desc,
               disable=not progress, dynamic_ncols=True)
    try:
        for batch in _chunks(todo, batch_size):
            results = generator.generate(batch, max_new_tokens, failed)
            lines = [{"id": c.example_id, "input": digests[c.example_id], "text": g.text,
                      "finished": g.finished, "tokens": g.tokens} for c, g in results]
            cache.append(lines)
            done.update({line["id"]: line for line in lines})
            bar.update(len(batch))
    finally:
        bar.close()


def _fill(candidates, strategy, name, digests, done, skipped) -> list[Candidate]:
    """The candidates with their cached answer as `rejected`; the filters' rejects counted."""
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
    return filled
