"""VLFeedback (Silkie): 4 rated completions per prompt, turned into preference pairs.

Both published layouts are read: `vlfeedback_80k.jsonl` with `merged_images.zip` (or the
unpacked `merged_images/` folder), and parquet shards `data/train-*.parquet` with either an
embedded `image` column or an `img_path` column pointing into the same zip/folder.

A completion's score is the MEAN of its three aspect ratings (stored as strings; a
non-numeric or missing one excludes the completion, counted). Pairing rules:
  all          the default, as the dataset's authors pair it for DPO (Silkie): every pair of
               the four completions with different means; the paper samples its 10K from
               such pairs
  best-worst   one pair per prompt: best vs worst mean (the largest margin: easier pairs)
  best-random  best vs one random completion with a lower mean (per-row seed)
Equal means are ties and are dropped (counted). Ids are NOT unique in VLFeedback, so
nothing here is keyed by id: a candidate is identified by its stream row and pair tag.
"""

from __future__ import annotations

import json
import math
import random
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from mdpo_data.sources.records import BadRow, Candidate, ImageRef, Skip, safe_member_name
from mdpo_data.build.sampling import Ref
from mdpo_data.build.seeds import example_seed
from mdpo_data.sources import SourceError
from mdpo_data.sources import get as get_source
from mdpo_data.sources.hub import local_or_hub
from mdpo_data.sources.readers import (
    Record,
    as_records,
    columns_of,
    data_files,
    file_ref,
    is_embedded_image_type,
    iter_records,
    primed,
    records_at,
    strip_image_tag,
)

NAME = "silkie"
HUB_ID = "MMInstruction/VLFeedback"
HUB_PATTERNS = ["*.jsonl", "data/*.parquet", "merged_images.zip", "README.md"]
ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")
SUBSETS = get_source(NAME).subsets  # --subset name -> id prefix (the registry entry holds it)
_CITATION = re.compile(r"[ \t]*【\d+(?::\d+)?†[^】\n]{0,40}】")


# ---------------------------------------------------------------- pure helpers


def clean_response(text: str) -> str:
    """Strip GPT-4V citation artifacts like `【12†source】` and the spaces before them."""
    if "【" not in text:  # the common case: the regex scan costs more than json.loads
        return text.strip()
    return _CITATION.sub("", text).strip()


def parse_rating(value: Any, aspect: str) -> float:
    """A rating as a float; BadRow for missing or non-numeric values ("N/A", "", NaN)."""
    if isinstance(value, dict):
        value = value.get("Rating")
    if type(value) is str:  # the common case first: float() ignores surrounding spaces
        try:
            rating = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(rating):
                return rating
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow("missing_rating", f"{aspect} has no rating")
    if isinstance(value, bool):
        raise BadRow("non_numeric_rating", f"{aspect}={value!r}")
    try:
        rating = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise BadRow("non_numeric_rating", f"{aspect}={value!r}") from None
    if not math.isfinite(rating):
        raise BadRow("non_numeric_rating", f"{aspect}={value!r}")
    return rating


def aspect_ratings(annotations: Any) -> dict[str, float]:
    """The three aspect ratings of one completion (keys matched ignoring case and `_`)."""
    if isinstance(annotations, str):
        try:
            annotations = json.loads(annotations)
        except (json.JSONDecodeError, RecursionError):
            raise BadRow("malformed_record", "annotations is not JSON") from None
    if not isinstance(annotations, dict):
        raise BadRow("missing_rating", "no annotations")
    if len(annotations) == 3:  # the published keys, spelled exactly: no normalising needed
        try:
            a, b, c = ASPECTS
            values = (annotations[a], annotations[b], annotations[c])
        except KeyError:
            pass
        else:
            return {
                a: parse_rating(values[0], a),
                b: parse_rating(values[1], b),
                c: parse_rating(values[2], c),
            }
    by_key = {str(k).replace("_", " ").casefold(): v for k, v in annotations.items()}
    return {aspect: parse_rating(by_key.get(aspect.casefold()), aspect) for aspect in ASPECTS}


