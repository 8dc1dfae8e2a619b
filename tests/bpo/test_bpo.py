"""BPO bootstrapped rejected answers, with tiny random-weight models built offline.

The tiny models write gibberish: these tests check the plumbing (every candidate gets an
answer or a counted skip), the filters, determinism, batch invariance and resume, not the
quality. To make a model "end its turn" where a test wants, a copy of it lists chosen
tokens as extra end-of-turn ids in its generation_config.json (as chat models list
<|eot_id|> beside </s>): greedy tokens before the stop are unchanged.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdpo_data.bpo.generate import weakened_image
from mdpo_data.bpo.spec import (
    INJECT_PROMPT,
    valid_forms,
    ResponseStrategy,
    clean_rewrite,
    normalize,
    parse_response_strategy,
    rejected_problem,
)
from mdpo_data.bpo.stage import bootstrap_rejected
from mdpo_data.build.images import load_image
from mdpo_data.sources.records import BadRow, Candidate, ImageRef
from mdpo_data.build.sampling import collect
from mdpo_data.build.seeds import example_seed
from mdpo_data.format.manifest import to_json
from mdpo_data.sources import open_source

from fixtures import make_llava_instruct

pytestmark = pytest.mark.filterwarnings("ignore:.*SMOKE-TEST.*")

QUESTIONS = [
    "What shape is in the image?",
    "Describe the image in detail. Is there a circle in the picture? Answer yes or no.",
    "How many?",
    "What color is the shape in the top left corner of the picture?",
    "Is there a star?",
    "Describe the background.",
]


def png(seed: int, width: int, height: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def make_candidates(n: int = 6) -> list[Candidate]:
    """Gold-answer candidates with images of different sizes and questions of different lengths."""
    return [
        Candidate(
            source="llava-instruct", row=i, source_id=f"{i:012d}",
            image=ImageRef(kind="bytes", data=png(i, 40 + 13 * i, 30 + 7 * i)),
            question=QUESTIONS[i % len(QUESTIONS)], chosen=f"There are {i} red circles.", rejected=None,
            meta={"origin": "fixture"},
        )
        for i in range(n)
    ]


def cache_lines(state_dir: Path) -> list[dict]:
    (path,) = state_dir.glob("bpo-*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_id(state_dir: Path) -> dict[str, dict]:
    return {line["id"]: line for line in cache_lines(state_dir)}


def with_end_of_turn(src: Path, dst: Path, extra: list[int]) -> Path:
    """A copy of a model whose generation config also stops at the `extra` token ids."""
    shutil.copytree(src, dst)
    config_file = dst / "generation_config.json"
    config = json.loads(config_file.read_text())
    eos = config["eos_token_id"]
    config["eos_token_id"] = sorted({*([eos] if isinstance(eos, int) else eos), *extra})
    config_file.write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def vlm() -> Path:
    from mdpo_data.demo.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="module")
def text_lm(tmp_path_factory, vlm) -> Path:
    """A tiny Llama causal LM with the tiny tokenizer and a chat template, saved to tmp."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("text-lm")
    tokenizer = AutoTokenizer.from_pretrained(vlm)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def frequent_later_tokens(lines: list[dict], k: int = 3) -> list[int]:
    """Tokens that many answers emit after (and not as) their first token."""
    counts = Counter(t for line in lines for t in set(line["tokens"][1:]) if t != line["tokens"][0])
    return [token for token, _ in counts.most_common(k)]


@pytest.fixture(scope="module")
def stopping_vlm(tmp_path_factory, vlm) -> Path:
    """The tiny LLaVA, also ending its turn at tokens its greedy answers often reach."""
    probe = tmp_path_factory.mktemp("probe")
    run(make_candidates(6), "weaken", probe, model=str(vlm), max_new_tokens=12)
    lines = cache_lines(probe)
    assert not any(line["finished"] for line in lines)  # random weights never say </s>
    return with_end_of_turn(vlm, tmp_path_factory.mktemp("vlm") / "stopping", frequent_later_tokens(lines))


