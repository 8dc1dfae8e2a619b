"""Tiny vision-language models built offline from configs: SMOKE-TEST models, not real ones.

They exist so that the scorer, the trainer and the demo pipeline run end to end on a CPU
with no network. Their weights are random (fixed by a seed): their log-probs mean nothing,
only that the code computes them the same way everywhere.

- `build_tiny_llava`: byte-level BPE tokenizer trained on a small corpus (the demo's colours,
  shapes and numbers), CLIP vision tower (2 layers, 32 px, patch 8 -> 16 image tokens),
  Llama text model (2 layers, hidden 128), ~600-token vocabulary -> about 0.6M parameters, loadable with
  `AutoProcessor` / `AutoModelForImageTextToText` like a Hub checkpoint.
- `build_tiny_qwen2_vl`: a tiny Qwen2-VL, whose image-token count depends on the image size
  (and whose rotary positions are 3-D), to test the size-dependent paths.
- `build_tiny_qwen2_5_vl`, `build_tiny_qwen3_vl`, `build_tiny_idefics3`, `build_tiny_gemma3`:
  the Qwen2.5-VL, Qwen3-VL (deepstack), Idefics3 (SmolVLM) and Gemma 3 architectures, for the
  end-to-end tests of other model families.
- `tiny_model_path`: the tiny LLaVA cached on disk, built once, atomically.
"""

from mdpo_data.demo.tiny.cache import cache_dir, cached_build, tiny_model_path
from mdpo_data.demo.tiny.common import SMOKE_TEST_FLAG, is_smoke_test_model
from mdpo_data.demo.tiny.gemma3 import build_tiny_gemma3
from mdpo_data.demo.tiny.idefics3 import build_tiny_idefics3
from mdpo_data.demo.tiny.internvl import build_tiny_internvl
from mdpo_data.demo.tiny.llava import (
    LLAVA_TEMPLATE,
    SMOKE_TEST_NAME,
    TINY_LLAVA_VERSION,
    build_tiny_llava,
    build_tiny_llava_next,
    build_tiny_llava_onevision,
    llava,
)
from mdpo_data.demo.tiny.mistral3 import build_tiny_mistral3
from mdpo_data.demo.tiny.qwen import build_tiny_qwen2_5_vl, build_tiny_qwen2_vl, build_tiny_qwen3_vl

__all__ = [
    "LLAVA_TEMPLATE", "SMOKE_TEST_FLAG", "SMOKE_TEST_NAME", "TINY_LLAVA_VERSION", "build_tiny_gemma3",
    "build_tiny_idefics3", "build_tiny_internvl", "build_tiny_llava", "build_tiny_llava_next",
    "build_tiny_llava_onevision", "build_tiny_mistral3", "build_tiny_qwen2_5_vl", "build_tiny_qwen2_vl",
    "build_tiny_qwen3_vl", "cache_dir", "cached_build", "is_smoke_test_model", "llava", "tiny_model_path",
]
