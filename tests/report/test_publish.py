"""Hub export: the dry-run folder loads with `datasets`, trains with TRL, and its card parses.

No test touches the network: `push` is exercised only up to the checks it makes before
connecting.
"""

from __future__ import annotations

import json

import math

import datasets
import pytest
import yaml
from huggingface_hub import DatasetCard
from PIL import Image

from mdpo_data.format import schema
from mdpo_data.report.card import write_card
from mdpo_data.report.publish import PublishError, export_hub_folder, push
from mdpo_data.format.shards import load_split, open_dataset
from card_fixtures import REAL_FINGERPRINT, write_build

EXPORT_FILES = {
    "README.md", "manifest.json", "data/train-00000-of-00002.parquet",
    "data/train-00001-of-00002.parquet", "data/eval-00000-of-00001.parquet",
}


def files(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    build = write_build(root / "build", fingerprint=REAL_FINGERPRINT)
    return build, export_hub_folder(build, root / "hub")


def test_export_has_the_hub_layout(exported):
    build, out = exported
    assert files(out) == EXPORT_FILES
    exported = json.loads((out / "manifest.json").read_text())  # the build's, plus its own files
    assert {k: v for k, v in exported.items() if k != "export"} == json.loads((build / "manifest.json").read_text())
    assert [e["file"] for e in exported["export"]] == sorted(EXPORT_FILES - {"README.md", "manifest.json"},
                                                             key=lambda f: ("eval" in f, f))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_export_loads_with_image_features_and_the_same_rows(exported):
    build, out = exported
    loaded = datasets.load_dataset(str(out))
    assert {split: len(ds) for split, ds in loaded.items()} == {"train": 5, "eval": 2}
    train = loaded["train"]
    assert train.features["images"] == datasets.List(datasets.Image())
    assert train.features["rejected_images"] == datasets.List(datasets.Image())
    assert train.features == schema.FEATURES
    assert isinstance(train[0]["images"][0], Image.Image)  # decoded images, not raw structs

    original = load_split(build, "train")
    raw = train.cast_column("images", datasets.List(datasets.Image(decode=False)))
    assert raw[3]["images"][0]["bytes"] == original.cast_column(
        "images", datasets.List(datasets.Image(decode=False)))[3]["images"][0]["bytes"]
    assert train["example_id"] == original["example_id"]
    assert train[schema.REF_CHOSEN] == original[schema.REF_CHOSEN]
    flipped = train[schema.REF_CHOSEN_REJECTED_IMAGE]
    assert flipped[-1] is None and all(math.isfinite(v) for v in flipped[:-1])  # a scorer skip stays null


def test_open_dataset_reads_the_export(exported):
    build, out = exported
    data = open_dataset(out)
    assert {split: len(ds) for split, ds in data.items()} == {"train": 5, "eval": 2}
    assert data["eval"]["example_id"] == load_split(build, "eval")["example_id"]


def test_exported_card_has_configs_and_dataset_info(exported):
    _, out = exported
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.configs == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "eval", "path": "data/eval-*"}]}]
    info = card.data.dataset_info
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == {"train": 5, "eval": 2}
    assert {"name": "images", "list": "image"} in info["features"]
    assert info["download_size"] == sum(p.stat().st_size for p in (out / "data").iterdir())
    assert "## Citations" in card.text and "arXiv:2406.11839" in card.text
    yaml.safe_load((out / "README.md").read_text().split("---\n")[1])  # plain, safe YAML


def test_existing_front_matter_is_merged_not_overwritten(tmp_path):
    build = write_build(tmp_path / "build", scored=False)
    write_card(build)
    local = (build / "README.md").read_text().replace("---\n", "---\nlanguage:\n- en\n", 1)
    (build / "README.md").write_text(local)  # a key added by hand to the local card
    hub_card = yaml.safe_dump({
        "license": "mit",
        "annotations_creators": ["machine-generated"],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "old", "path": "data/old-*"}]},
            {"config_name": "paper_subset", "data_files": "subset/*.parquet"},
        ],
        "dataset_info": [
            {"config_name": "default", "features": [{"name": "x", "dtype": "string"}]},
            {"config_name": "paper_subset", "features": [{"name": "y", "dtype": "int64"}]},
        ],
    })
    out = export_hub_folder(build, tmp_path / "hub", base_card=f"---\n{hub_card}---\n# old body\n")
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"  # ours wins where both set a key
    assert card.data.language == ["en"] and card.data.annotations_creators == ["machine-generated"]
    configs = {c["config_name"]: c["data_files"] for c in card.data.configs}
    assert configs["paper_subset"] == "subset/*.parquet"  # another config survives
    assert [f["split"] for f in configs["default"]] == ["train", "eval"]  # ours replaces default
    infos = {i["config_name"]: i for i in card.data.dataset_info}
    assert infos["paper_subset"]["features"] == [{"name": "y", "dtype": "int64"}]
    assert {"name": "example_id", "dtype": "string"} in infos["default"]["features"]
    assert "old body" not in card.text and "Not scored yet" in card.text


