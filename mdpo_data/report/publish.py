"""Publish a build to the Hugging Face Hub in the layout `push_to_hub` writes.

The export is a plain folder: `data/{split}-{i:05d}-of-{n:05d}.parquet` (one parquet file per
Arrow shard, images embedded as struct<bytes, path>, the contract's features in the parquet
metadata), `README.md` (the card, with `configs` and `dataset_info` merged into its YAML the
way `datasets` does it) and `manifest.json`. `push` uploads exactly what `export_hub_folder`
writes, so `--dry-run OUT` shows the upload byte for byte (except that a push also keeps the
YAML keys of the card already on the Hub that this card does not set).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import datasets
import yaml

from mdpo_data.format import schema
from mdpo_data.report.card import hub_data_files, is_smoke_test, render_card
from mdpo_data.format.integrity import export_files
from mdpo_data.format.manifest import MANIFEST_NAME, load_manifest
from mdpo_data.format.manifest import dumps as manifest_bytes
from mdpo_data.format.folder import EXPORT, EXPORT_SHARD_RE, FolderError, check_target, user_edited
from mdpo_data.format.shards import shard_files, umask_mode
from mdpo_data.report.validate import validate

DATA_DIR = "data"
CARD_NAME = "README.md"
CONFIG_NAME = "default"
_PER_CONFIG = ("configs", "dataset_info")  # front matter lists keyed by config name
SHOWN_PROBLEMS = 20  # validation problems quoted in the error that refuses an export


class PublishError(ValueError):
    """The build cannot be exported or pushed as it is; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Card YAML
