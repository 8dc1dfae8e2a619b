"""How much the reference model relies on the image, from the stored reference columns.

    image gap     = log pi_ref(y_w | m_w, q) - log pi_ref(y_w | m_l, q)
    no-image gap  = log pi_ref(y_w | m_w, q) - log pi_ref(y_w | q)        (when scored)

A gap near zero means the corrupted (or missing) image barely changes how likely the
reference finds the chosen answer: the unconditional-preference failure mDPO targets. The
share of examples where the rejected image does NOT lower the chosen log-prob (gap <= 0) is
the headline number. Gaps are sums over tokens; per-token means are reported beside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mdpo_data.format import schema

QUANTILES = (5, 25, 50, 75, 95)


def _column(data, name: str) -> np.ndarray | None:
    """A column as float64 with NaN for nulls, or None when the column is absent."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        if name not in data.column_names:
            return None
        values = data.column(name).to_pylist()
    elif isinstance(data, Mapping):
        if name not in data:
            return None
        values = list(data[name])
    else:  # a datasets.Dataset
        if name not in data.column_names:
            return None
        values = list(data[name])
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def gap_summary(gap: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, Any]:
    """mean, quantiles and share of gap <= 0 over the finite entries of `gap`."""
    ok = np.isfinite(gap)
    gap = gap[ok]
    if gap.size == 0:
        return {"n": 0}
    summary = {
        "n": int(gap.size),
        "mean": float(gap.mean()),
        "quantiles": {f"p{q}": float(v) for q, v in zip(QUANTILES, np.percentile(gap, QUANTILES))},
        "share_not_lowered": float((gap <= 0).mean()),
    }
    if tokens is not None:
        counts = tokens[ok]
        if np.all(np.isfinite(counts)) and np.all(counts > 0):
            summary["mean_per_token"] = float((gap / counts).mean())
    return summary


def reliance_stats(table_or_dataset) -> dict[str, Any]:
    """Image-reliance statistics of a scored table (pyarrow Table, datasets.Dataset or dict).

    Rows with a null reference value (unscored, too long) are left out and counted.
    """
    chosen = _column(table_or_dataset, schema.REF_CHOSEN)
    flipped = _column(table_or_dataset, schema.REF_CHOSEN_REJECTED_IMAGE)
    if chosen is None or flipped is None:
        raise ValueError(
            f"reliance needs the {schema.REF_CHOSEN} and {schema.REF_CHOSEN_REJECTED_IMAGE} "
            "columns: run `mdpo-data score` first"
        )
    tokens = _column(table_or_dataset, schema.CHOSEN_TOKENS)
    image_gap = chosen - flipped
    stats: dict[str, Any] = {
        "rows": int(chosen.size),
        "unscored": int((~np.isfinite(image_gap)).sum()),
        "rejected_image": gap_summary(image_gap, tokens),
        "no_image": None,
    }
    no_image = _column(table_or_dataset, schema.REF_CHOSEN_NO_IMAGE)
    if no_image is not None and np.isfinite(no_image).any():
        stats["no_image"] = gap_summary(chosen - no_image, tokens)
    return stats
