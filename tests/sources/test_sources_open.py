"""open_source: dispatch, option validation, license/citation tables, Hub errors, readers."""

from __future__ import annotations

import warnings

import pytest
from fixtures import jpeg_bytes

from mdpo_data.sources.records import BadRow, Skip
from mdpo_data.sources import CITATIONS, LICENSES, SOURCE_NAMES, SourceError, open_source
from mdpo_data.sources.hub import looks_like_repo_id
from mdpo_data.sources.readers import data_files, file_ref, iter_records


def test_tables_cover_every_source():
    assert set(LICENSES) == set(CITATIONS) == set(SOURCE_NAMES)
    assert LICENSES == {
        "silkie": "unspecified",
        "llava-instruct": "cc-by-4.0",
        "pairs": "unspecified",
        "demo": "apache-2.0",
    }
    assert (
        "Silkie" in CITATIONS["silkie"]
        and "Visual Instruction Tuning" in CITATIONS["llava-instruct"]
    )


def test_unknown_source_and_pairing_name_the_choices():
    with pytest.raises(
        SourceError,
        match="unknown source 'silky'; choose one of silkie, llava-instruct, pairs, demo",
    ):
        open_source("silky")
    with pytest.raises(
        SourceError, match="unknown pairing 'best'; choose one of best-worst, all, best-random"
    ):
        open_source("demo", pairing="best")


def test_the_build_seed_never_warns_but_ignored_options_do():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_source("demo", seed=5, demo_size=2)
    with pytest.warns(UserWarning, match="'demo' ignores option.*subset"):
        open_source("demo", subset="llava", demo_size=2)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """The Hub client in offline mode with an empty cache: any download must fail cleanly."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.mark.parametrize(
    "name, options, repo",
    [
        ("silkie", {}, "MMInstruction/VLFeedback"),
        ("llava-instruct", {"image_root": "."}, "liuhaotian/LLaVA-Instruct-150K"),
        ("pairs", {"path": "fwnlp/mDPO-preference-data"}, "fwnlp/mDPO-preference-data"),
    ],
)
def test_hub_download_failures_are_source_errors_with_the_fix(offline_hub, name, options, repo):
    with pytest.raises(SourceError) as error:
        open_source(name, **options)
    message = str(error.value)
    assert f"could not download dataset '{repo}'" in message and "--source-path" in message


def test_repo_ids_are_told_apart_from_local_paths(tmp_path, monkeypatch):
    assert looks_like_repo_id("MMInstruction/VLFeedback")
    assert not looks_like_repo_id("./data/x.json") and not looks_like_repo_id("a/b/c")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not looks_like_repo_id("org/name")  # an existing local folder wins


def test_json_named_files_holding_json_lines_are_read_line_by_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    records = list(iter_records([path], tmp_path))
    assert [r.row for r in records] == [0, 1, 2]
    assert [r.where for r in records] == ["d.json:1", "d.json:3", "d.json:4"]
    assert records[1].data is None and records[1].skip() == Skip(
        "malformed_json", "d.json:3", records[1].detail
    )


def test_data_files_are_sorted_and_skip_metadata_and_hidden_folders(tmp_path):
    for name in (
        "b.jsonl",
        "a.parquet",
        "dataset_info.json",
        ".cache/x.json",
        "sub/c.json",
        "img.jpg",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("[]")
    assert [p.relative_to(tmp_path).as_posix() for p in data_files(tmp_path)] == [
        "a.parquet",
        "b.jsonl",
        "sub/c.json",
    ]


def test_file_ref_refuses_escapes_before_any_fallback(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "x.jpg").write_bytes(jpeg_bytes(0))
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes(1))
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    assert file_ref(root, "sub/x.jpg").path == "x.jpg"  # bare-name fallback inside the root
    for bad in ("../outside.jpg", "../x.jpg", str(tmp_path / "outside.jpg"), "sub/../../x.jpg"):
        with pytest.raises(BadRow, match="image_path_escapes_root"):
            file_ref(root, bad)  # lexically, while planning
    link = file_ref(root, "link.jpg")  # a symlink out: planning does not resolve it ...
    with pytest.raises(BadRow, match="image_path_escapes_root"):
        link.load()  # ... loading does, exactly, and refuses it
    with pytest.raises(BadRow, match="image_missing"):
        file_ref(root, "nothing.jpg")
