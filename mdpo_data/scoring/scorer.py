"""The scorer engine: rows of a shard -> reference log-probs, through `mdpo_data.scoring.logprobs`.

`Scorer` batches prefix groups by length and reuses a shared prefix when that is exact (checked
against the plain forward on the first batch); `score_table` fills a table's reference columns
(`mdpo_data.format.schema`) one window of rows at a time. No files, markers or manifest here: that is
the score stage (`mdpo_data.scoring.stage`).
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from mdpo_data.format import schema
from mdpo_data.scoring.logprobs import (
    PrefixGroup,
    PrefixReuseError,
    encode,
    prefix_reuse_support,
    response_logps,
    row_sequences,
)
from mdpo_data.scoring.packing import prefix_response_logps

_INPUT_COLUMNS = ["example_id", "images", "rejected_images", "prompt", "chosen", "rejected"]
_WINDOW_ROWS = 512  # rows bucketed together; bounds memory to one window of decoded images


class ScoreError(ValueError):
    pass


Item = tuple[PrefixGroup, list[tuple[int, str]]]  # a prefix group and the cell each response fills


def auto_batch_size(model, max_length: int | None) -> int:
    """Sequences per forward: 8 on CPU; on a GPU a rough guess from the device's memory.

    Per sequence of L tokens (L = max_length, at most 2048) it budgets ~16 hidden-size
    vectors per token per layer (KV cache and temporaries) plus the logits of L/2 response
    positions, and spends half of (total memory - the model's weights); pass batch_size when
    the guess OOMs. Not the *free* memory: that moves with other processes, and the batch
    composition changes bf16 sums (~1e-3), so the same config must get the same batch size.
    """
    import torch

    device = model.device
    if device.type != "cuda":
        return 8
    total = torch.cuda.get_device_properties(device).total_memory
    free = total - sum(p.numel() * p.element_size() for p in model.parameters())
    config = getattr(model.config, "text_config", None) or model.config
    itemsize = model.dtype.itemsize
    tokens = min(max_length or 2048, 2048)
    per_sequence = tokens * 16 * config.hidden_size * config.num_hidden_layers * itemsize
    per_sequence += (tokens // 2) * config.vocab_size * itemsize
    return int(max(1, min(64, (free // 2) // per_sequence)))


def _tolerance_ok(fast: float, plain: float, tokens: int, dtype) -> bool:
    import torch

    per_token = 1e-4 if dtype == torch.float32 else 2e-2
    return abs(fast - plain) <= 1e-3 + per_token * tokens


class Scorer:
    """Scores prefix groups in length-bucketed batches, reusing shared prefixes when exact.

    `bucket=False, prefix_reuse="off"` is the naive baseline (arrival order, every sequence
    padded to its batch's longest and run on its own full prefix) the benchmark compares.
    """

    def __init__(self, model, processor, *, batch_size: int, max_length: int | None,
                 prefix_reuse: str = "auto", bucket: bool = True):
        if prefix_reuse not in ("auto", "on", "off"):
            raise ValueError(f"prefix_reuse must be auto, on or off, got {prefix_reuse!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.processor = model, processor
        self.batch_size, self.max_length, self.bucket = batch_size, max_length, bucket
        supported, reason = prefix_reuse_support(model)
        if prefix_reuse == "on" and not supported:
            raise ValueError(f"prefix_reuse='on' is not exact for {reason}")
        self.prefix_reuse = prefix_reuse != "off" and supported
        self.prefix_reason = reason if prefix_reuse != "off" else "disabled"
        self._verify = prefix_reuse == "auto" and self.prefix_reuse
        self._disabled = ""  # why prefix reuse was turned off mid-run (batches after fall back)
        self.batches: Counter = Counter()  # "packed" / "plain:<why>" for batches with a shared prefix
        self.sequences = self.tokens = self.slots = 0  # slots: positions run, padding included
        self.max_chars = _max_chars(processor, max_length)
        self.unencoded = 0  # responses too long by their length alone: never tokenized

    @property
    def device(self):
        return self.model.device

    @property
    def method(self) -> str:
        return self.method_since(Counter())

    def method_since(self, before: Counter) -> str:
        """How the batches run since the snapshot `before` (a copy of `batches`) were scored:
        "prefix-packed" only when every batch with a shared prefix was packed, else how many
        fell back to the plain path and why."""
        counts = Counter(self.batches)
        counts.subtract(before)
        packed = counts["packed"]
        fell = {key.removeprefix("plain:"): n for key, n in sorted(counts.items())
                if key.startswith("plain:") and n > 0}
        if not fell:
            return "prefix-packed" if packed else "plain"
        n = sum(fell.values())
        why = "; ".join(f"{count} x {reason}" for reason, count in fell.items())
        return f"plain in {n} of {packed + n} batches ({why}), prefix-packed in {packed}"

    def score_groups(self, items: list[Item]) -> dict[tuple[int, str], tuple[float, int] | None]:
        """Every response's (log-prob, tokens), or None when it exceeds max_length. A group
        whose text alone cannot fit (`max_chars`) is None without being tokenized."""
        results: dict = {}
        if self.max_chars is not None:
            fits = [item for item in items if _text_chars(item[0]) <= self.max_chars]
            for group, keys in items:
                if _text_chars(group) > self.max_chars:
                    results.update(dict.fromkeys(keys))
                    self.unencoded += len(keys)
            items = fits
        order = list(range(len(items)))
        if self.bucket:
            # Homogeneous batches: groups sharing a prefix apart from single sequences (y_w
            # under m_l), which gain nothing from a cached prefix and run in one plain pass.
            order.sort(key=lambda i: (items[i][0].image is None, len(items[i][0].responses) > 1,
                                      _chars(items[i][0])))
        batch: list[Item] = []
        for i in order:
            if batch and sum(len(g.responses) for g, _ in batch) + len(items[i][0].responses) > self.batch_size:
                results.update(self._score_batch(batch))
                batch = []
            batch.append(items[i])
        if batch:
            results.update(self._score_batch(batch))
        return results

    def _score_batch(self, batch: list[Item]) -> dict:
        shared = any(len(group.responses) > 1 for group, _ in batch)
        if shared and not self.prefix_reuse and self._disabled:
            self.batches["plain:" + self._disabled] += 1
        if self.prefix_reuse and shared:
            try:
                fast = self._prefix(batch)
            except PrefixReuseError as error:
                self.batches[f"plain:{error}"] += 1
                return self._plain(batch)
            except Exception as error:  # noqa: BLE001 - first batch decides; later errors raise
                if not self._verify:
                    raise
                self._disable(f"prefix reuse failed on the first batch ({type(error).__name__}: {error})")
                self.batches["plain:" + self._disabled] += 1
                return self._plain(batch)
            if self._verify:
                self._verify = False
                plain = self._plain(batch, count=False)
                bad = [key for key, value in fast.items()
                       if not _tolerance_ok(value[0], plain[key][0], value[1], self.model.dtype)]
                if bad:
                    self._disable(f"prefix reuse disagreed with the plain forward on {len(bad)} sequences")
                    self.batches["plain:" + self._disabled] += 1
                    return plain
            self.batches["packed"] += 1
            return fast
        return self._plain(batch)

    def _disable(self, reason: str) -> None:
        import warnings

        self.prefix_reuse, self.prefix_reason = False, reason + "; using the plain path"
        self._disabled = reason
        warnings.warn(self.prefix_reason, stacklevel=3)

    def _prefix(self, batch: list[Item]) -> dict:
        values, counts = prefix_response_logps(
            self.model, self.processor, [g for g, _ in batch], max_length=self.max_length
        )
        self.tokens += counts["tokens"]
        self.slots += counts["slots"]
        out = {}
        for (group, keys), group_values in zip(batch, values):
            out.update(zip(keys, group_values))
        self.sequences += len(out)
        return out

    def _plain(self, batch: list[Item], *, count: bool = True) -> dict:
        seqs = [seq for group, _ in batch for seq in group.sequences()]
        keys = [key for _, group_keys in batch for key in group_keys]
        out = dict.fromkeys(keys)
        encoded, kept = encode(self.processor, seqs, max_length=self.max_length)
        if kept:
            sums, counts = response_logps(self.model, encoded)
            for row, index in enumerate(kept):
                out[keys[index]] = (float(sums[row]), int(counts[row]))
            if count:
                self.tokens += int(encoded["attention_mask"].sum())
                self.slots += encoded["input_ids"].numel()
        if count:
            self.sequences += len(kept)
        return out


def _chars(group: PrefixGroup) -> int:
    return len(group.question) + max(len(r) for r in group.responses)


def _text_chars(group: PrefixGroup) -> int:
    """Characters of the longest sequence's own text (system + question + response)."""
    return _chars(group) + len(group.system or "")


# A token covers at most as many characters as its vocabulary string has (byte-level BPE and
# SentencePiece alike); normalisation can merge a few characters into one (NFKC composes up
# to 3), so the bound keeps a factor 4 of margin.
_NORMALISATION_MARGIN = 4


def _max_chars(processor, max_length: int | None) -> int | None:
    """Characters of text that cannot fit `max_length` tokens whatever they are: a 10 MB answer
    is a too-long row at once instead of minutes of tokenizing (None: no bound known)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if max_length is None or not hasattr(tokenizer, "get_vocab"):
        return None
    try:
        longest = max((len(token) for token in tokenizer.get_vocab()), default=0)
    except Exception:  # noqa: BLE001 - an odd tokenizer: no shortcut, the exact check still runs
        return None
    return max_length * max(longest, 1) * _NORMALISATION_MARGIN if longest else None


# --------------------------------------------------------------------------- one table


def _row_groups(rows: list[dict], no_image: bool) -> list[Item]:
    """Per row: (m_w: y_w, y_l), (m_l: y_w) and optionally (no image: y_w, y_l)."""
    groups = []
    for i, row in enumerate(rows):
        try:
            seqs = row_sequences(row, no_image=no_image)
        except Exception as error:  # noqa: BLE001 - re-raised with the row named
            raise ScoreError(f"row {row['example_id']!r}: cannot read its images ({error})") from None
        chosen, rejected = seqs[schema.REF_CHOSEN], seqs[schema.REF_REJECTED]
        pairs = [(schema.REF_CHOSEN, schema.REF_REJECTED, chosen.image)]
        if no_image:
            pairs.append((schema.REF_CHOSEN_NO_IMAGE, schema.REF_REJECTED_NO_IMAGE, None))
        for col_w, col_l, image in pairs:
            group = PrefixGroup(image, chosen.question, (chosen.response, rejected.response),
                                chosen.system)
            groups.append((group, [(i, col_w), (i, col_l)]))
        flipped = seqs[schema.REF_CHOSEN_REJECTED_IMAGE]
        group = PrefixGroup(flipped.image, flipped.question, (flipped.response,), flipped.system)
        groups.append((group, [(i, schema.REF_CHOSEN_REJECTED_IMAGE)]))
    return groups


def _columns_for(rows: list[dict], results: dict, no_image: bool) -> tuple[dict[str, list], int]:
    """Reference columns for `rows`; a row with any unscored sequence gets nulls throughout."""
    needed = list(schema.REF_LOGP_COLUMNS) + (list(schema.NO_IMAGE_COLUMNS) if no_image else [])
    columns: dict[str, list] = {name: [] for name in schema.REFERENCE_COLUMNS}
    too_long = 0
    for i in range(len(rows)):
        got = {name: results.get((i, name)) for name in needed}
        if any(value is None for value in got.values()):
            too_long += 1
            got = {}
        for name in schema.REF_LOGP_COLUMNS + schema.NO_IMAGE_COLUMNS:
            columns[name].append(got[name][0] if name in got else None)
        columns[schema.CHOSEN_TOKENS].append(got[schema.REF_CHOSEN][1] if got else None)
        columns[schema.REJECTED_TOKENS].append(got[schema.REF_REJECTED][1] if got else None)
    return columns, too_long


def score_table(table: pa.Table, scorer: Scorer, *, no_image: bool) -> tuple[pa.Table, int]:
    """The table with its reference columns recomputed; and the number of too-long rows."""
    parts: dict[str, list] = {name: [] for name in schema.REFERENCE_COLUMNS}
    too_long = 0
    for start in range(0, table.num_rows, _WINDOW_ROWS):
        rows = table.slice(start, _WINDOW_ROWS).select(_INPUT_COLUMNS).to_pylist()
        results = scorer.score_groups(_row_groups(rows, no_image))
        columns, skipped = _columns_for(rows, results, no_image)
        too_long += skipped
        for name in parts:
            parts[name].extend(columns[name])
    for name in schema.REFERENCE_COLUMNS:
        index = table.schema.get_field_index(name)
        array = pa.array(parts[name], type=table.schema.field(name).type)
        table = table.set_column(index, table.schema.field(name), array)
    return table, too_long
