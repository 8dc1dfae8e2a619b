"""Shared test set-up."""

import pytest


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps process-wide singletons (AcceleratorState/PartialState): a test that
    ran TRL or the scorer in-process must not fix the mixed precision of the next one. A real
    command runs one of them per process, so this only isolates the tests."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


# (model, processor) of the tiny models, built once per test module that asks.
@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    from score_fixtures import load

    from mdpo_data.demo.tiny import build_tiny_llava

    return load(build_tiny_llava(tmp_path_factory.mktemp("llava")))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from score_fixtures import load

    from mdpo_data.demo.tiny import build_tiny_qwen2_vl

    return load(build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen")))


@pytest.fixture(scope="module")
def qwen2_5(tmp_path_factory):
    from score_fixtures import load

    from mdpo_data.demo.tiny import build_tiny_qwen2_5_vl

    return load(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen2_5")))


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    from score_fixtures import load

    from mdpo_data.demo.tiny import build_tiny_qwen3_vl

    return load(build_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3")))


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    from score_fixtures import load

    from mdpo_data.demo.tiny import build_tiny_gemma3

    return load(build_tiny_gemma3(tmp_path_factory.mktemp("gemma3")))
