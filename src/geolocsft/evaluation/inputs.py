"""Reading a prediction table, and joining it on the eval set's manifest by image id.

A prediction table is read as text and converted leniently, so that what a model writes never
crashes the evaluation: an empty, ``nan``, non-numeric or out-of-range prediction makes its row
*unanswered* (a miss), and a warning says how many, why, and in which rows and columns. A file
whose predicted longitudes are in 0..360 (none negative, some above 180) is converted to
-180..180 (``lon - 360``), with a warning naming the rows: that is a convention, not a wrong
answer. In a file that also has negative longitudes, a value above 180 stays out of range.

With a manifest (the workflow always gives one: the eval set's), the **manifest** decides what is
evaluated: the truth (its ``lat``, ``lon``), the images (its test split when it has a ``split``
column, else every row) and therefore n. A prediction table's row is matched by ``image_id``; an
eval image without a row is an unanswered miss; an id that is not in the eval set, or that comes
twice, is an error naming it. Without a manifest, truth and n come from the prediction file's own
``true_lat``/``true_lon`` rows, and the outputs say so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geolocsft.errors import InputTableError
from geolocsft.evaluation.metrics import BoolArray, PredictionArrays
from geolocsft.geo import FloatArray, valid_coordinates
from geolocsft.io import PARQUET_SUFFIXES, read_table_header, read_text_table
from geolocsft.splits import TEST

log = logging.getLogger(__name__)

PREDICTED_COLUMNS = ("pred_lat", "pred_lon")
TRUTH_COLUMNS = ("true_lat", "true_lon")
REQUIRED_COLUMNS = (*PREDICTED_COLUMNS, *TRUTH_COLUMNS)
#: Columns a manifest needs to be the truth of an evaluation.
MANIFEST_COLUMNS = ("image_id", "lat", "lon")
#: How many offending rows or ids an error message lists before "and N more".
MAX_ROWS_IN_MESSAGE = 5
#: Where the truth came from, as written into accuracy.json (``truth_source``).
TRUTH_FROM_MANIFEST = "manifest"
TRUTH_FROM_FILE = "prediction file"
#: Hidden column: the data row (1 = first after the header) of each prediction in its file.
ROW_COLUMN = "__row"


@dataclass(frozen=True)
class EvaluationTable:
    """The rows to evaluate (text as read, truth as text or numbers) and how they were made.

    ``missing``: eval images with no row in the prediction file (unanswered misses);
    ``truth_disagreements``: rows whose ``true_lat``/``true_lon`` in the prediction file differ
    from the manifest's (the manifest's are used).
    """

    table: pl.DataFrame
    truth_source: str
    missing: int
    truth_disagreements: int


def require_columns(table: pl.DataFrame, required: Sequence[str], source: str, what: str) -> None:
    """An :class:`InputTableError` naming the file and the columns a table lacks."""
    missing = [c for c in required if c not in table.columns]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise InputTableError(
            f"{source}: the {what} has no column {names} (needs {', '.join(required)}; "
            f"its columns are: {', '.join(table.columns) or 'none'})"
        )


def _as_float(series: pl.Series) -> FloatArray:
    if series.dtype.is_numeric():
        return series.cast(pl.Float64).fill_null(np.nan).to_numpy().astype(np.float64, copy=False)
    values = series.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    return values.to_numpy().astype(np.float64, copy=False)


def _listing(items: Sequence[str], total: int) -> str:
    more = f" and {total - MAX_ROWS_IN_MESSAGE} more" if total > MAX_ROWS_IN_MESSAGE else ""
    return ", ".join(items[:MAX_ROWS_IN_MESSAGE]) + more


def _row_numbers(table: pl.DataFrame, index: np.ndarray) -> list[int]:
    if ROW_COLUMN in table.columns:
        rows = table[ROW_COLUMN].gather(index.tolist())
        return [int(r) for r in rows]
    return [int(i) + 1 for i in index]


def describe_rows(raw: pl.Series, bad: BoolArray, rows: Sequence[int] | None = None) -> str:
    """``rows 3 ('north'), 5 (empty) and 2 more``: offending data rows and what they hold."""
    index = np.flatnonzero(bad)
    numbers = list(rows) if rows is not None else [int(i) + 1 for i in index]
    shown = []
    for i, number in zip(index[:MAX_ROWS_IN_MESSAGE], numbers, strict=False):
        text = raw[int(i)]
        shown.append(
            f"{number} (empty)" if text is None or not text.strip() else f"{number} ({text!r})"
        )
    noun = "row" if index.size == 1 else "rows"
    return f"{noun} {_listing(shown, int(index.size))}"


def _unanswered_warning(table: pl.DataFrame, lat: FloatArray, lon: FloatArray, source: str) -> None:
    """Log why each unanswered prediction is one, by column and reason, naming rows."""
    parts = []
    # A row the file does not have (an eval image without a prediction) was reported already.
    in_file = (
        table[ROW_COLUMN].is_not_null().to_numpy()
        if ROW_COLUMN in table.columns
        else np.ones(table.height, dtype=bool)
    )
    for column, values in (("pred_lat", lat), ("pred_lon", lon)):
        limit = 90.0 if column == "pred_lat" else 180.0
        raw = table[column].cast(pl.String)
        empty = (raw.is_null() | (raw.str.strip_chars() == "")).to_numpy() & in_file
        with np.errstate(invalid="ignore"):
            not_number = in_file & ~empty & ~np.isfinite(values)
            outside = np.isfinite(values) & (np.abs(values) > limit) & in_file
        for mask, reason in (
            (empty, "is empty"),
            (not_number, "is not a number"),
            (outside, f"is outside [-{limit:g}, {limit:g}]"),
        ):
            if mask.any():
                rows = _row_numbers(table, np.flatnonzero(mask)[:MAX_ROWS_IN_MESSAGE])
                parts.append(
                    f"column '{column}' {reason} in data " + describe_rows(raw, mask, rows)
                )
    if parts:
        log.warning("%s: predictions counted as unanswered misses: %s", source, "; ".join(parts))


def wrap_longitudes(lon: FloatArray, table: pl.DataFrame, source: str) -> tuple[FloatArray, int]:
    """Predicted longitudes of a file written in the 0..360 convention, moved to -180..180.

    A file uses that convention when its finite predicted longitudes all lie in [0, 360] and
    some exceed 180: those become ``lon - 360``, and a warning names how many and which rows. In
    a file that also has negative longitudes, a value above 180 is out of range (a miss).
    """
    finite = lon[np.isfinite(lon)]
    if not finite.size or finite.max() <= 180.0 or finite.min() < 0.0 or finite.max() > 360.0:
        return lon, 0
    with np.errstate(invalid="ignore"):
        east = lon > 180.0
    count = int(east.sum())
    rows = _row_numbers(table, np.flatnonzero(east)[:MAX_ROWS_IN_MESSAGE])
    log.warning(
        "%s: predicted longitudes are in 0..360 (none negative, %d above 180): converted to "
        "-180..180 (lon - 360) in data %s",
        source,
        count,
        describe_rows(table["pred_lon"].cast(pl.String), east, rows),
    )
    return np.where(east, lon - 360.0, lon), count


def parse_prediction_table(table: pl.DataFrame, source: str = "<table>") -> PredictionArrays:
    """Coordinates of a text prediction table; unusable predictions become unanswered rows.

    Raises :class:`InputTableError` naming ``source``, the column and the first offending data
    rows (1-based, header excluded) for a missing column or an unusable ground truth.
    """
    require_columns(table, REQUIRED_COLUMNS, source, "prediction table")
    true_lat = _as_float(table["true_lat"])
    true_lon = _as_float(table["true_lon"])
    problems = []
    for column, values, limit in (("true_lat", true_lat, 90.0), ("true_lon", true_lon, 180.0)):
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(values) & (np.abs(values) <= limit))
        if bad.any():
            rows = _row_numbers(table, np.flatnonzero(bad)[:MAX_ROWS_IN_MESSAGE])
            problems.append(
                f"column '{column}' has {int(bad.sum())} unusable ground-truth value(s) "
                f"(empty, non-numeric or outside [-{limit:g}, {limit:g}]) in data "
                + describe_rows(table[column].cast(pl.String), bad, rows)
            )
    if problems:
        raise InputTableError(
            f"{source}: "
            + "; ".join(problems)
            + ". Data row 1 is the first row after the header; a prediction may be missing, "
            "the ground truth may not."
        )
    pred_lat = _as_float(table["pred_lat"])
    pred_lon, wrapped = wrap_longitudes(_as_float(table["pred_lon"]), table, source)
    answered = valid_coordinates(pred_lat, pred_lon)
    if not answered.all():
        _unanswered_warning(table, pred_lat, pred_lon, source)
    return PredictionArrays(
        pred_lat=np.where(answered, pred_lat, np.nan),
        pred_lon=np.where(answered, pred_lon, np.nan),
        true_lat=true_lat,
        true_lon=true_lon,
        answered=answered,
        lon_wrapped=wrapped,
    )


def read_predictions(path: Path) -> pl.DataFrame:
    """A prediction table as text, with each row's data-row number in :data:`ROW_COLUMN`."""
    table = read_text_table(path, "prediction table")
    return table.with_row_index(ROW_COLUMN, offset=1)


