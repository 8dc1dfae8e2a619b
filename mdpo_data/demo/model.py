"""`--ref-model demo`: a small LLaVA that can actually see the demo scenes, built on first use.

Same HF classes as real checkpoints (LlavaForConditionalGeneration = CLIP vision tower +
projector + Llama), so no code path is special. How it is made, deterministically:

1. a byte-level BPE tokenizer trained on demo questions and answers, a LLaVA-1.5 chat template
   ("USER: <image>\\n{q} ASSISTANT: {a}</s>": the end-of-turn token right after the text);
2. random weights from a seed (the vision tower stays random and frozen: its first layer, a
   random linear map of 8x8 pixel patches, keeps what the language model needs to read);
3. an unscored demo build of PRETRAIN rows (`demo.PRETRAIN_FIRST_ROW`..., disjoint from every
   default build's rows) trained by mdpo-train itself: `loss: sft`, `finetune: full`.

`evaluate_demo_model` (module `demo_eval`) measures it on HELD-OUT rows (`demo.HELDOUT_FIRST_ROW`).
The cache folder name carries `DEMO_MODEL_VERSION` and the recipe hash, so a change rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mdpo_data.demo.tiny import LLAVA_TEMPLATE, cache_dir, cached_build

DEMO_MODEL_VERSION = "v1"  # bump when the build below changes meaning
DEMO_MODEL_NAME = "mdpo-demo-llava"
DEMO_MODEL_FLAG = "mdpo_demo_model"

SYSTEM_PROMPT = (  # vicuna-like; optional (the template renders a system turn if one is given)
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_MODEL_CARD = """---
tags: [demo, synthetic]
---
# {name}

