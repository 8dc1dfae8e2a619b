"""The shard contract: the one place that says what a row of an mdpo-data shard holds.

Every row is a valid TRL vision preference row (`images`, `prompt`, `chosen`, `rejected` in
the conversational format) plus MDPO columns that TRL ignores: the rejected image m_l, the
reference log-probs and provenance. Readers and writers import the names from here.
"""

from __future__ import annotations

import json
from typing import Any

import datasets
import pyarrow as pa

# "MAJOR.MINOR": bump MAJOR when a column is added, removed or changes meaning (readers refuse
# another major); bump MINOR when the manifest only gains fields (older readers still read it).
FORMAT_VERSION = "1.1"

SPLITS = ("train", "eval")

# Reference columns: filled by the score stage, null until then.
REF_CHOSEN = "ref_chosen_logps"  # log pi_ref(y_w | m_w, q)   (TRL's historic name)
REF_REJECTED = "ref_rejected_logps"  # log pi_ref(y_l | m_w, q)   (TRL's historic name)
REF_CHOSEN_REJECTED_IMAGE = "ref_chosen_rejected_image_logps"  # log pi_ref(y_w | m_l, q)
REF_CHOSEN_NO_IMAGE = "ref_chosen_noimage_logps"  # log pi_ref(y_w | q), optional diagnostic
REF_REJECTED_NO_IMAGE = "ref_rejected_noimage_logps"  # log pi_ref(y_l | q), optional diagnostic
CHOSEN_TOKENS = "chosen_tokens"  # response tokens of y_w scored
REJECTED_TOKENS = "rejected_tokens"  # response tokens of y_l scored

REF_LOGP_COLUMNS = (REF_CHOSEN, REF_REJECTED, REF_CHOSEN_REJECTED_IMAGE)
NO_IMAGE_COLUMNS = (REF_CHOSEN_NO_IMAGE, REF_REJECTED_NO_IMAGE)
TOKEN_COLUMNS = (CHOSEN_TOKENS, REJECTED_TOKENS)
REFERENCE_COLUMNS = REF_LOGP_COLUMNS + NO_IMAGE_COLUMNS + TOKEN_COLUMNS

_message = {
    "role": datasets.Value("string"),
    "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
}

FEATURES = datasets.Features(
    {
        # provenance
        "example_id": datasets.Value("string"),  # unique within a build
        "source": datasets.Value("string"),
        "source_id": datasets.Value("string"),  # the source's own id: NOT unique (VLFeedback)
        "source_row": datasets.Value("int64"),  # position in the source stream
        "seed": datasets.Value("int64"),  # per-example seed that drew m_l (and y_l if bootstrapped)
        "rejected_image_strategy": datasets.Value("string"),  # e.g. "crop:0.01-0.2"
        "rejected_response_strategy": datasets.Value("string"),  # "source" or e.g. "weaken:900"
        "metadata": datasets.Value("string"),  # JSON: ratings, models, ... to audit the pair
        # TRL vision preference row
        "images": datasets.List(datasets.Image()),
        "prompt": datasets.List(_message),
        "chosen": datasets.List(_message),
        "rejected": datasets.List(_message),
        # MDPO
        "rejected_images": datasets.List(datasets.Image()),
        REF_CHOSEN: datasets.Value("float64"),
        REF_REJECTED: datasets.Value("float64"),
        REF_CHOSEN_REJECTED_IMAGE: datasets.Value("float64"),
        REF_CHOSEN_NO_IMAGE: datasets.Value("float64"),
        REF_REJECTED_NO_IMAGE: datasets.Value("float64"),
        CHOSEN_TOKENS: datasets.Value("int32"),
        REJECTED_TOKENS: datasets.Value("int32"),
    }
)

COLUMNS = tuple(FEATURES)


def arrow_schema() -> pa.Schema:
    """Arrow schema with the `huggingface` metadata, so `datasets` sees real Image features."""
    return FEATURES.arrow_schema


def prompt_messages(question: str, system: str | None = None) -> list[dict[str, Any]]:
    """TRL conversational prompt: the system message if any, then one user turn holding the
    image then the question."""
    messages = [] if system is None else [system_message(system)]
    return messages + [
        {
            "role": "user",
            "content": [{"type": "image", "text": None}, {"type": "text", "text": question}],
        }
    ]


def system_message(text: str) -> dict[str, Any]:
    return {"role": "system", "content": [{"type": "text", "text": text}]}


def response_messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _texts(messages: list[dict[str, Any]], roles: tuple[str, ...] | None = None) -> str:
    return "".join(
        block["text"] or ""
        for message in messages
        if roles is None or message["role"] in roles
        for block in message["content"]
        if block["type"] == "text"
    )


def question_of(prompt: list[dict[str, Any]]) -> str:
    """The question text of a stored prompt (its user turn; inverse of `prompt_messages`)."""
    return _texts(prompt, ("user",))


def system_of(prompt: list[dict[str, Any]]) -> str | None:
    """The system message of a stored prompt, or None when it has none."""
    if not any(message["role"] == "system" for message in prompt):
        return None
    return _texts(prompt, ("system",))


def text_of(messages: list[dict[str, Any]]) -> str:
    """The response text of a stored `chosen`/`rejected` column."""
    return _texts(messages)


def image_bytes(images: list[dict[str, Any]]) -> bytes:
    """The exact stored bytes of a one-image `images`/`rejected_images` cell (undecoded)."""
    if len(images) != 1:
        raise ValueError(f"expected exactly one image per cell, got {len(images)}")
    return images[0]["bytes"]


def make_row(
    *,
    example_id: str,
    source: str,
    source_id: str,
    source_row: int,
    seed: int,
    question: str,
    chosen: str,
    rejected: str,
    image: bytes,
    rejected_image: bytes,
    rejected_image_strategy: str,
    rejected_response_strategy: str = "source",
    metadata: dict[str, Any] | None = None,
    system: str | None = None,
) -> dict[str, Any]:
    """One shard row in storage form (images as raw bytes, reference columns null)."""
    row = {
        "example_id": example_id,
        "source": source,
        "source_id": source_id,
        "source_row": source_row,
        "seed": seed,
        "rejected_image_strategy": rejected_image_strategy,
        "rejected_response_strategy": rejected_response_strategy,
        "metadata": json.dumps(metadata or {}, sort_keys=True, ensure_ascii=False),
        "images": [{"bytes": image, "path": None}],
        "prompt": prompt_messages(question, system),
        "chosen": response_messages(chosen),
        "rejected": response_messages(rejected),
        "rejected_images": [{"bytes": rejected_image, "path": None}],
    }
    for name in REFERENCE_COLUMNS:
        row[name] = None
    return row


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows in storage form -> an Arrow table with the contract's exact schema."""
    schema = arrow_schema()
    return pa.Table.from_pylist(rows, schema=schema)
