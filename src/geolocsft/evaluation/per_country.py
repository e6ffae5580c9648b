"""Accuracy per country of the true location."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

from geolocsft.evaluation.settings import EvaluationSettings, accuracy_key, default_settings
from geolocsft.geo import HIT_TOLERANCE_KM, geoscore

#: Label of rows whose country is unknown (null or empty) in the per-country table.
UNKNOWN_COUNTRY = "unknown"


def per_country_schema(settings: EvaluationSettings) -> dict[str, pl.DataType]:
    """Columns of ``per_country.csv``."""
    return {
        "country_code": pl.String(),
        "n": pl.Int64(),
        "answered": pl.Int64(),
        **{accuracy_key(r): pl.Float64() for r in settings.thresholds_km},
        "median_km": pl.Float64(),
        "mean_geoscore": pl.Float64(),
    }


def per_country_table(
    distance: npt.ArrayLike,
    country_code: pl.Series | Sequence[str | None] | None,
    settings: EvaluationSettings | None = None,
) -> pl.DataFrame:
    """Accuracy per country of the true location, largest country first.

    Same definitions as :func:`~geolocsft.evaluation.metrics.compute_metrics` within each
    country (``median_km`` over answered rows); null or empty codes are grouped under
    :data:`UNKNOWN_COUNTRY`. ``country_code=None`` (no country information) gives an empty
    table with the columns of :func:`per_country_schema`.
    """
    settings = settings or default_settings()
    schema = per_country_schema(settings)
    if country_code is None:
        return pl.DataFrame(schema=schema)
    d = np.asarray(distance, dtype=np.float64).ravel()
    codes = pl.Series("country_code", country_code, dtype=pl.String).str.strip_chars()
    if codes.len() != d.size:
        raise ValueError(f"{codes.len()} country codes for {d.size} distances")
    frame = pl.DataFrame(
        {
            "country_code": codes,
            "distance_km": pl.Series(d).fill_nan(None),
            "geoscore": geoscore(d),
        }
    ).with_columns(
        pl.when(pl.col("country_code").is_null() | (pl.col("country_code") == ""))
        .then(pl.lit(UNKNOWN_COUNTRY))
        .otherwise(pl.col("country_code"))
        .alias("country_code")
    )
    distance_col = pl.col("distance_km")
    table = (
        frame.group_by("country_code")
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            distance_col.is_not_null().sum().cast(pl.Int64).alias("answered"),
            *[
                ((distance_col <= r + HIT_TOLERANCE_KM).sum() * 100.0 / pl.len())
                .cast(pl.Float64)
                .alias(accuracy_key(r))
                for r in settings.thresholds_km
            ],
            distance_col.median().cast(pl.Float64).alias("median_km"),
            pl.col("geoscore").mean().cast(pl.Float64).alias("mean_geoscore"),
        )
        .sort(["n", "country_code"], descending=[True, False])
    )
    return table.select(list(schema)).cast(schema)  # type: ignore[arg-type]
