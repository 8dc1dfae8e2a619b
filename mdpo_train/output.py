"""The run folder (--output-dir) under the ownership rule every writing command follows
(mdpo_data.format.folder): it must be new, empty, or a previous mdpo-train output of ours
(marked by .mdpo-train.json, written before anything else); never a data folder or a Hub
export; and its bookkeeping (metrics.jsonl, train_config.yaml, checkpoints/, ...) is never
read, written or deleted through a symlink.
"""

from __future__ import annotations

import os
from pathlib import Path

from mdpo_data.format import folder
from mdpo_data.format.folder import TRAIN, FolderError, check_target, has_our_manifest, open_owned, write_owned
from mdpo_data.format.integrity import WEIGHTS_FILE, weights_listing
from mdpo_data.format.shards import SHARD_RE, umask_mode


SORTED_CONFIG_LISTS = ("target_modules", "modules_to_save", "exclude_modules", "trainable_token_indices")


def problems(output_dir: str | None, shards: str | None) -> list[str]:
    """Why `output_dir` cannot be this run's folder (empty list: it can). Creates nothing."""
    if output_dir is None:
        return []
    if not str(output_dir).strip():
        return ["--output-dir is empty: give a folder"]
    target = Path(output_dir)
    if shards and Path(shards).exists():  # a local data folder (or a file in it)
        data = Path(shards).resolve()
        data = data.parent if data.is_file() else data
        where = target.resolve()
        if where == data:
            return [f"--output-dir {output_dir} is the data folder itself: pick another folder"]
        if data in where.parents:  # a later build --overwrite or re-export would meet our files
            return [f"--output-dir {output_dir} is inside the data folder {shards}: pick a folder "
                    "outside it"]
    if target.is_dir() and (has_our_manifest(target) or any(SHARD_RE.match(p.name) for p in target.iterdir())):
        return [f"--output-dir {output_dir} holds mdpo-data shards or a manifest (a data folder): "
                "pick another folder"]
    try:
        check_target(target, "--output-dir", TRAIN)
    except FolderError as error:
        return [str(error)]
    return []


def claim(output_dir: str | Path) -> Path:
    """Create the run folder and mark it ours (the mark is written first)."""
    return folder.claim(output_dir, TRAIN)


def write_text(output_dir: str | Path, name: str, text: str) -> Path:
    """Atomically write a file of ours in the run folder, never through a symlink."""
    directory = Path(output_dir)
    return write_owned(directory, directory / name, text.encode("utf-8"))


def open_log(path: str | Path, mode: str):
    """Open a log in the run folder without following a symlink: "a" appends, "w" truncates."""
    return open_owned(Path(path).parent, path, mode)


def stable_adapter_config(folder: str | Path) -> None:
    """peft writes the sets of its config (target_modules, ...) in hash order, which changes
    with every process: sort them, so the same run gives the same adapter_config.json."""
    import json

    path = Path(folder) / "adapter_config.json"
    if not path.is_file() or path.is_symlink():
        return
    config = json.loads(path.read_text())
    for key, value in config.items():
        if key in SORTED_CONFIG_LISTS and isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[key] = sorted(value)
    write_owned(folder, path, json.dumps(config, indent=2, sort_keys=True).encode())


def list_weights(folder: str | Path) -> Path:
    """Write FOLDER/weights.sha256.json: the sha256 of every weight and config file saved."""
    folder = Path(folder)
    return write_owned(folder, folder / WEIGHTS_FILE, weights_listing(folder))


def share(output_dir: str | Path) -> None:
    """Give the run folder's top-level files the umask's mode (libraries that write through a
    temp file leave them 0600, unreadable by the team a shared umask allows)."""
    directory = Path(output_dir)
    for path in directory.iterdir():
        if TRAIN.owns(path.name) and path.is_file() and not path.is_symlink():
            os.chmod(path, umask_mode())
