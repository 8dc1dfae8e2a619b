"""No deprecated transformers API on the scorer's paths: transformers' FutureWarning and
DeprecationWarning are raised as errors, and its logger may not announce a deprecation or a
removal, while both engines (shared-prefix packing on LLaVA and on Qwen2-VL's 3-D positions,
plain on Qwen2-VL) score."""

import logging
import warnings

import pytest
from score_fixtures import make_build

from cli_helpers import manifest_json
from mdpo_data.scoring.stage import score_build
from mdpo_data.demo.tiny import build_tiny_llava, build_tiny_qwen2_vl

pytestmark = pytest.mark.slow  # builds and scores with tiny models


@pytest.mark.parametrize("build_model, reuse, method", [
    (build_tiny_llava, "auto", True), (build_tiny_qwen2_vl, "auto", True), (build_tiny_qwen2_vl, "off", False)])
def test_scoring_uses_no_deprecated_transformers_api(build_model, reuse, method, tmp_path):
    model_dir = build_model(tmp_path / "model")
    build = make_build(tmp_path / "data", shard_rows=(3,), eval_rows=(1,), sizes=[(56, 56), (84, 60)])
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", category=FutureWarning, module=r"transformers(\.|$)")
            warnings.filterwarnings("error", category=DeprecationWarning, module=r"transformers(\.|$)")
            stats = score_build(build, str(model_dir), no_image_logps=True, progress=False,
                                prefix_reuse=reuse)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert stats["prefix_reuse"] is method
    assert manifest_json(build)["reference"]["scored"]
    deprecations = [m for m in messages if any(w in m.lower() for w in ("deprecat", "will be removed"))]
    assert not deprecations, deprecations