def read_manifest(path: Path) -> pl.DataFrame:
    """The columns of a manifest that an evaluation uses: ``image_id`` (text), ``lat``, ``lon``
    (numbers where they parse), and ``split``/``country_code`` when present."""
    header = read_table_header(path, "manifest")
    require_columns(
        pl.DataFrame(schema=dict.fromkeys(header, pl.String)),
        MANIFEST_COLUMNS,
        str(path),
        "manifest (the truth of the eval set)",
    )
    wanted = [c for c in (*MANIFEST_COLUMNS, "split", "country_code") if c in header]
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            table = pl.read_parquet(path, columns=wanted)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputTableError(f"{path}: cannot read the manifest: {exc}") from exc
    else:
        table = read_text_table(path, "manifest").select(wanted)
    table = table.with_row_index(ROW_COLUMN, offset=1)
    return table.with_columns(
        pl.col("image_id").cast(pl.String).str.strip_chars(),
        *[
            pl.col(c).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
            if table.schema[c] == pl.String
            else pl.col(c).cast(pl.Float64)
            for c in ("lat", "lon")
        ],
        *[pl.col(c).cast(pl.String) for c in ("split", "country_code") if c in wanted],
    )


def may_repeat(ids: pl.Series) -> bool:
    """Whether any id may come twice: a sort of 64-bit hashes (a few ms per million ids, where
    polars' exact ``is_duplicated`` on strings takes a second under load); a True is then
    checked exactly by the caller."""
    hashes = np.sort(ids.hash(seed=0).to_numpy())
    return bool(np.any(hashes[1:] == hashes[:-1]))