# ---------------------------------------------------------------------------------------------


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(YAML front matter as a dict, markdown body) of a README; ({}, text) without one."""
    from huggingface_hub import DatasetCard

    card = DatasetCard(text, ignore_metadata_errors=True)
    return card.data.to_dict(), card.text


def merge_card_data(ours: dict[str, Any], bases: list[dict[str, Any]], splits: list[str],
                    info: datasets.DatasetInfo) -> dict[str, Any]:
    """Front matter for the Hub: `bases` (existing cards, oldest first) < `ours`.

    Keys an existing card sets and ours does not (a `language` added by hand) are kept; ours
    win otherwise. `configs` and `dataset_info` are lists keyed by config name: entries of
    other configs survive, and ours for "default" are written by `datasets`' own code (as
    `push_to_hub` does).
    """
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    merged: dict[str, Any] = {}
    for layer in [*bases, ours]:
        merged.update({k: v for k, v in layer.items() if k not in _PER_CONFIG})
    for key in _PER_CONFIG:
        entries = {}
        for base in bases:
            value = base.get(key)
            for entry in [value] if isinstance(value, dict) else value if isinstance(value, list) else []:
                if isinstance(entry, dict):
                    entries[entry.get("config_name", CONFIG_NAME)] = entry
        if entries:
            merged[key] = list(entries.values())
    data = DatasetCardData(**merged)
    configs = MetadataConfigs(
        {c["config_name"]: {"data_files": c["data_files"]} for c in hub_data_files(splits)}
    )
    try:
        configs.to_dataset_card_data(data)
    except ValueError:  # an existing card's `configs` is malformed: replace it
        data.pop(MetadataConfigs.FIELD_NAME, None)
        configs.to_dataset_card_data(data)
    DatasetInfosDict({CONFIG_NAME: info}).to_dataset_card_data(data)
    return data.to_dict()


def card_text(front: dict[str, Any], body: str) -> str:
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100) + "---\n" + body


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _write_parquet(directory: Path, data_dir: Path) -> datasets.DatasetInfo:
    """One parquet file per Arrow shard, written by `datasets` itself (as `push_to_hub` does)."""
    data_dir.mkdir(parents=True)
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one bar per shard would bury the command's output
    try:
        return _shards_to_parquet(directory, data_dir)
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _shards_to_parquet(directory: Path, data_dir: Path) -> datasets.DatasetInfo:
    from datasets.arrow_writer import (
        get_writer_batch_size_from_data_size,
        get_writer_batch_size_from_features,
    )

    splits = datasets.SplitDict()
    download_size = dataset_size = 0
    for split in schema.SPLITS:
        files = shard_files(directory, split)
        if not files:
            continue
        rows = nbytes = 0
        for index, file in enumerate(files):
            shard = datasets.Dataset.from_file(str(file))
            batch = get_writer_batch_size_from_features(shard.features) or \
                get_writer_batch_size_from_data_size(len(shard), shard.data.nbytes)
            target = data_dir / f"{split}-{index:05d}-of-{len(files):05d}.parquet"
            shard.to_parquet(str(target), batch_size=batch)
            rows += len(shard)
            nbytes += shard.data.nbytes
            download_size += target.stat().st_size
        splits.add(datasets.SplitInfo(name=split, num_bytes=nbytes, num_examples=rows))
        dataset_size += nbytes
    return datasets.DatasetInfo(
        features=schema.FEATURES, splits=splits, download_size=download_size,
        dataset_size=dataset_size, config_name=CONFIG_NAME,
    )




def _foreign_files(target: Path) -> list[str]:
    """Entries of an old export that `export_hub_folder` did not write (relative names)."""
    found = []
    for entry in sorted(target.iterdir()):
        if entry.name in (CARD_NAME, MANIFEST_NAME) and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name == DATA_DIR and entry.is_dir() and not entry.is_symlink():
            found += [f"{DATA_DIR}/{p.name}" for p in sorted(entry.iterdir())
                      if not (EXPORT_SHARD_RE.match(p.name) and p.is_file() and not p.is_symlink())]
            continue
        found.append(entry.name)
    return found


def _check_out(directory: Path, out: Path) -> None:
    """Refuse an `out` that is a symlink, inside or above the build, or a non-empty folder that
    is not exactly an old export of ours (our manifest.json, README.md and data/*.parquet,
    nothing else)."""
    if out.is_symlink():  # the swap renames OUT: it would delete the export through the link
        raise PublishError(f"--dry-run folder {out} is a symlink; an export is swapped in by "
                           f"renaming the folder: give the folder itself ({out.resolve()})")
    source, target = directory.resolve(), out.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:  # replacing it would move the shell's folder
        raise PublishError(f"--dry-run folder {out} is the current folder or holds it: give a "
                           "new or export folder elsewhere (e.g. --dry-run ../export)")
    if target == source or target in source.parents:
        raise PublishError(f"--dry-run folder {out} would replace the build folder {directory}: pick another")
    if source in target.parents:
        raise PublishError(f"--dry-run folder {out} is inside the build folder {directory}: pick "
                           "a folder outside it")
    try:
        check_target(out, "--dry-run folder", EXPORT)
    except FolderError as error:
        raise PublishError(str(error)) from None
    if target.is_dir() and any(target.iterdir()):
        extra = _foreign_files(target)
        if extra:
            raise PublishError(f"{out} holds files that are not part of a Hub export "
                               f"({', '.join(extra[:5])}); pick an empty or new folder")


def _refuse_invalid(directory: Path) -> None:
    problems = validate(directory)
    if problems:
        shown = "\n  - ".join(problems[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise PublishError(f"{directory} does not validate ({len(problems)} problem(s)); fix or "
                           f"rebuild it first:\n  - {shown}{more}")


def export_hub_folder(directory: str | Path, out: str | Path, *, base_card: str | None = None,
                      check: bool = True) -> Path:
    """Write the exact folder `push` uploads into `out` (replaced atomically); returns it.

    `base_card`: text of a README already on the Hub, whose YAML keys this card does not set
    are kept. `check=False` skips `validate` (push has already run it).
    """
    if not str(out).strip():  # `--dry-run "$UNSET"`: an error, never the working folder
        raise PublishError("--dry-run is empty: give the folder to write the export into")
    directory, out = Path(directory), Path(os.path.abspath(out))  # "x" and "./x" have a parent
    manifest = load_manifest(directory)  # a clear error when this is not a build folder
    if check:
        _refuse_invalid(directory)
    _check_out(directory, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(staging, umask_mode(0o777))  # mkdtemp makes 0700: a shared export must be readable
    try:
        info = _write_parquet(directory, staging / DATA_DIR)
        ours, body = split_front_matter(render_card(directory))
        local = _local_card(directory)
        bases = [_existing_front_matter(text, where) for text, where in
                 ((base_card, "the Hub's README.md"), (local, str(directory / CARD_NAME)))
                 if text]
        if local and user_edited(directory, CARD_NAME):  # the user's own text goes up, not ours
            body = split_front_matter(local)[1]
        front = merge_card_data(ours, bases, list(info.splits), info)
        (staging / CARD_NAME).write_text(card_text(front, body), encoding="utf-8")
        # The build's manifest plus the export's own files and hashes (checked on every read)
        exported = dataclasses.replace(manifest, export=export_files(staging))
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes(exported))
        if out.exists():
            _replace(out, staging)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # ours: a unique name mkdtemp made
    return out


def _replace(out: Path, staging: Path) -> None:
    """Swap a finished export in for an old one (checked to hold only our files). The old one
    moves into a fresh, uniquely named folder next to it, and only the names an export holds
    are removed from there: nothing we did not create is ever deleted."""
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    old = holder / "export"
    out.rename(old)
    staging.rename(out)
    data = old / DATA_DIR
    for path in sorted(data.iterdir()) if data.is_dir() and not data.is_symlink() else []:
        if EXPORT_SHARD_RE.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()
    for name in (CARD_NAME, MANIFEST_NAME):
        (old / name).unlink(missing_ok=True)
    for path in (data, old, holder):
        try:
            path.rmdir()
        except OSError:
            if path.exists():
                warnings.warn(f"left {path}: it holds files an export does not write", stacklevel=3)
                return


def _existing_front_matter(text: str, where: str) -> dict[str, Any]:
    """The YAML of an existing card; a broken one is replaced (with a warning), not fatal."""
    try:
        return split_front_matter(text)[0]
    except (yaml.YAMLError, ValueError) as error:
        warnings.warn(f"ignoring the YAML front matter of {where}: {error}", stacklevel=3)
        return {}


def _local_card(directory: Path) -> str | None:
    """DIR/README.md, whose hand-added YAML keys are kept (and its text, when edited by hand)."""
    path = directory / CARD_NAME
    return path.read_text(encoding="utf-8") if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# Push
# ---------------------------------------------------------------------------------------------


def _hub_card(api, repo: str) -> str | None:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = api.hf_hub_download(repo, CARD_NAME, repo_type="dataset")
    except EntryNotFoundError:
        return None
    return Path(path).read_text(encoding="utf-8")


def push(directory: str | Path, repo: str, *, private: bool = False, token: str | None = None,
         allow_smoke_test: bool = False) -> str:
    """Validate, export to a temp folder and upload it as the dataset repo `repo`; returns its URL.

    Old `data/*.parquet` files on the Hub are deleted in the same commit, so a rebuild with
    fewer shards leaves no stale shard behind. Data scored by a smoke-test model (random
    weights) is refused unless `allow_smoke_test`.
    """
    from huggingface_hub import HfApi

    directory = Path(directory)
    manifest = load_manifest(directory)
    if manifest.fingerprint and is_smoke_test(manifest.fingerprint.as_dict()) and not allow_smoke_test:
        raise PublishError(f"{directory} was scored with a smoke-test model (random weights): its "
                           "reference log-probs are meaningless; re-score it with a real model")
    _refuse_invalid(directory)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mdpo-push-") as tmp:
        try:
            url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            base_card = _hub_card(api, repo)
        except Exception as error:  # offline, no token, no permission: one line, not a traceback
            raise PublishError(f"cannot reach the Hub repo {repo}: {_one_line(error)}") from None
        folder = export_hub_folder(directory, Path(tmp) / "export", base_card=base_card, check=False)
        rows = sum(manifest.counts.written_by_split.values())
        try:
            api.upload_folder(
                repo_id=repo, repo_type="dataset", folder_path=folder,
                commit_message=f"Upload MDPO preference data ({rows} rows) with mdpo-data",
                delete_patterns=[f"{DATA_DIR}/*.parquet"],
            )
        except Exception as error:
            raise PublishError(f"upload to {repo} failed: {_one_line(error)}") from None
    return str(url)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"