def run(candidates, spec, state_dir, **options):
    options.setdefault("model", "tiny")
    options.setdefault("seed", 0)
    options.setdefault("max_new_tokens", 8)
    options.setdefault("progress", False)
    return bootstrap_rejected(candidates, parse_response_strategy(spec), state_dir=state_dir, **options)


# --------------------------------------------------------------------------- parsing, pure parts


def test_parse_response_strategy_forms_and_errors():
    assert parse_response_strategy("weaken") == ResponseStrategy("weaken", 900)
    assert parse_response_strategy(" Weaken:500 ").resolved == "weaken:500"
    assert parse_response_strategy("weaken:1").t == 1
    assert parse_response_strategy("inject").resolved == "inject"
    assert "step 900 of 1000" in parse_response_strategy("weaken").describe()
    assert "rewrites the gold answer" in parse_response_strategy("inject").describe()
    for bad in ("weaken:0", "weaken:1001", "weaken:0.5", "weaken:", "inject:2", "noise:900", "", None):
        with pytest.raises(ValueError) as error:
            parse_response_strategy(bad)
        assert valid_forms() in str(error.value) and repr(bad) in str(error.value)


def test_rejected_problem_filters():
    assert rejected_problem("A dog on a sofa.", True, "A cat on a sofa.") is None
    assert rejected_problem("A dog on a sofa.", False, "A cat.") == "rejected_too_long"
    assert rejected_problem(" \n\t", True, "A cat.") == "rejected_empty"
    assert rejected_problem("  a CAT\n on a  sofa. ", True, "A cat on a sofa.") == "rejected_same_as_chosen"
    assert rejected_problem("A cat on a sofa!", True, "A cat on a sofa.") is None  # punctuation counts
    assert normalize(" Two\tDOGS \n") == "two dogs"
    assert clean_rewrite("Rewritten answer:  Two dogs.\n") == "Two dogs."
    assert clean_rewrite("Two dogs. Rewritten answer: no") == "Two dogs. Rewritten answer: no"


@pytest.mark.slow
def test_weaken_noises_at_the_size_the_processor_gives_the_image():
    """One resize rule for `weaken` and `noise:T` (ModelInput): the processor's own, up or down."""
    from transformers import CLIPImageProcessor, Qwen2VLImageProcessor

    def weakened_size(processor, width, height):
        return weakened_image(Image.new("RGB", (width, height), (90, 20, 200)), 900, 1, processor).size

    shortest = CLIPImageProcessor(size={"shortest_edge": 32})
    assert weakened_size(shortest, 200, 100) == (64, 32)
    assert weakened_size(shortest, 20, 10) == (64, 32)  # the processor enlarges it too
    exact = CLIPImageProcessor(size={"height": 20, "width": 24})
    assert weakened_size(exact, 100, 10) == (24, 20)
    budget = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    for width, height in ((448, 224), (30, 300), (100, 90)):
        grid = budget(images=[Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"][0]
        expected = (int(grid[2]) * budget.patch_size, int(grid[1]) * budget.patch_size)
        assert weakened_size(budget, width, height) == expected


def test_weakened_image_is_seeded_and_noised_at_input_resolution():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 32})
    image = Image.new("RGB", (128, 64), (200, 30, 90))
    a, b = weakened_image(image, 900, 7, processor), weakened_image(image, 900, 7, processor)
    c = weakened_image(image, 900, 8, processor)
    assert a.size == (64, 32) and a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    # t=900: x_t = 0.366 x_0 + 0.931 eps (pixels in [-1, 1]) -> eps std ~ 0.931 * 127.5 ~ 119,
    # less where clipping bites; a mild t leaves the image almost as it was.
    clean = np.asarray(image.resize(a.size), np.float32)
    residual = np.asarray(a, np.float32) - (0.366 * clean + 127.5 * 0.634)
    assert 80 < residual.std() < 125
    mild = np.asarray(weakened_image(image, 10, 7, processor), np.float32)
    assert np.abs(mild - clean).mean() < 10


# --------------------------------------------------------------------------- weaken