def _ids(series: pl.Series, limit: int = MAX_ROWS_IN_MESSAGE) -> list[str]:
    return [repr(v) for v in series.head(limit).to_list()]


def eval_targets(manifest: pl.DataFrame, source: str) -> pl.DataFrame:
    """The eval set of a manifest: its test split (a benchmark's manifest is all test), or every
    row when it has no ``split`` column. Checks ids and truth, naming rows."""
    targets = manifest.filter(pl.col("split") == TEST) if "split" in manifest.columns else manifest
    empty_id = targets.filter(pl.col("image_id").is_null() | (pl.col("image_id") == ""))
    if empty_id.height:
        rows = [str(r) for r in empty_id[ROW_COLUMN].to_list()]
        raise InputTableError(
            f"{source}: column 'image_id' is empty in manifest row(s) {_listing(rows, len(rows))}"
        )
    duplicated = (
        targets.filter(pl.col("image_id").is_duplicated())
        if may_repeat(targets["image_id"])
        else targets.clear()
    )
    if duplicated.height:
        ids = duplicated["image_id"].unique(maintain_order=True)
        raise InputTableError(
            f"{source}: the eval set has duplicate image_id(s) "
            f"{_listing(_ids(ids), ids.len())}: each image must come once"
        )
    problems = []
    for column, limit in (("lat", 90.0), ("lon", 180.0)):
        bad = targets.filter(
            pl.col(column).is_null() | pl.col(column).is_nan() | (pl.col(column).abs() > limit)
        )
        if bad.height:
            shown = [
                f"row {row} (image {image_id!r})"
                for row, image_id in bad.select(ROW_COLUMN, "image_id")
                .head(MAX_ROWS_IN_MESSAGE)
                .rows()
            ]
            problems.append(
                f"column '{column}' is empty, not a number or outside [-{limit:g}, {limit:g}] in "
                + _listing(shown, bad.height)
            )
    if problems:
        raise InputTableError(f"{source}: unusable truth in the manifest: " + "; ".join(problems))
    return targets