def test_a_broken_existing_card_is_replaced_with_a_warning(tmp_path):
    build = write_build(tmp_path / "build", scored=False)
    with pytest.warns(UserWarning, match="ignoring the YAML front matter of the Hub's README.md"):
        out = export_hub_folder(build, tmp_path / "hub", base_card="---\nfoo: [unclosed\n---\nbody")
    assert DatasetCard.load(out / "README.md").data.configs[0]["config_name"] == "default"


def test_re_export_replaces_an_old_export(tmp_path):
    build = write_build(tmp_path / "build", scored=False, n_eval=0)
    out = export_hub_folder(build, tmp_path / "hub")
    (out / "data" / "train-00005-of-00006.parquet").write_bytes(b"stale")
    export_hub_folder(build, out)
    assert files(out) == {"README.md", "manifest.json", "data/train-00000-of-00002.parquet",
                          "data/train-00001-of-00002.parquet"}


def test_export_refuses_unsafe_targets_and_invalid_data(tmp_path):
    build = write_build(tmp_path / "build", scored=False)
    with pytest.raises(PublishError, match="would replace the build folder"):
        export_hub_folder(build, build)
    with pytest.raises(PublishError, match="would replace the build folder"):
        export_hub_folder(build, tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(PublishError, match="notes.txt"):
        export_hub_folder(build, tmp_path / "busy")

    def corrupt(split, rows):
        rows[0]["rejected_images"] = [{"bytes": b"not an image", "path": None}]
        return rows

    bad = write_build(tmp_path / "bad", scored=False, edit=corrupt)
    with pytest.raises(PublishError, match=r"(?s)does not validate \(2 problem.*rejected_images\[0\] does not decode"):
        export_hub_folder(bad, tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_the_current_folder_is_never_the_export_and_relative_names_stage_beside_it(tmp_path, monkeypatch):
    """`--dry-run .` would move the folder the user's shell is in; `--dry-run hub` (a bare
    relative name) stages next to it, never inside the working folder."""
    build = write_build(tmp_path / "build", scored=False, n_eval=0)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for target in (".", "./", str(work), str(tmp_path)):
        with pytest.raises(PublishError, match="current folder"):
            export_hub_folder(build, target)
    assert list(work.iterdir()) == [] and work.is_dir()
    out = export_hub_folder(build, "hub")
    assert out == work / "hub" and files(out) == {
        "README.md", "manifest.json", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"}
    export_hub_folder(build, "hub")  # a re-export swaps in a new folder; no staging is left
    assert sorted(p.name for p in work.iterdir()) == ["hub"]


def test_a_linked_export_folder_is_refused_and_its_target_kept(tmp_path):
    """`--dry-run LINK` (a symlink to an old export) is refused in one line: the swap would
    rename the link and delete the export's files through it."""
    build = write_build(tmp_path / "build", scored=False, n_eval=0)
    real = export_hub_folder(build, tmp_path / "hub")
    before = files(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(PublishError, match="symlink"):
        export_hub_folder(build, link)
    assert link.is_symlink() and files(real) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "hub", "link"]


def test_push_checks_before_touching_the_network(tmp_path):
    smoke = write_build(tmp_path / "smoke")  # scored by the tiny random-weight model
    with pytest.raises(PublishError, match="smoke-test model"):
        push(smoke, "org/name")

    def corrupt(split, rows):
        rows[0]["images"] = [{"bytes": b"", "path": None}]
        return rows

    bad = write_build(tmp_path / "bad", fingerprint=REAL_FINGERPRINT, edit=corrupt)
    with pytest.raises(PublishError, match="does not validate"):
        push(bad, "org/name")


def test_export_of_a_real_build(tmp_path):
    from mdpo_data.build.stage import run_build
    from mdpo_data.config.build import BuildConfig
    from mdpo_data.report.validate import validate

    build = tmp_path / "demo"
    run_build(BuildConfig(source="demo", n=12, eval_fraction=0.25, shard_size=5, seed=1), build,
              progress=False)
    write_card(build)
    assert validate(build) == []
    out = export_hub_folder(build, tmp_path / "hub")
    loaded = datasets.load_dataset(str(out))
    assert {split: len(ds) for split, ds in loaded.items()} == {"train": 9, "eval": 3}
    assert DatasetCard.load(out / "README.md").data.size_categories == ["n<1K"]


@pytest.mark.slow
def test_trl_dpo_trainer_takes_one_step_on_the_export(exported, tmp_path):
    trl = pytest.importorskip("trl")  # a dev dependency
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mdpo_data.demo.tiny import build_tiny_llava

    _, out = exported
    model_dir = build_tiny_llava(tmp_path / "tiny")
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    args = trl.DPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1,
                     max_length=256, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)
    train = datasets.load_dataset(str(out), split="train")  # what a Hub user would do
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    result = trainer.train()

    assert result.global_step == 1
    # policy == reference at step 0, so the DPO loss is exactly log 2 on real sequences
    assert result.training_loss == pytest.approx(math.log(2), abs=1e-4)
    logged = trainer.state.log_history[0]
    assert logged["logps/chosen"] < 0 and logged["logps/rejected"] < 0