@pytest.mark.slow
def test_weaken_llava_instruct_every_candidate_gets_an_answer_or_a_counted_skip(tmp_path, stopping_vlm):
    built = make_llava_instruct(tmp_path / "src", rows=6, bad=["corrupt_image"])
    source = open_source("llava-instruct", path=str(built.data), image_root=str(built.images))
    candidates = collect(source).candidates
    assert len(candidates) == 7 and all(c.rejected is None for c in candidates)
    corrupt = {c.example_id for c in candidates if c.row in built.bad["corrupt_image"]}

    model = stopping_vlm
    filled, skipped, record = run(candidates, "weaken", tmp_path / "state", model=str(model),
                                  max_new_tokens=12, batch_size=4)
    lines = by_id(tmp_path / "state")
    gold = {c.example_id: c for c in candidates}
    assert set(lines) == {c.example_id for c in candidates} - corrupt  # bad images never reach the model
    unfinished = [line for line in lines.values() if not line["finished"]]
    assert all(len(line["tokens"]) == 12 for line in unfinished)  # hit max_new_tokens
    (bad,) = [c for c in candidates if c.example_id in corrupt]
    with pytest.raises(BadRow) as error:  # the reason the build's image stage would count
        load_image(bad.image.load())
    expected = Counter(rejected_problem(line["text"], line["finished"], gold[line["id"]].chosen)
                       for line in lines.values())
    assert skipped == Counter({error.value.reason: 1}) + Counter({k: n for k, n in expected.items() if k})
    assert len(filled) == expected[None] >= 2
    for c in filled:
        assert c.rejected == lines[c.example_id]["text"] != "" and c.chosen == gold[c.example_id].chosen
        assert c.meta == {**gold[c.example_id].meta,
                          "rejected_response": {"strategy": "weaken:900", "model": str(model)}}
    assert record["strategy"] == "weaken:900" and record["model"] == str(model) and record["prompt"] is None
    assert record["generation"]["max_new_tokens"] == 12 and record["generation"]["do_sample"] is False


@pytest.mark.slow
def test_build_pairs_gold_with_bootstrapped_answers(tmp_path, stopping_vlm):
    """Through the build: rows record the strategy; a re-run reuses the cache, byte for byte."""
    from mdpo_data.build.stage import STATE_DIR, run_build
    from mdpo_data.config.build import BuildConfig
    from mdpo_data.config.runtime import Runtime
    from mdpo_data.format.shards import read_shard, sha256_file, shard_files

    built = make_llava_instruct(tmp_path / "src", rows=6)
    config = BuildConfig(source="llava-instruct", source_path=str(built.data), image_root=str(built.images),
                         n=6, rejected_response="weaken:900", rejected_response_model=str(stopping_vlm))
    out = tmp_path / "out"
    manifest = run_build(config, out, progress=False, runtime=Runtime(batch_size=6)).manifest
    assert manifest.rejected_response.strategy == "weaken:900"
    counts = to_json(manifest.counts)
    assert counts["written"] >= 2 and counts["written"] + sum(counts["skipped"].values()) == 6
    rows = read_shard(shard_files(out, "train")[0]).to_pylist()
    answers = {line["id"]: line["text"] for line in cache_lines(out / STATE_DIR)}
    gold = {r["id"]: r["conversations"][1]["value"] for r in built.records}
    for row in rows:
        assert row["rejected_response_strategy"] == "weaken:900"
        assert row["rejected"][0]["content"][0]["text"] == answers[row["example_id"]]
        assert row["chosen"][0]["content"][0]["text"] == gold[row["source_id"]]
        assert json.loads(row["metadata"])["rejected_response"]["strategy"] == "weaken:900"

    before = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}
    for shard in shard_files(out, "train"):
        shard.unlink()
    run_build(config, out, progress=False, runtime=Runtime(batch_size=6))
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()} == before
    assert len(cache_lines(out / STATE_DIR)) == 6  # nothing generated twice