A small LLaVA-class model (CLIP vision + Llama text, {params:,} parameters) trained by
mdpo-toolkit's own trainer (`loss: sft`, full fine-tuning of the language model) on
{n_train} synthetic demo scenes (rows from {first_row}, disjoint from default builds).
It answers the demo's count / color / shape / position / presence questions and nothing
else. Built by `mdpo_data.demo.model` (recipe {recipe}).
"""


@dataclass(frozen=True)
class Recipe:
    """Everything that fixes the demo model's bytes (with the library versions)."""

    seed: int = 0
    n_train: int = 8000
    image_size: int = 64  # the scenes are a 4x4 grid of cells, one item per cell at most:
    patch_size: int = 16  # 16 image tokens, one per cell
    vision_hidden: int = 128
    position_std: float = 0.0  # 0: CLIP's own init (0.5 made shapes worse, positions no better)
    hidden_size: int = 192
    num_layers: int = 4
    vocab_size: int = 512
    epochs: int = 6  # 3 learned colours and counts only; shapes and presence came in epochs 3-6
    batch_size: int = 32
    lr: float = 2e-3
    warmup_ratio: float = 0.05
    prior: float = 0.0  # > 0: trained in the world with a language prior (`--demo-prior`)

    def key(self) -> str:
        values = asdict(self)
        if not self.prior:  # added later: the default recipe keeps its key (and its cache)
            del values["prior"]
        blob = json.dumps({**values, "version": DEMO_MODEL_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


DEFAULT_RECIPE = Recipe()
# `--ref-model demo-prior`: 90% of groups in their shape's usual colour, so the model has a
# prior to fall back on; the counter-prior 10% keep it seeing (docs/results.md).
PRIOR_RECIPE = Recipe(prior=0.9)


# ---------------------------------------------------------------- 1-2. tokenizer, processor, weights


def _corpus(seed: int, n: int = 3000) -> list[str]:
    from mdpo_data.sources.demo import PRETRAIN_FIRST_ROW, make_candidate

    texts = ["USER: ASSISTANT: Sure! " + SYSTEM_PROMPT]
    for row in range(PRETRAIN_FIRST_ROW, PRETRAIN_FIRST_ROW + n):
        c = make_candidate(seed, row)
        texts += [c.question, c.chosen, c.rejected]
    return texts


def _tokenizer(recipe: Recipe):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(recipe.seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    return tokenizer


def build_initial(path: str | Path, recipe: Recipe = DEFAULT_RECIPE) -> Path:
    """The untrained model (random weights from recipe.seed) + its processor, at `path`."""
    import torch

    from mdpo_data.demo.tiny import llava

    path = Path(path)
    tokenizer = _tokenizer(recipe)
    model, processor = llava(
        tokenizer, chat_template=LLAVA_TEMPLATE, image_size=recipe.image_size,
        patch_size=recipe.patch_size, vision_hidden=recipe.vision_hidden, vision_layers=1,
        hidden_size=recipe.hidden_size, num_layers=recipe.num_layers, max_positions=512,
        seed=recipe.seed,
    )  # with one vision layer, the default feature layer (-2) is the patch embeddings themselves
    if recipe.position_std:  # CLIP's position embeddings start at std 0.02
        embeddings = next(m for m in model.modules() if type(m).__name__ == "CLIPVisionEmbeddings")
        with torch.no_grad():
            embeddings.position_embedding.weight.normal_(0.0, recipe.position_std)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ---------------------------------------------------------------- 3. training data and training


def pretrain_build_config(recipe: Recipe = DEFAULT_RECIPE):
    """The unscored demo build the model trains on: PRETRAIN rows only."""
    from mdpo_data.config.build import BuildConfig
    from mdpo_data.sources.demo import PRETRAIN_FIRST_ROW

    return BuildConfig(
        source="demo", n=recipe.n_train, demo_size=recipe.n_train, seed=recipe.seed,
        demo_first_row=PRETRAIN_FIRST_ROW, shard_size=max(recipe.n_train, 1), demo_prior=recipe.prior,
    )


def train_options(recipe: Recipe = DEFAULT_RECIPE) -> dict:
    """The mdpo-train config (YAML keys) that trains the demo model."""
    return {
        "loss": "sft", "finetune": "full", "dtype": "fp32", "epochs": recipe.epochs, "lr": recipe.lr,
        "global_batch_size": recipe.batch_size, "per_device_batch_size": recipe.batch_size,
        "warmup_ratio": recipe.warmup_ratio, "weight_decay": 0.0, "adam_beta2": 0.99,
        "save_steps": 0, "spot_check_rows": 0, "seed": recipe.seed, "progress": False,
        "logging_steps": 10, "num_workers": 1,  # one process encodes while the other trains
    }


def _child(command: list[str], what: str) -> None:
    """Run one of our CLIs in a child process; a failure raises with its last lines."""
    import subprocess

    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{what} failed:\n{tail}")


def _build_data(out: Path, recipe: Recipe) -> None:
    """`mdpo-data build` of the pretraining rows in a child process. A process boundary, as for
    training: the build stage may itself load a built-in model (BPO), so importing it here
    would make `demo` and `build` depend on each other."""
    import dataclasses
    import sys

    import yaml

    options = {k: v for k, v in dataclasses.asdict(pretrain_build_config(recipe)).items() if v is not None}
    config = out.parent / "build_demo_data.yaml"
    config.write_text(yaml.safe_dump(options, sort_keys=True))
    _child([sys.executable, "-m", "mdpo_data.cli", "build", "--pipeline", str(config), "--out", str(out),
            "--quiet"], "building the demo model's training rows")


def _train(shards: Path, initial: Path, out: Path, recipe: Recipe) -> None:
    """mdpo-train in a child process (one accelerate state per process, as on the command line)."""
    import sys

    import yaml

    config = out.parent / "train_demo_model.yaml"
    config.write_text(yaml.safe_dump(train_options(recipe), sort_keys=True))
    _child([sys.executable, "-m", "mdpo_train.cli", "--config", str(config), "--shards", str(shards),
            "--model", str(initial), "--output-dir", str(out)], "training the demo model")


def build_demo_model(path: str | Path, recipe: Recipe = DEFAULT_RECIPE, *, log=print) -> Path:
    """Write the trained demo model (weights, processor, card) to `path`; returns it."""
    path = Path(path)
    work = Path(tempfile.mkdtemp(prefix=".demo-model-work."))
    started = time.perf_counter()
    try:
        initial = build_initial(work / "initial", recipe)
        data = work / "data"
        _build_data(data, recipe)
        log(f"demo model: tokenizer, weights and {recipe.n_train} training rows in "
            f"{time.perf_counter() - started:.0f}s; training (loss sft, full fine-tuning)...")
        _train(data, initial, work / "run", recipe)
        path.mkdir(parents=True, exist_ok=True)
        for item in (work / "run").iterdir():
            if item.is_file() and item.name not in ("README.md",):
                shutil.copy2(item, path / item.name)
        _mark(path, recipe)
        log(f"demo model: built in {time.perf_counter() - started:.0f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _mark(path: Path, recipe: Recipe) -> None:
    from safetensors import safe_open

    from mdpo_data.sources.demo import PRETRAIN_FIRST_ROW

    params = 0
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            params += sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config[DEMO_MODEL_FLAG] = {"version": DEMO_MODEL_VERSION, "recipe": recipe.key(), **asdict(recipe)}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (path / "README.md").write_text(_MODEL_CARD.format(
        name=DEMO_MODEL_NAME, params=params, n_train=recipe.n_train,
        first_row=PRETRAIN_FIRST_ROW, recipe=recipe.key()))


def demo_model_path(recipe: Recipe = DEFAULT_RECIPE) -> Path:
    """The demo model, built on first use into $MDPO_CACHE; concurrent callers are safe
    (built beside the target and renamed into place; a losing racer discards its copy)."""
    prior = "-prior" if recipe.prior else ""
    target = cache_dir() / f"demo-llava{prior}-{DEMO_MODEL_VERSION}-{recipe.key()}"
    return cached_build(target, lambda tmp: build_demo_model(tmp, recipe, log=_stderr))


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)
