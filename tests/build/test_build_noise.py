"""A `noise:T` build: m_l at the model's input size, stored as PNG, the clipped share recorded."""

import pytest
from cli_helpers import rows_of, run_cli

from mdpo_data.build.stage import run_build
from mdpo_data.config.build import BuildConfig
from cli_helpers import manifest_json

pytestmark = pytest.mark.slow  # a whole noise build through the CLI

def test_noise_build_records_model_input_and_clipped_share(tmp_path):
    import io
    import json

    from PIL import Image

    run_cli("build", "--source", "demo", "--n", 4, "--demo-size", 20, "--rejected", "noise:900",
            "--out", tmp_path / "n", "--quiet")
    record = manifest_json(tmp_path / "n")["rejected_image"]
    assert json.loads(record["model_input"])["size"] == {"shortest_edge": 336}
    assert 0.0 < record["clipped_share"] < 0.2
    for row in rows_of(tmp_path / "n"):
        stored = Image.open(io.BytesIO(row["rejected_images"][0]["bytes"]))
        assert stored.format == "PNG" and min(stored.size) == 336
    config = BuildConfig(source="demo", n=2, demo_size=20, rejected="noise:900",
                         noise_input='{"size": {"shortest_edge": 32}, "mean": [0.5, 0.5, 0.5], '
                                     '"std": [0.5, 0.5, 0.5], "factor": null}')
    run_build(config, tmp_path / "m", progress=False)
    assert all(min(Image.open(io.BytesIO(r["rejected_images"][0]["bytes"])).size) == 32
               for r in rows_of(tmp_path / "m"))
