"""Per-example image work of the build, run in worker processes.

Kept free of heavy imports (datasets, torch): a worker starts in ~0.2 s, and everything it
needs travels in a picklable `Task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mdpo_data.sources.records import BadRow, Candidate, Skip


@dataclass(frozen=True)
class Task:
    """One example's image work, shipped to a worker process (plain picklable fields)."""

    candidate: Candidate
    partner: Any  # ImageRef of the swap partner, or None
    rejected: str  # strategy spec, parsed again in the worker (cheap)
    seed: int
    max_pixels: int
    response_strategy: str
    model_input: str | None = None  # ModelInput JSON for `noise` (None: LLaVA-1.5's)


_STRATEGIES: dict[tuple[str, str | None], Any] = {}


def _strategy(spec: str, model_input: str | None = None):
    from mdpo_data.rejected.model_input import ModelInput
    from mdpo_data.rejected.registry import parse_spec

    if (spec, model_input) not in _STRATEGIES:
        space = ModelInput.from_json(model_input) if model_input else None
        _STRATEGIES[spec, model_input] = parse_spec(spec, space)
    return _STRATEGIES[spec, model_input]


def make_example(task: Task) -> dict[str, Any] | Skip:
    """-> the keyword arguments of schema.make_row, or a `Skip` saying why there is no row.

    Never raises on bad data. Returns plain values rather than a row so that workers never
    import `datasets` (3 s and 100 MB per process) just to build a dict.
    """
    from mdpo_data.build import images

    c = task.candidate
    where = f"{c.source} row {c.row} (id {c.source_id!r})"
    try:
        data = c.image.load()
        image, fmt = images.load_image(data, max_pixels=task.max_pixels, where=where)
        chosen_bytes = images.stored_bytes(data, image, fmt)
        strategy = _strategy(task.rejected, task.model_input)
        stats: dict[str, int] = {}
        if strategy.needs_partner:
            try:
                pdata = task.partner.load()
                pimage, pfmt = images.load_image(pdata, max_pixels=task.max_pixels, where=where)
            except BadRow as error:
                return Skip("swap_partner_" + error.reason, where, error.detail, c.row)
            rejected_bytes = images.stored_bytes(pdata, pimage, pfmt)
            if rejected_bytes == chosen_bytes:
                return Skip("swap_same_image", where, "", c.row)
        else:
            rejected, stats = strategy.apply_with_stats(image, task.seed)
            _check_pixels(rejected, task.max_pixels)
            rejected_bytes = images.encode(rejected, "PNG" if strategy.lossless else fmt)
    except BadRow as error:
        return Skip(error.reason, where, error.detail, c.row)
    row = dict(
        example_id=c.example_id,
        source=c.source,
        source_id=c.source_id,
        source_row=c.row,
        seed=task.seed,
        question=c.question,
        chosen=c.chosen,
        rejected=c.rejected or "",
        image=chosen_bytes,
        rejected_image=rejected_bytes,
        rejected_image_strategy=strategy.resolved,
        rejected_response_strategy=task.response_strategy,
        metadata=c.meta,
        system=c.system,
    )
    if stats:
        row["_stats"] = stats  # summed into the manifest by the build, not stored in the row
    return row


def _check_pixels(rejected, max_pixels: int) -> None:
    """A strategy (an albumentations pipeline that resizes up) may draw an image larger than
    --max-pixels: a counted skip here, so the build never writes what its validate refuses."""
    width, height = rejected.size
    if width * height > max_pixels:
        raise BadRow("rejected_image_too_many_pixels",
                     f"the strategy drew {width}x{height} = {width * height:,} pixels, over "
                     f"max_pixels={max_pixels:,}")


def worker_init() -> None:
    # One image per process: native thread pools would only fight the other workers. Image
    # work never imports torch, so workers start in ~0.2 s instead of ~5 s.
    import os

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