@pytest.mark.slow
def test_bpo_resume_reports_the_clean_runs_counts(tmp_path, stopping_vlm):
    """A build killed mid-generation (cache cut, no markers, no shards) resumes to the clean
    run's bytes; the responses' skips are the merge of BPO's per-split markers."""
    from mdpo_data.format import markers as stage_state
    from mdpo_data.build.stage import STATE_DIR, run_build
    from mdpo_data.config.build import BuildConfig
    from mdpo_data.config.runtime import Runtime

    built = make_llava_instruct(tmp_path / "src", rows=8)
    config = BuildConfig(source="llava-instruct", source_path=str(built.data), image_root=str(built.images),
                         n=8, eval_fraction=0.25, rejected_response="weaken:900",
                         rejected_response_model=str(stopping_vlm), rejected_response_max_new_tokens=12)
    out = tmp_path / "out"
    clean = run_build(config, out, progress=False, runtime=Runtime(batch_size=3)).manifest
    clean_bytes = (out / "manifest.json").read_bytes()
    markers = [stage_state.parse_marker("bpo", stage_state.read_json(p))
               for p in sorted((out / STATE_DIR).glob("bpo-*.json"))]
    assert [m.part for m in markers] == ["eval", "train"]
    assert clean.counts.skipped_by_stage["responses"] == stage_state.merge_skips(markers) != {}

    (cache,) = (out / STATE_DIR).glob("bpo-*.jsonl")
    cache.write_bytes(b"".join(cache.read_bytes().splitlines(keepends=True)[:3]))
    for path in [*(out / STATE_DIR).glob("bpo-*.json"), *out.glob("*.arrow"), out / "manifest.json"]:
        path.unlink()
    run_build(config, out, progress=False, runtime=Runtime(batch_size=3))
    assert len(cache.read_bytes().splitlines()) == 8  # only the 5 lost answers generated again
    assert (out / "manifest.json").read_bytes() == clean_bytes


@pytest.mark.slow
def test_a_resumed_stage_counts_known_image_failures_without_loading_the_model(tmp_path, stopping_vlm):
    """The part's marker records which images failed (and their bytes): a re-run counts them
    again without loading the model; an image repaired in place is retried."""
    from fixtures import jpeg_bytes

    built = make_llava_instruct(tmp_path / "src", rows=3, bad=["corrupt_image"])
    candidates = collect(open_source("llava-instruct", path=str(built.data), image_root=str(built.images))).candidates
    (bad,) = [c for c in candidates if c.row in built.bad["corrupt_image"]]
    with pytest.raises(BadRow) as error:
        load_image(bad.image.load())
    reason = error.value.reason
    options = dict(model=str(stopping_vlm), max_new_tokens=12, part="train")
    first = run(candidates, "weaken", tmp_path / "state", **options)
    assert first[1][reason] == 1 and bad.example_id not in by_id(tmp_path / "state")
    # a device that cannot exist: this run succeeds only because no model is loaded
    again = run(candidates, "weaken", tmp_path / "state", device="nowhere:0", **options)
    assert again[:2] == first[:2]
    with pytest.raises(RuntimeError, match="nowhere"):  # another part's marker says nothing here
        run(candidates, "weaken", tmp_path / "state", device="nowhere:0", **{**options, "part": "eval"})
    with pytest.raises(RuntimeError, match="nowhere"):  # nor one made for other candidates
        run(candidates[:-1] if candidates[-1] is not bad else candidates[1:], "weaken", tmp_path / "state",
            device="nowhere:0", **options)
    (built.images / bad.image.path).write_bytes(jpeg_bytes(5))  # repaired in place: retried
    with pytest.raises(RuntimeError, match="nowhere"):
        run(candidates, "weaken", tmp_path / "state", device="nowhere:0", **options)
    fixed = run(candidates, "weaken", tmp_path / "state", **options)
    assert reason not in fixed[1] and bad.example_id in by_id(tmp_path / "state")


