"""reliance_stats on hand-made numbers (worked out in the comments)."""

import datasets
import numpy as np
import pyarrow as pa
import pytest

from mdpo_data.format import schema
from mdpo_data.report.reliance import gap_summary, reliance_stats


def _table(chosen, flipped, tokens=None, noimage=None):
    data = {schema.REF_CHOSEN: chosen, schema.REF_CHOSEN_REJECTED_IMAGE: flipped}
    if tokens is not None:
        data[schema.CHOSEN_TOKENS] = tokens
    if noimage is not None:
        data[schema.REF_CHOSEN_NO_IMAGE] = noimage
    return pa.table(data)


def test_image_gap_mean_quantiles_and_share():
    # gaps = chosen - flipped = [-1, 0, 1, 2, 3]: mean 1; gap <= 0 for 2 of 5 -> 0.4
    table = _table([-10.0, -10.0, -10.0, -10.0, -10.0], [-9.0, -10.0, -11.0, -12.0, -13.0],
                   tokens=[1, 2, 1, 2, 3])
    stats = reliance_stats(table)
    gap = stats["rejected_image"]
    assert stats["rows"] == 5 and stats["unscored"] == 0
    assert gap["n"] == 5
    assert gap["mean"] == pytest.approx(1.0)
    assert gap["share_not_lowered"] == pytest.approx(0.4)
    # linear percentiles of [-1, 0, 1, 2, 3]: p5 = -1 + 0.05*4 = -0.8, p25 = 0, p50 = 1, p75 = 2, p95 = 2.8
    assert gap["quantiles"] == pytest.approx({"p5": -0.8, "p25": 0.0, "p50": 1.0, "p75": 2.0, "p95": 2.8})
    # per token: [-1/1, 0/2, 1/1, 2/2, 3/3] = [-1, 0, 1, 1, 1] -> mean 0.4
    assert gap["mean_per_token"] == pytest.approx(0.4)
    assert stats["no_image"] is None


def test_nulls_are_left_out_and_counted():
    # third row unscored (too long): gaps [2, 4] -> mean 3, nothing <= 0
    table = _table([-1.0, -2.0, None], [-3.0, -6.0, None])
    stats = reliance_stats(table)
    assert stats["unscored"] == 1
    assert stats["rejected_image"]["n"] == 2
    assert stats["rejected_image"]["mean"] == pytest.approx(3.0)
    assert stats["rejected_image"]["share_not_lowered"] == 0.0


def test_no_image_gap_when_present():
    # no-image gaps = chosen - noimage = [-5 - -4, -5 - -7] = [-1, 2]: mean 0.5, share 0.5
    table = _table([-5.0, -5.0], [-6.0, -6.0], noimage=[-4.0, -7.0])
    stats = reliance_stats(table)
    assert stats["no_image"]["mean"] == pytest.approx(0.5)
    assert stats["no_image"]["share_not_lowered"] == pytest.approx(0.5)


def test_accepts_datasets_and_dicts_alike():
    data = {schema.REF_CHOSEN: [-1.0, -2.0, -3.0], schema.REF_CHOSEN_REJECTED_IMAGE: [-1.5, -1.0, -4.0]}
    from_dict = reliance_stats(data)
    from_dataset = reliance_stats(datasets.Dataset.from_dict(data))
    assert from_dict == from_dataset
    assert from_dict["rejected_image"]["mean"] == pytest.approx((0.5 - 1.0 + 1.0) / 3)


def test_unscored_data_is_a_clear_error():
    with pytest.raises(ValueError, match="mdpo-data score"):
        reliance_stats(pa.table({"x": [1]}))


def test_empty_after_nulls():
    assert gap_summary(np.array([np.nan])) == {"n": 0}
