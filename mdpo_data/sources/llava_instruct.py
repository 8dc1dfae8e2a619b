"""LLaVA-Instruct-150K: (image, question, gold answer) with no rejected answer.

The json is one ARRAY of `{"id", "image", "conversations": [{"from": "human"|"gpt",
"value"}, ...]}`; the COCO train2017 images are not shipped with it, so `--image-root` is
required. Each record gives one candidate from its first human turn and the gpt answer
that follows; `rejected` is None, to be bootstrapped later (BPO).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mdpo_data.sources.records import BadRow, Candidate, Skip
from mdpo_data.sources import SourceError
from mdpo_data.sources.hub import local_or_hub
from mdpo_data.sources.readers import Record, file_ref, iter_records, primed, strip_image_tag

NAME = "llava-instruct"
HUB_ID = "liuhaotian/LLaVA-Instruct-150K"
DEFAULT_FILE = "llava_instruct_150k.json"


def first_exchange(conversations: Any) -> tuple[str, str]:
    """(question, answer) of the first human turn and the gpt turn right after it."""
    if not isinstance(conversations, list):
        raise BadRow("malformed_record", "conversations is not a list")
    for position, turn in enumerate(conversations):
        if isinstance(turn, dict) and turn.get("from") == "human":
            reply = conversations[position + 1] if position + 1 < len(conversations) else None
            if not isinstance(reply, dict) or reply.get("from") != "gpt":
                raise BadRow("missing_field", "no gpt answer after the first human turn")
            question, answer = turn.get("value"), reply.get("value")
            if not isinstance(question, str) or not isinstance(answer, str):
                raise BadRow("malformed_record", "turn value is not a string")
            return strip_image_tag(question), answer.strip()
    raise BadRow("missing_field", "no human turn")


def _json_file(path: str | None) -> Path:
    local = local_or_hub(path, default_repo=HUB_ID, allow_patterns=[DEFAULT_FILE], source=NAME)
    if local.is_file():
        return local
    if (local / DEFAULT_FILE).is_file():
        return local / DEFAULT_FILE
    found = sorted(local.glob("*.json"))
    if len(found) == 1:
        return found[0]
    names = ", ".join(p.name for p in found) or "none"
    raise SourceError(
        f"llava-instruct: no {DEFAULT_FILE} in {local} (json files: {names}); "
        "pass the file itself with --source-path"
    )


def stream(*, path: str | None, image_root: str | None) -> Iterator[Candidate | Skip]:
    if image_root is None:
        raise SourceError(
            "llava-instruct needs --image-root: the folder of COCO train2017 images "
            "(e.g. .../coco/train2017) named by each record's `image` field"
        )
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise SourceError(f"llava-instruct: --image-root {image_root!r} is not a folder")
    file = _json_file(path)
    return primed(_candidates(file, root.resolve()))


def _candidates(file: Path, root: Path) -> Iterator[Candidate | Skip]:
    for record in iter_records([file], file.parent):
        if record.data is None:
            yield record.skip()
            continue
        try:
            yield _candidate(record, root)
        except BadRow as error:
            yield Skip(error.reason, record.where, error.detail)


def _candidate(record: Record, root: Path) -> Candidate:
    data = record.data or {}
    image = data.get("image")
    if not isinstance(image, str) or not image.strip():
        raise BadRow("missing_field", "image")
    question, answer = first_exchange(data.get("conversations"))
    if not question:
        raise BadRow("empty_question", "")
    if not answer:
        raise BadRow("empty_response", "")
    ref = file_ref(root, image.strip())
    source_id = str(data.get("id", Path(image).stem))
    return Candidate(
        NAME, record.row, source_id, ref, question, answer, None, "0", {"image": image}
    )