@pytest.mark.slow
def test_weaken_filters_when_the_model_ends_its_turn(tmp_path, vlm):
    candidates = make_candidates(6)
    run(candidates, "weaken", tmp_path / "probe", model=str(vlm), max_new_tokens=12)
    tokens = {i: by_id(tmp_path / "probe")[c.example_id]["tokens"] for i, c in enumerate(candidates)}
    # Candidate 0 stops at once (empty answer); candidate 1 stops after its first tokens.
    stop_now = tokens[0][0]
    k = next(i for i in range(2, 12) if tokens[1][i] not in tokens[1][:i] and stop_now not in tokens[1][:i])
    model = with_end_of_turn(vlm, tmp_path / "stopping", [stop_now, tokens[1][k]])

    filled, skipped, _ = run(candidates, "weaken", tmp_path / "state", model=str(model), max_new_tokens=12)
    lines = by_id(tmp_path / "state")
    assert [t for t in lines[candidates[0].example_id]["tokens"]] == [stop_now]
    assert lines[candidates[1].example_id]["tokens"] == tokens[1][: k + 1]  # same greedy prefix
    answers = {c.example_id: c.rejected for c in filled}
    assert skipped["rejected_empty"] >= 1 and candidates[0].example_id not in answers
    assert answers[candidates[1].example_id] == lines[candidates[1].example_id]["text"] != ""
    assert len(filled) + sum(skipped.values()) == 6

    # The gold answer equal to the generated one (modulo case/whitespace) -> skipped, and
    # the cache answers it: weaken's input is (image, question), not the gold answer.
    n_lines = len(cache_lines(tmp_path / "state"))
    target = candidates[1]
    same = Candidate(target.source, target.row, target.source_id, target.image, target.question,
                     "  " + answers[target.example_id].upper() + "\n", None)
    filled2, skipped2, _ = run([same], "weaken", tmp_path / "state", model=str(model), max_new_tokens=12)
    assert filled2 == [] and skipped2 == {"rejected_same_as_chosen": 1}
    assert len(cache_lines(tmp_path / "state")) == n_lines


@pytest.mark.slow
def test_weaken_is_deterministic_batch_invariant_and_seeded(tmp_path):
    candidates = make_candidates(6)
    runs = {}
    for name, batch_size, seed in (("a", 4, 0), ("b", 4, 0), ("single", 1, 0), ("other-seed", 4, 1)):
        run(candidates, "weaken", tmp_path / name, batch_size=batch_size, seed=seed, max_new_tokens=10)
        runs[name] = {i: (line["tokens"], line["text"]) for i, line in by_id(tmp_path / name).items()}
    assert runs["a"] == runs["b"]
    assert runs["a"] == runs["single"]  # left-padded batches of 4 == one at a time (fp32)
    # Another build seed draws other noise for every example, so other answers for some.
    assert runs["a"] != runs["other-seed"]
    ids = [c.example_id for c in candidates]
    assert all(example_seed(0, i, "bpo") != example_seed(1, i, "bpo") for i in ids)