def choose_pairs(
    means: list[float], pairing: str, rng: random.Random | None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(pairs as (chosen, rejected) positions, ties dropped) for one prompt's mean scores."""
    if pairing == "all":
        pairs, ties = [], []
        for a in range(len(means)):
            for b in range(a + 1, len(means)):
                if means[a] == means[b]:
                    ties.append((a, b))
                else:
                    pairs.append((a, b) if means[a] > means[b] else (b, a))
        return pairs, ties
    best = max(range(len(means)), key=lambda k: (means[k], -k))  # first best on equal means
    lower = [k for k in range(len(means)) if means[k] < means[best]]
    if not lower:
        worst = max(k for k in range(len(means)) if k != best)
        return [], [(best, worst)]
    if pairing == "best-random":
        return [(best, rng.choice(lower))], []
    worst = min(lower, key=lambda k: (means[k], k))
    return [(best, worst)], []


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class _FolderImages:
    root: Path

    def ref(self, name: str) -> ImageRef:
        return file_ref(self.root, name)


class _ZipImages:
    """`merged_images.zip`: members `merged_images/<name>`; the member list is read once."""

    def __init__(self, path: Path):
        try:
            with zipfile.ZipFile(path) as archive:
                self.members = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as error:
            raise SourceError(f"silkie: cannot open image archive {path}: {error}") from None
        self.path = path
        self.prefix = (
            "merged_images/" if any(m.startswith("merged_images/") for m in self.members) else ""
        )

    def ref(self, name: str) -> ImageRef:
        member = self.prefix + name
        if not safe_member_name(member):
            raise BadRow("zip_member_escapes_target", repr(member))
        if member not in self.members:
            base = self.prefix + PurePosixPath(name).name
            if base not in self.members:
                raise BadRow("image_missing", f"{member} not in {self.path.name}")
            member = base
        return ImageRef("zip", root=str(self.path), path=member)


def _find_images(image_root: str | None, near: list[Path]) -> _FolderImages | _ZipImages | None:
    """The zip or folder of images: --image-root if given, else beside the data files."""
    if image_root is not None:
        root = Path(image_root).expanduser()
        if root.is_file():
            return _ZipImages(root)
        if not root.is_dir():
            raise SourceError(
                f"silkie: --image-root {image_root!r} is neither a folder nor a zip file"
            )
        near = [root]
    for folder in near:
        if (folder / "merged_images").is_dir():
            return _FolderImages(folder / "merged_images")
        if (folder / "merged_images.zip").is_file():
            return _ZipImages(folder / "merged_images.zip")
    return _FolderImages(Path(image_root).expanduser()) if image_root is not None else None


def _image_name(data: dict[str, Any], source_id: str) -> str:
    """`img_path` when the row has one (unique even where ids repeat), else `<id>.jpg`."""
    img_path = data.get("img_path")
    if isinstance(img_path, str) and img_path.strip():
        name = img_path.strip().replace("\\", "/")
        while name.startswith("./"):
            name = name[2:]
        return name.removeprefix("merged_images/")
    return f"{source_id}.jpg"


# ---------------------------------------------------------------- layout


@dataclass
class _Layout:
    files: list[Path]
    root: Path
    embedded: str | None  # parquet column holding image bytes
    images: _FolderImages | _ZipImages | None

    def image(self, record: Record, source_id: str) -> ImageRef:
        if self.embedded:
            return ImageRef(
                "parquet", root=str(record.file), path=self.embedded, index=record.index
            )
        assert self.images is not None
        return self.images.ref(_image_name(record.data or {}, source_id))


def _layout(path: str | None, image_root: str | None) -> _Layout:
    base = local_or_hub(path, default_repo=HUB_ID, allow_patterns=HUB_PATTERNS, source=NAME)
    if base.is_file():
        files, root = [base], base.parent
    else:
        files = data_files(base, (".parquet",)) or data_files(base, (".jsonl",))
        root = base
    if not files:
        raise SourceError(
            f"silkie: no data under {base}: expected vlfeedback_80k.jsonl (with merged_images.zip "
            "or merged_images/) or parquet shards data/train-*.parquet"
        )
    embedded = None
    if files[0].suffix == ".parquet":
        columns = columns_of(files[0])
        missing = [c for c in ("id", "prompt", "completions") if c not in columns]
        if missing:
            raise SourceError(
                f"silkie: {files[0]} lacks column(s) {', '.join(missing)} (columns found: "
                f"{', '.join(columns)}); is this VLFeedback?"
            )
        embedded = (
            "image"
            if is_embedded_image_type(columns.get("image")) in ("struct", "binary")
            else None
        )
        if embedded is None and "img_path" not in columns:
            raise SourceError(
                f"silkie: {files[0]} has no image column (columns found: {', '.join(columns)}); "
                "expected an embedded `image` column, or `img_path` with merged_images.zip"
            )
    near = list(dict.fromkeys([root, files[0].parent]))
    images = None if embedded else _find_images(image_root, near)
    if not embedded and images is None:
        raise SourceError(
            f"silkie: no images found for {files[0]}: expected merged_images.zip or a "
            "merged_images/ folder beside it; download it, or pass --image-root (folder or zip)"
        )
    return _Layout(files, root, embedded, images)


# ---------------------------------------------------------------- stream


def stream(
    *,
    path: str | None,
    seed: int,
    pairing: str,
    subset: str | None,
    id_prefix: str | None,
    image_root: str | None,
) -> Iterator[Candidate | Skip]:
    """Validate now, read lazily: SourceErrors surface before the first row is read."""
    prefixes = []
    if subset is not None:
        if subset not in SUBSETS:
            raise SourceError(
                f"silkie: unknown subset {subset!r}; choose one of {', '.join(SUBSETS)} "
                "or use --id-prefix"
            )
        prefixes.append(SUBSETS[subset])
    if id_prefix:
        prefixes.append(id_prefix)
    return _Stream(_layout(path, image_root), pairing, seed, prefixes)


class _Stream:
    """The Candidate | Skip stream, plus `refs()`/`materialize()` for planning: a plan scans
    every row but keeps only ids and row locations, then re-reads the rows it samples."""

    def __init__(self, layout: _Layout, pairing: str, seed: int, prefixes: list[str]):
        self.args = (layout, pairing, seed, prefixes)
        self.items = primed(_candidates(layout, pairing, seed, prefixes, _candidate))
        self.locations: dict[int, tuple] = {}

    def __iter__(self) -> Iterator[Candidate | Skip]:
        return self

    def __next__(self) -> Candidate | Skip:
        return next(self.items)

    def refs(self) -> Iterator[Ref | Skip]:
        """Every pair as a `Ref` (id, row, dedup bucket) or a Skip, in stream order."""
        for items in self.ref_rows():
            yield from items

    def ref_rows(self) -> Iterator[list[Ref | Skip]]:
        """`refs()` a row at a time: per row, its Refs and Skips in stream order."""
        for record in _records(self.args[0]):
            if record.data is None:
                yield [record.skip()]
                continue
            items = _row(record, *self.args, _ref)
            yield items
            if Ref in map(type, items):
                self.locations[record.row] = record.location

    def materialize(self, refs: list[Ref]) -> list[Candidate]:
        """The full Candidates of `refs` (in their order), from their rows read again."""
        rows = sorted({ref.row for ref in refs})
        layout = self.args[0]
        by_id = {}
        for record in records_at([self.locations[row] for row in rows], _image_column(layout)):
            for item in _row(record, *self.args, _candidate):
                if isinstance(item, Candidate):
                    by_id[item.example_id] = item
        missing = [ref.example_id for ref in refs if ref.example_id not in by_id]
        if missing:
            raise SourceError(f"silkie: {missing[0]} changed while planning; is the source being written?")
        return [by_id[ref.example_id] for ref in refs]


class _Scored(NamedTuple):
    index: int  # position among the row's completions
    mean: float
    ratings: tuple[float, ...]  # in ASPECTS order (`_candidate` makes the dict)
    model: str
    response: str


def _score(completions: list, models: Any, where: str, row: int) -> list[_Scored | Skip]:
    """Each completion scored by its mean rating, or a Skip saying why it cannot be compared."""
    models = models if isinstance(models, list) else []
    out: list[_Scored | Skip] = []
    for index, completion in enumerate(completions):
        ratings = None
        try:  # as published: inline, as a plan scores 320K completions; else _score_checked
            annotations, response = completion["annotations"], completion["response"]
            if type(completion) is dict and type(annotations) is dict and len(annotations) == 3:
                a = annotations[_HELP]["Rating"]
                b = annotations[_ETHICS]["Rating"]
                c = annotations[_FAITH]["Rating"]
                if type(a) is str and type(b) is str and type(c) is str and type(response) is str:
                    ratings = (float(a), float(b), float(c))
                    response = clean_response(response)
                    if not (response and all(map(_finite, ratings))):
                        ratings = None
        except (KeyError, TypeError, ValueError):
            ratings = None
        if ratings is None:
            try:
                ratings, response = _score_checked(completion)
            except BadRow as error:
                detail = f"completion {index}: {error.detail or error.reason}"
                out.append(Skip(error.reason, where, detail, row))
                continue
        model = completion.get("model") or (models[index] if index < len(models) else "")
        out.append(_new(_Scored, (index, sum(ratings) / 3, ratings, str(model), response)))
    return out


_finite = math.isfinite
_HELP, _ETHICS, _FAITH = ASPECTS
_new = tuple.__new__  # a NamedTuple without its Python-level __new__: half the cost


def _score_checked(completion: Any) -> tuple[tuple[float, ...], str]:
    """(ratings, cleaned response) of any completion, or BadRow saying why it cannot be compared."""
    if not isinstance(completion, dict):
        raise BadRow("malformed_record", "completion is not an object")
    ratings = tuple(aspect_ratings(completion.get("annotations")).values())
    response = completion.get("response") or ""
    if not isinstance(response, str):
        raise BadRow("malformed_record", "response is not a string")
    response = clean_response(response)
    if not response:
        raise BadRow("empty_response", "empty after cleaning")
    return ratings, response


def _image_column(layout: _Layout) -> list[str]:
    return [layout.embedded] if layout.embedded else []


def _records(layout: _Layout) -> Iterator[Record]:
    return iter_records(layout.files, layout.root, skip_columns=_image_column(layout))


def _candidates(
    layout: _Layout, pairing: str, seed: int, prefixes: list[str], make: Callable
) -> Iterator[Candidate | Skip]:
    for record in _records(layout):
        if record.data is None:
            yield record.skip()
        else:
            yield from _row(record, layout, pairing, seed, prefixes, make)


def _row(
    record: Record, layout: _Layout, pairing: str, seed: int, prefixes: list[str], make: Callable
) -> list[Any]:
    """One row's pairs and its Skips, in stream order; `make(record, source_id, image,
    question, pairing)` returns the function that makes pairs (Candidates, or planning Refs)
    from the scored completions and (chosen, rejected) positions among them."""
    data, where, row = record.data or {}, record.where, record.row
    for name in ("id", "prompt", "completions"):
        if data.get(name) in (None, "", []):
            return [Skip("missing_field", where, name, row)]
    source_id = str(data["id"])
    if prefixes and not all(source_id.startswith(prefix) for prefix in prefixes):
        return [Skip("not_in_subset", where, source_id, row)]
    try:
        completions, prompt = as_records(data["completions"]), data["prompt"]
    except BadRow as error:
        return [Skip(error.reason, where, error.detail, row)]
    if not isinstance(completions, list) or not isinstance(prompt, str):
        detail = "completions must be a list and prompt a string"
        return [Skip("malformed_record", where, detail, row)]
    question = strip_image_tag(prompt)
    if not question:
        return [Skip("empty_question", where, source_id, row)]
    try:
        image = layout.image(record, source_id)
    except BadRow as error:
        return [Skip(error.reason, where, error.detail, row)]

    out = _score(completions, data.get("models"), where, row)
    scored = [item for item in out if type(item) is _Scored]
    if len(scored) < len(out):
        out = [item for item in out if type(item) is Skip]
    else:
        out = []
    if len(scored) < 2:
        detail = f"{len(scored)} usable of {len(completions)}"
        out.append(Skip("too_few_completions", where, detail, row))
        return out

    rng = (  # seeding a Random costs more than the rest of the row: only where it is used
        random.Random(example_seed(seed, f"{NAME}-{record.row:08d}", pairing))
        if pairing == "best-random"
        else None
    )
    pairs, ties = choose_pairs([s.mean for s in scored], pairing, rng)
    for a, b in ties:
        detail = f"completions {scored[a].index} and {scored[b].index}: mean {scored[a].mean:.3g}"
        out.append(Skip("rating_tie", where, detail, row))
    make_pairs = make(record, source_id, image, question, pairing)
    if len({s.response for s in scored}) == len(scored):  # no pair of identical responses
        out.extend(make_pairs(scored, pairs))  # the common case: one call per row
        return out
    for win, lose in pairs:
        chosen, rejected = scored[win], scored[lose]
        if chosen.response == rejected.response:
            out.append(Skip("identical_responses", where, _TAGS[chosen.index, rejected.index], row))
        else:
            out.extend(make_pairs(scored, [(win, lose)]))
    return out


class _Tags(dict):
    """Pair tags "2>0", each made once (a plan tags ~430K pairs of four completions)."""

    def __missing__(self, key: tuple[int, int]) -> str:
        self[key] = tag = f"{key[0]}>{key[1]}"
        return tag


_TAGS = _Tags()


def _candidate(
    record: Record, source_id: str, image: ImageRef, question: str, pairing: str
) -> Callable[[list[_Scored], list[tuple[int, int]]], list[Candidate]]:
    def make(chosen: _Scored, rejected: _Scored) -> Candidate:
        meta = {
            "pairing": pairing,
            "chosen_model": chosen.model,
            "rejected_model": rejected.model,
            "chosen_ratings": dict(zip(ASPECTS, chosen.ratings)),
            "rejected_ratings": dict(zip(ASPECTS, rejected.ratings)),
            "chosen_mean": chosen.mean,
            "rejected_mean": rejected.mean,
        }
        tag = _TAGS[chosen.index, rejected.index]
        return Candidate(
            NAME, record.row, source_id, image, question, chosen.response, rejected.response, tag, meta
        )

    return lambda scored, pairs: [make(scored[win], scored[lose]) for win, lose in pairs]


def _ref(
    record: Record, source_id: str, image: ImageRef, question: str, pairing: str
) -> Callable[[list[_Scored], list[tuple[int, int]]], list[Ref]]:
    """What a plan keeps of a pair: its id, its row, and a bucket equal for duplicates."""
    key, row, prefix = image.key, record.row, f"{NAME}-{record.row:08d}-"

    def make(scored: list[_Scored], pairs: list[tuple[int, int]]) -> list[Ref]:
        out = []
        for win, lose in pairs:
            chosen, rejected = scored[win], scored[lose]
            bucket = hash((key, question, chosen.response, rejected.response))
            out.append(_new(Ref, (prefix + _TAGS[chosen.index, rejected.index], row, bucket)))
        return out

    return make
