"""Vectorised geodesy: great-circle and ellipsoidal distances, GeoGuessr score, medoids.

All functions take and return NumPy arrays of degrees / kilometres and never loop in Python
over points, so a million predictions are scored in milliseconds.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Mean Earth radius (IUGG R1) in km: the default of every distance in geolocsft.
MEAN_EARTH_RADIUS_KM = 6371.0088
#: A distance within this much of a threshold still counts as a hit (1 mm of float rounding).
HIT_TOLERANCE_KM = 1e-6
#: Scale of the GeoGuessr score: 5000 * exp(-d / 1492.7 km).
GEOSCORE_SCALE_KM = 1492.7
GEOSCORE_MAX = 5000.0

DistanceMethod = Literal["haversine", "geodesic"]


def valid_coordinates(lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True where (lat, lon) is a finite point with lat in [-90, 90] and lon in [-180, 180]."""
    lat_arr = np.asarray(lat, dtype=np.float64)
    lon_arr = np.asarray(lon, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (
            np.isfinite(lat_arr)
            & np.isfinite(lon_arr)
            & (np.abs(lat_arr) <= 90.0)
            & (np.abs(lon_arr) <= 180.0)
        )


def haversine_km(
    lat1: npt.ArrayLike,
    lon1: npt.ArrayLike,
    lat2: npt.ArrayLike,
    lon2: npt.ArrayLike,
    radius_km: float = MEAN_EARTH_RADIUS_KM,
) -> FloatArray:
    """Great-circle distance on a sphere of ``radius_km``; NaN in, NaN out.

    Uses the haversine form clipped to [0, 1], which stays accurate for tiny distances and
    for antipodal points alike.
    """
    phi1 = np.radians(np.asarray(lat1, dtype=np.float64))
    phi2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dphi = phi2 - phi1
    dlambda = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dphi / 2.0) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlambda / 2.0) ** 2
    return 2.0 * radius_km * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def geodesic_km(
    lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike
) -> FloatArray:
    """Distance along the WGS84 ellipsoid (Karney's algorithm, via pyproj); NaN in, NaN out."""
    from pyproj import Geod

    lat1_arr, lon1_arr, lat2_arr, lon2_arr = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.float64) for x in (lat1, lon1, lat2, lon2))
    )
    ok = valid_coordinates(lat1_arr, lon1_arr) & valid_coordinates(lat2_arr, lon2_arr)
    out = np.full(lat1_arr.shape, np.nan)
    if ok.any():
        _, _, metres = Geod(ellps="WGS84").inv(
            lon1_arr[ok], lat1_arr[ok], lon2_arr[ok], lat2_arr[ok]
        )
        out[ok] = np.asarray(metres) / 1000.0
    return out


def distance_km(
    lat1: npt.ArrayLike,
    lon1: npt.ArrayLike,
    lat2: npt.ArrayLike,
    lon2: npt.ArrayLike,
    method: DistanceMethod = "haversine",
    radius_km: float = MEAN_EARTH_RADIUS_KM,
) -> FloatArray:
    """Distance by the configured ``method``: ``haversine`` (sphere) or ``geodesic`` (WGS84)."""
    if method == "haversine":
        return haversine_km(lat1, lon1, lat2, lon2, radius_km=radius_km)
    if method == "geodesic":
        return geodesic_km(lat1, lon1, lat2, lon2)
    raise ValueError(f"unknown distance method {method!r}: use 'haversine' or 'geodesic'")


def geoscore(distance: npt.ArrayLike) -> FloatArray:
    """GeoGuessr score 5000 * exp(-d / 1492.7) per distance in km; NaN (no answer) scores 0."""
    d = np.asarray(distance, dtype=np.float64)
    score = GEOSCORE_MAX * np.exp(-d / GEOSCORE_SCALE_KM)
    return np.where(np.isfinite(d), score, 0.0)


def to_unit_vectors(lat: npt.ArrayLike, lon: npt.ArrayLike) -> FloatArray:
    """Points on the unit sphere (n, 3): chord distance grows monotonically with arc distance."""
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    lam = np.radians(np.asarray(lon, dtype=np.float64))
    cos_phi = np.cos(phi)
    return np.column_stack([cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)])


def chord_to_arc_km(chord: npt.ArrayLike, radius_km: float = MEAN_EARTH_RADIUS_KM) -> FloatArray:
    """Great-circle distance for a chord length measured between unit vectors."""
    half = np.clip(np.asarray(chord, dtype=np.float64) / 2.0, 0.0, 1.0)
    return 2.0 * radius_km * np.arcsin(half)


def geodesic_medoid_index(lat: npt.ArrayLike, lon: npt.ArrayLike) -> int:
    """Index of the point whose summed great-circle distance to all the others is smallest.

    Unlike the mean of latitudes and longitudes, the medoid is always a real point and does
    not break across the antimeridian. O(n^2) in memory chunks of 1,024 candidate rows.
    """
    vectors = to_unit_vectors(lat, lon)
    if len(vectors) == 0:
        raise ValueError("the medoid of no points is undefined")
    best_index, best_total = 0, np.inf
    for start in range(0, len(vectors), 1024):
        block = vectors[start : start + 1024]
        cosines = np.clip(block @ vectors.T, -1.0, 1.0)
        totals = np.arccos(cosines).sum(axis=1)
        local = int(np.argmin(totals))
        if totals[local] < best_total:
            best_index, best_total = start + local, float(totals[local])
    return best_index
