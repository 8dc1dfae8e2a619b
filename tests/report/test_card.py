"""The dataset card: valid YAML front matter, and a body that describes this very build."""

from __future__ import annotations

import re

import pytest
import yaml
from huggingface_hub import DatasetCard

from mdpo_data.report import card
from mdpo_data.report.card import render_card, resolve_license, size_category, uses_bpo, write_card
from mdpo_data.format.integrity import IntegrityError
from mdpo_data.format.manifest import ManifestError, write_manifest
from cli_helpers import manifest_json
from mdpo_data.sources import LICENSES
from card_fixtures import REAL_FINGERPRINT, write_build


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "the card must start with a YAML front matter block"
    return yaml.safe_load(match[1])


@pytest.mark.parametrize("n, expected", [
    (0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9999, "1K<n<10K"), (10_000, "10K<n<100K"),
    (380_000, "100K<n<1M"), (10**6, "1M<n<10M"), (10**12 - 1, "100B<n<1T"), (10**12, "n>1T"),
])
def test_size_category_matches_hub_buckets(n, expected):
    assert size_category(n) == expected


@pytest.mark.parametrize("licenses, expected", [
    (["apache-2.0"], "apache-2.0"),
    (["CC BY 4.0", "apache-2.0"], "other"),  # same restrictiveness, different terms
    (["cc-by-4.0", "cc-by-nc-4.0"], "cc-by-nc-4.0"),  # the most restrictive wins
    (["cc-by-nc-4.0", "cc-by-4.0", "cc-by-nc-4.0"], "cc-by-nc-4.0"),
    (["cc-by-4.0", None], "other"),  # no license declared: nothing is granted
    (["cc-by-4.0", "unspecified"], "other"),
    ([], "other"),
])
def test_license_is_the_most_restrictive(licenses, expected):
    assert resolve_license(licenses) == expected


def test_bpo_is_detected_from_either_strategy():
    assert not uses_bpo({"source"}, {"crop:0.01-0.2", "swap"})
    assert uses_bpo({"source", "weaken:900"}, {"crop:0.01-0.2"})
    assert uses_bpo({"source"}, {"noise:900"})


def test_scored_card_describes_the_build(tmp_path):
    directory = write_build(tmp_path / "b")
    text = render_card(directory)
    meta = front_matter(text)

    assert meta["license"] == resolve_license([LICENSES["demo"]])
    assert meta["task_categories"] == ["visual-question-answering"]
    assert set(meta["tags"]) >= {"dpo", "mdpo", "preference", "multimodal", "trl", "vision"}
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "eval", "path": "data/eval-*"}]}]
    assert "source_datasets" not in meta  # the demo source is not on the Hub
    assert "demo" in meta["pretty_name"]

    manifest = manifest_json(directory)
    assert manifest["command"] in text
    assert "shard_size: 3" in text  # the resolved config
    assert "| non_numeric_rating | 3 |" in text and "| tie | 5 |" in text
    assert "| train | 5 |" in text and "| eval | 2 |" in text
    assert manifest["rejected_image"]["description"] in text
    assert "model: tiny-llava-v1" in text and "/cache/" not in text  # the fingerprint, no local path
    assert "smoke-test reference" in text
    assert "| too_long | 1 |" in text  # the scorer's skips
    # example text is escaped and cut, never raw HTML
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in text and "<b>bold</b>" not in text
    assert "**train-0000**" in text and "**train-0003**" not in text
    assert "arXiv:2406.11839" in text and "arXiv:2403.08730" not in text


def test_card_parses_with_huggingface_hub(tmp_path):
    directory = write_build(tmp_path / "b", scored=False)
    path = write_card(directory)
    assert path == directory / "README.md"
    parsed = DatasetCard.load(path)
    assert parsed.data.license == resolve_license([LICENSES["demo"]])
    assert parsed.data.configs[0]["data_files"][0]["split"] == "train"
    assert "Not scored yet" in parsed.text
    assert "smoke-test" not in parsed.text and "Image reliance" not in parsed.text
    assert path.read_bytes() == render_card(directory).encode()  # deterministic, atomic write
    assert not list(directory.glob(".README.md.*"))  # no temp file left behind


def test_real_reference_has_no_smoke_test_warning(tmp_path):
    text = render_card(write_build(tmp_path / "b", fingerprint=REAL_FINGERPRINT))
    assert "llava-hf/llava-1.5-7b-hf" in text and "smoke-test" not in text


def test_silkie_card_inherits_no_license_and_cites_sources(tmp_path):
    directory = write_build(tmp_path / "b", source="silkie", response_strategy="weaken:900")
    text = render_card(directory)
    meta = front_matter(text)
    assert meta["license"] == "other"
    assert meta["source_datasets"] == ["MMInstruction/VLFeedback"]
    assert "silkie: unspecified" in text and "set `license`" in text
    assert "Silkie: Preference Distillation" in text  # the source's own citation
    assert "arXiv:2403.08730" in text  # BPO: the rejected responses were bootstrapped


def test_hostile_strings_keep_the_yaml_valid(tmp_path):
    directory = write_build(tmp_path / "b")
    manifest = manifest_json(directory)
    spec = "crop: 'x' \"y\"\n---\n# not a title"
    manifest["rejected_image"]["spec"] = spec
    write_manifest(directory, manifest)
    text = render_card(directory)
    meta = front_matter(text)
    assert meta["pretty_name"].endswith(" ".join(spec.split()))  # kept, on one line
    assert DatasetCard(text).data.pretty_name == meta["pretty_name"]
    assert "\n# not a title" not in text  # the body does not grow a heading either


def test_reliance_statistics_appear_when_scored(tmp_path):
    text = render_card(write_build(tmp_path / "b"))
    # train rows 0..3 are scored (row 4 was skipped); gaps: -0.3, 0.5, 0.5, -0.3
    assert "| train | value |" in text and "| eval | value |" in text
    assert "| rejected_image.n | 4 |" in text
    assert "| rejected_image.share_not_lowered | 0.5 |" in text
    assert "| unscored | 1 |" in text
    assert "| no_image |" not in text  # not scored without the image: no empty row


@pytest.mark.parametrize("fingerprint, smoke", [
    ({"model": "tiny"}, True),
    ({"model": "/x/y", "mdpo_smoke_test": True}, True),
    ({"model": "/cache/mdpo-toolkit/tiny-llava-v1"}, True),
    ({"model": "llava-hf/llava-1.5-7b-hf", "weights": "llava-hf/llava-1.5-7b-hf@abc"}, False),
])
def test_smoke_test_references_are_recognised(fingerprint, smoke):
    assert card.is_smoke_test(fingerprint) is smoke


def test_not_a_build_folder(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json"):
        render_card(tmp_path)
    write_build(tmp_path / "b")
    for shard in (tmp_path / "b").glob("*.arrow"):
        shard.unlink()
    with pytest.raises(IntegrityError, match="listed in manifest.json but missing"):
        card.render_card(tmp_path / "b")
