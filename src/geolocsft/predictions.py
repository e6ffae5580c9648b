"""The prediction table every predictor writes (baselines, fine-tuned runs, zero-shot models).

One row per evaluated image: ``image_id, pred_lat, pred_lon, true_lat, true_lon, raw_answer``;
model predictors add how the answer was read (``parse_status``) and how many of its sampled
answers parsed (``answers_parsed``). An answer without usable coordinates is a row with empty
predictions, never a dropped row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

PREDICTION_SCHEMA: dict[str, type[pl.DataType]] = {
    "image_id": pl.String,
    "pred_lat": pl.Float64,
    "pred_lon": pl.Float64,
    "true_lat": pl.Float64,
    "true_lon": pl.Float64,
    "raw_answer": pl.String,
    "parse_status": pl.String,
    "answers_parsed": pl.Int64,
}
#: The columns every prediction file starts with.
PREDICTION_COLUMNS = tuple(PREDICTION_SCHEMA)[:6]


def prediction_table(
    targets: pl.DataFrame,
    pred_lat: npt.ArrayLike,
    pred_lon: npt.ArrayLike,
    raw_answers: Sequence[str | None],
) -> pl.DataFrame:
    """The base prediction table of ``targets`` (manifest rows: ``image_id``, ``lat``, ``lon``);
    a NaN prediction becomes an empty cell."""
    base = {name: PREDICTION_SCHEMA[name] for name in PREDICTION_COLUMNS}
    return pl.DataFrame(
        {
            "image_id": targets["image_id"],
            "pred_lat": np.asarray(pred_lat, dtype=np.float64),
            "pred_lon": np.asarray(pred_lon, dtype=np.float64),
            "true_lat": targets["lat"],
            "true_lon": targets["lon"],
            "raw_answer": pl.Series(list(raw_answers), dtype=pl.String),
        },
        schema=base,
    )
