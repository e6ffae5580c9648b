"""How predictions are scored: the ``evaluate`` block of the config, and metric names."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import numpy as np

from geolocsft.errors import GeolocsftError
from geolocsft.geo import DistanceMethod
from geolocsft.settings import from_config

IntervalMethod = Literal["wilson", "bootstrap"]
#: A miss counts as this far away in the median over all images (about half the equator; the
#: largest great-circle error is 20,015 km, and answered errors beyond it are capped too).
MISS_DISTANCE_KM = 20_000.0


@dataclass(frozen=True)
class EvaluationSettings:
    """How predictions are scored (``evaluate`` in the workflow config).

    ``thresholds_km`` are sorted and de-duplicated. ``earth_radius_km`` applies to the
    ``haversine`` distance only (``geodesic`` uses the WGS84 ellipsoid). ``interval`` is the
    method of each Acc@R's confidence interval; ``bootstrap_resamples`` drive the bootstrap
    interval and the paired comparisons. ``seed`` drives every resampling and the subsample of
    the world map (``map_max_points`` pairs at most). Invalid values raise
    :class:`~geolocsft.errors.GeolocsftError`.
    """

    CONFIG_SECTION: ClassVar[str] = "evaluate"

    thresholds_km: tuple[float, ...]
    distance: DistanceMethod
    earth_radius_km: float
    interval: IntervalMethod
    bootstrap_resamples: int
    confidence: float
    seed: int
    map_max_points: int

    def __post_init__(self) -> None:
        try:
            thresholds = tuple(sorted({float(r) for r in self.thresholds_km}))
        except (TypeError, ValueError) as exc:
            raise GeolocsftError(
                f"evaluate: thresholds_km must be numbers in km, got {self.thresholds_km!r}"
            ) from exc
        if not thresholds or not all(math.isfinite(r) and r > 0 for r in thresholds):
            raise GeolocsftError(
                "evaluate: thresholds_km must be one or more finite distances > 0 km, "
                f"got {list(self.thresholds_km)!r}"
            )
        object.__setattr__(self, "thresholds_km", thresholds)
        if self.distance not in get_args(DistanceMethod):
            raise GeolocsftError(
                f"evaluate: distance must be 'haversine' or 'geodesic', got {self.distance!r}"
            )
        if self.interval not in get_args(IntervalMethod):
            raise GeolocsftError(
                f"evaluate: interval must be 'wilson' or 'bootstrap', got {self.interval!r}"
            )
        if not (math.isfinite(self.earth_radius_km) and self.earth_radius_km > 0):
            raise GeolocsftError(
                f"evaluate: earth_radius_km must be > 0, got {self.earth_radius_km!r}"
            )
        check_int(self.bootstrap_resamples, "bootstrap_resamples", minimum=0)
        if not (0.0 < self.confidence < 1.0):
            raise GeolocsftError(
                f"evaluate: confidence must lie strictly between 0 and 1, got {self.confidence!r}"
            )
        check_int(self.seed, "seed", minimum=0)
        check_int(self.map_max_points, "map_max_points", minimum=0)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> EvaluationSettings:
        """Settings from the ``evaluate`` section of the config (schema defaults filled in)."""
        values = dict(config)
        if "thresholds_km" in values and not isinstance(values["thresholds_km"], str | bytes):
            try:
                values["thresholds_km"] = tuple(values["thresholds_km"])
            except TypeError as exc:
                raise GeolocsftError(
                    f"evaluate: thresholds_km must be a list, got {values['thresholds_km']!r}"
                ) from exc
        return from_config(cls, values, "evaluate")


def default_settings() -> EvaluationSettings:
    """The ``evaluate`` settings with every value at its schema default."""
    return EvaluationSettings.from_mapping({})


def check_int(value: object, name: str, minimum: int) -> None:
    """An ``evaluate`` setting that must be an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise GeolocsftError(f"evaluate: {name} must be an integer >= {minimum}, got {value!r}")


def accuracy_key(threshold_km: float) -> str:
    """Metric name of a threshold: ``acc@1km`` for 1 or 1.0, ``acc@0.5km`` for 0.5."""
    value = float(threshold_km)
    text = str(int(value)) if value.is_integer() else repr(value)
    return f"acc@{text}km"


def threshold_label(threshold_km: float) -> str:
    """``1 km``, ``0.5 km``: a threshold as people read it."""
    return accuracy_key(threshold_km).removeprefix("acc@").removesuffix("km") + " km"


def finite_or_none(value: float | None) -> float | None:
    """A JSON-safe number: ``None`` for ``None``, NaN and infinities."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt(value: float | None, digits: int) -> str:
    """A number for a markdown table; ``–`` where it is undefined."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