def join_on_manifest(
    predictions: pl.DataFrame, manifest: pl.DataFrame, source: str, manifest_source: str
) -> EvaluationTable:
    """One row per eval image of ``manifest`` (in its order), with the prediction of its id.

    See the module docstring for the rules. The result has the prediction table's columns (its
    ``true_lat``/``true_lon`` replaced by the manifest's truth) and the manifest's
    ``country_code`` where it has one (the prediction table's fills the gaps).
    """
    require_columns(
        predictions,
        ("image_id", *PREDICTED_COLUMNS),
        source,
        "prediction table (joined on the manifest by image_id)",
    )
    targets = eval_targets(manifest, manifest_source)
    preds = predictions.with_columns(pl.col("image_id").cast(pl.String).str.strip_chars())
    no_id = preds.filter(pl.col("image_id").is_null() | (pl.col("image_id") == ""))
    if no_id.height:
        rows = [str(r) for r in no_id[ROW_COLUMN].to_list()]
        raise InputTableError(
            f"{source}: column 'image_id' is empty in data row(s) {_listing(rows, len(rows))}: "
            "each prediction must name its image"
        )
    duplicated = (
        preds.filter(pl.col("image_id").is_duplicated())
        if may_repeat(preds["image_id"])
        else preds.clear()
    )
    if duplicated.height:
        first = duplicated.group_by("image_id", maintain_order=True).agg(pl.col(ROW_COLUMN))
        shown = [f"{i!r} (rows {', '.join(map(str, rows))})" for i, rows in first.head(5).rows()]
        raise InputTableError(
            f"{source}: image_id(s) predicted more than once: {_listing(shown, first.height)}; "
            "each eval image must have one row"
        )
    truth = targets.select(
        "image_id",
        pl.col("lat").alias("__true_lat"),
        pl.col("lon").alias("__true_lon"),
        *([pl.col("country_code").alias("__country")] if "country_code" in targets.columns else []),
    )
    joined = truth.join(preds, on="image_id", how="left", maintain_order="left")
    matched = joined.height - int(joined[ROW_COLUMN].null_count())
    # Every prediction row matched one eval image (ids are unique on both sides), unless some
    # id is not in the eval set: only then look for which.
    unknown = (
        preds.join(targets.select("image_id"), on="image_id", how="anti")
        if matched < preds.height
        else preds.clear()
    )
    if unknown.height:
        elsewhere = set(manifest["image_id"].to_list()) & set(unknown["image_id"].to_list())
        shown = [
            f"{i!r} (row {r}{', not in the eval split' if i in elsewhere else ''})"
            for i, r in unknown.select("image_id", ROW_COLUMN).head(MAX_ROWS_IN_MESSAGE).rows()
        ]
        raise InputTableError(
            f"{source}: image_id(s) not in the eval set of {manifest_source}: "
            f"{_listing(shown, unknown.height)}"
        )
    missing = int(joined[ROW_COLUMN].is_null().sum())
    if missing:
        absent = joined.filter(pl.col(ROW_COLUMN).is_null())["image_id"]
        log.warning(
            "%s: %d of %d eval images of %s have no prediction row; each counts as an "
            "unanswered miss (e.g. %s)",
            source,
            missing,
            joined.height,
            manifest_source,
            ", ".join(_ids(absent)),
        )
    disagreements = 0
    if set(TRUTH_COLUMNS) <= set(preds.columns):
        own_lat = (
            joined["true_lat"].cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        )
        own_lon = (
            joined["true_lon"].cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        )
        differs = (
            ((own_lat - joined["__true_lat"]).abs() > 1e-6)
            | ((own_lon - joined["__true_lon"]).abs() > 1e-6)
        ).fill_null(False)
        disagreements = int(differs.sum())
        if disagreements:
            log.warning(
                "%s: %d row(s) give a true_lat/true_lon that differs from %s (the manifest's "
                "truth is used), e.g. image_id %s",
                source,
                disagreements,
                manifest_source,
                ", ".join(_ids(joined.filter(differs)["image_id"])),
            )
    table = joined.with_columns(
        pl.col("__true_lat").alias("true_lat"), pl.col("__true_lon").alias("true_lon")
    )
    if "__country" in table.columns:
        if "country_code" in table.columns:
            own = pl.col("country_code").str.strip_chars()
            table = table.with_columns(
                pl.when(pl.col("__country").is_null() | (pl.col("__country") == ""))
                .then(pl.when(own == "").then(None).otherwise(own))
                .otherwise(pl.col("__country"))
                .alias("country_code")
            )
        else:
            table = table.rename({"__country": "country_code"})
    order = [c for c in preds.columns if c != ROW_COLUMN]
    order += [
        c for c in ("true_lat", "true_lon", "country_code") if c in table.columns and c not in order
    ]
    return EvaluationTable(
        table=table.select(ROW_COLUMN, *order),
        truth_source=TRUTH_FROM_MANIFEST,
        missing=missing,
        truth_disagreements=disagreements,
    )


def evaluation_table(
    predictions: pl.DataFrame, manifest_path: Path | None, source: str
) -> EvaluationTable:
    """The rows to evaluate: joined on the manifest when there is one, else the file's own."""
    if manifest_path is None:
        if "image_id" in predictions.columns and may_repeat(predictions["image_id"]):
            ids = predictions["image_id"].cast(pl.String).str.strip_chars()
            repeated = ids.filter(ids.is_duplicated()).unique(maintain_order=True)
            if repeated.len():
                log.warning(
                    "%s: image_id(s) %s come more than once; without a manifest each row counts "
                    "(pass the eval set's manifest to catch this as an error)",
                    source,
                    _listing(_ids(repeated), repeated.len()),
                )
        return EvaluationTable(predictions, TRUTH_FROM_FILE, missing=0, truth_disagreements=0)
    manifest = read_manifest(manifest_path)
    return join_on_manifest(predictions, manifest, source, str(manifest_path))