@pytest.mark.slow
def test_weaken_resumes_after_a_torn_cache(tmp_path):
    candidates = make_candidates(6)
    state = tmp_path / "state"
    full = run(candidates, "weaken", state, batch_size=2)
    (path,) = state.glob("bpo-*.jsonl")
    data = path.read_bytes().splitlines(keepends=True)
    assert len(data) == 6
    path.write_bytes(b"".join(data[:2]) + data[2][: len(data[2]) // 2])  # killed mid-write

    again = run(candidates, "weaken", state, batch_size=2)
    after = path.read_bytes().splitlines(keepends=True)
    assert after[:2] == data[:2]  # kept, not regenerated
    assert len(after) == 6 and len({json.loads(line)["id"] for line in after}) == 6  # only 4 new
    assert again[0] == full[0] and again[1] == full[1]
    assert {json.loads(line)["id"]: json.loads(line)["tokens"] for line in after} == {
        json.loads(line)["id"]: json.loads(line)["tokens"] for line in data}

    # Other settings never read this cache: a new file, the old one untouched.
    run(candidates[:2], "weaken", state, batch_size=2, max_new_tokens=9)
    assert len(list(state.glob("bpo-*.jsonl"))) == 2 and path.read_bytes().count(b"\n") == 6


def test_weaken_needs_a_model(tmp_path):
    with pytest.raises(ValueError, match="weaken needs a vision-language model"):
        run(make_candidates(1), "weaken", tmp_path, model="")


def test_no_candidates_loads_nothing(tmp_path):
    filled, skipped, record = run([], "weaken:300", tmp_path, model="/no/such/model")
    assert filled == [] and not skipped and record["strategy"] == "weaken:300"


# --------------------------------------------------------------------------- inject


@pytest.mark.slow
def test_inject_plumbing_prompt_and_batch_invariance(tmp_path, text_lm):
    candidates = make_candidates(5)
    corrupt = Candidate("llava-instruct", 9, "bad", ImageRef(kind="bytes", data=b"x"), "What is it?",
                        "A red circle.", None)
    options = {"inject_model": str(text_lm), "model": "unused", "max_new_tokens": 10}
    filled, skipped, record = run([*candidates, corrupt], "inject", tmp_path / "b3", batch_size=3, **options)
    run([*candidates, corrupt], "inject", tmp_path / "b1", batch_size=1, **options)

    lines = by_id(tmp_path / "b3")
    assert set(lines) == {c.example_id for c in [*candidates, corrupt]}  # inject never reads images
    assert len(filled) + sum(skipped.values()) == 6
    assert {i: line["tokens"] for i, line in lines.items()} == {
        i: line["tokens"] for i, line in by_id(tmp_path / "b1").items()}
    assert record["prompt"] == INJECT_PROMPT and record["model"] == str(text_lm)
    assert record["strategy"] == "inject" and record["inject_model"] == str(text_lm)
    assert "{question}" in INJECT_PROMPT and "{answer}" in INJECT_PROMPT
    for c in filled:
        assert c.meta["rejected_response"] == {"strategy": "inject", "model": str(text_lm)}


def test_inject_regenerates_when_the_gold_answer_changes(tmp_path, text_lm):
    import dataclasses

    candidates = make_candidates(3)
    options = {"inject_model": str(text_lm), "max_new_tokens": 6}
    run(candidates, "inject", tmp_path, **options)
    changed = [dataclasses.replace(candidates[0], chosen="A blue square."), *candidates[1:]]
    run(changed, "inject", tmp_path, **options)
    lines = cache_lines(tmp_path)
    assert len(lines) == 4 and lines[-1]["id"] == candidates[0].example_id


def test_inject_without_chat_template_and_with_stops(tmp_path, text_lm):
    """A base LM (no chat template) gets the plain prompt; its answers pass the filters."""
    plain = tmp_path / "plain"
    shutil.copytree(text_lm, plain)
    config_file = plain / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    candidates = make_candidates(3)
    run(candidates, "inject", tmp_path / "probe", inject_model=str(plain), max_new_tokens=8)
    tokens = by_id(tmp_path / "probe")[candidates[2].example_id]["tokens"]
    stop = next(t for i, t in enumerate(tokens) if i >= 2 and t not in tokens[:i])
    stopping = with_end_of_turn(plain, tmp_path / "stopping", [stop])

    filled, skipped, _ = run(candidates, "inject", tmp_path / "state", inject_model=str(stopping),
                             max_new_tokens=8)
    answer = {c.example_id: c.rejected for c in filled}.get(candidates[2].example_id)
    line = by_id(tmp_path / "state")[candidates[2].example_id]
    assert line["finished"] and line["tokens"][-1] == stop and answer == line["text"]
    assert len(filled) + sum(skipped.values()) == 3


def test_inject_needs_an_inject_model(tmp_path):
    with pytest.raises(ValueError, match="inject needs a text LLM"):
        run(make_candidates(1), "inject", tmp_path)


def test_shipped_bpo_pipeline_is_valid():
    from mdpo_data.config.pipeline import build_config, load_pipeline

    options = load_pipeline(Path(__file__).parents[2] / "pipelines" / "llava_instruct_bpo.yaml")
    config = build_config(options)
    assert config.source == "llava-instruct" and config.n == 10000 and config.rejected == "crop:0-0.2"
    assert parse_response_strategy(config.rejected_response).resolved == "weaken:900"
    assert options["ref_model"] == "llava-hf/llava-1.5-7b-hf" and options["dtype"] == "bfloat16"
    assert config.image_root is None  # a per-machine path: the user supplies it


def test_a_cache_line_nested_too_deep_is_skipped(tmp_path):
    from mdpo_data.bpo.cache import AnswerCache

    path = tmp_path / "bpo-x.jsonl"
    good = {"strategy": "s", "id": "a", "text": "t", "finished": True}
    path.write_bytes(json.dumps(good).encode() + b"\n" + b"[" * 100_000 + b"\n")
    assert AnswerCache(path, {"strategy": "s"}).load() == {"a": good}
