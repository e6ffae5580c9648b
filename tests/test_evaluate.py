"""Evaluate: distances, Acc@R against an independent implementation, bootstrap, outputs."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.evaluate import (
    EvaluationSettings,
    accuracy_key,
    bootstrap_accuracy_ci,
    compute_metrics,
    evaluate_file,
    write_summary,
)
from geolocsft.geo import distance_km
from geolocsft.settings import configured

R_EARTH = 6371.0088
THRESHOLDS = (1.0, 25.0, 200.0, 750.0, 2500.0)
HEADER = ("image_id", "pred_lat", "pred_lon", "true_lat", "true_lon")


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> Path:
    """CSV bytes written by hand with CRLF line ends, as Windows tools write them."""
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def strict_loads(text: str) -> object:
    def reject(constant: str) -> None:
        raise AssertionError(f"JSON holds {constant}")

    return json.loads(text, parse_constant=reject)


# ---------------------------------------------------------------------------------------------
# Known distances


def test_london_paris_haversine() -> None:
    d = distance_km(51.5074, -0.1278, 48.8566, 2.3522)
    assert float(d) == pytest.approx(343.5, abs=0.6)


def test_antipodes_are_half_the_circumference() -> None:
    d = distance_km([0.0, 30.0, 90.0], [0.0, 45.0, 0.0], [0.0, -30.0, -90.0], [180.0, -135.0, 0.0])
    assert d == pytest.approx([math.pi * R_EARTH] * 3, rel=1e-12)


def test_antimeridian_is_the_short_way_round() -> None:
    d = float(distance_km(0.0, 179.9, 0.0, -179.9))
    assert d == pytest.approx(math.radians(0.2) * R_EARTH, rel=1e-9)
    assert d == pytest.approx(22.24, abs=0.01)


def test_pole_is_one_point_whatever_the_longitude() -> None:
    d = distance_km([90.0, -90.0], [0.0, 17.0], [90.0, -90.0], [123.0, -170.0])
    assert d == pytest.approx([0.0, 0.0], abs=1e-9)


def test_geodesic_is_close_to_haversine_and_knows_the_ellipsoid() -> None:
    rng = np.random.default_rng(1)
    lat1, lat2 = rng.uniform(-80, 80, (2, 200))
    lon1, lon2 = rng.uniform(-180, 180, (2, 200))
    sphere = distance_km(lat1, lon1, lat2, lon2, method="haversine")
    ellipsoid = distance_km(lat1, lon1, lat2, lon2, method="geodesic")
    assert np.all(np.abs(ellipsoid / sphere - 1.0) < 0.005)
    # One degree of meridian at the equator is shorter on WGS84 than on the mean sphere.
    assert float(distance_km(0.0, 0.0, 1.0, 0.0, method="geodesic")) == pytest.approx(
        110.574, abs=0.01
    )


# ---------------------------------------------------------------------------------------------
# Cross-check against an independent, row-by-row implementation


def reference_distance(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Vincenty's formula on a sphere (atan2 form), not the haversine that geolocsft uses."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.hypot(
        math.cos(p2) * math.sin(dl),
        math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl),
    )
    x = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return R_EARTH * math.atan2(y, x)


def reference_number(text: str, limit: float) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and -limit <= value <= limit else None


def reference_evaluate(rows: list[tuple[str, ...]]) -> dict[str, float | int | None]:
    distances: list[float | None] = []
    for _, p_lat, p_lon, t_lat, t_lon in rows:
        lat, lon = reference_number(p_lat, 90.0), reference_number(p_lon, 180.0)
        true_lat, true_lon = float(t_lat), float(t_lon)
        if lat is None or lon is None:
            distances.append(None)
        else:
            distances.append(reference_distance(true_lat, true_lon, lat, lon))
    answered = [d for d in distances if d is not None]
    result: dict[str, float | int | None] = {"n": len(rows), "answered": len(answered)}
    for r in THRESHOLDS:
        hits = sum(1 for d in answered if d <= r + 1e-6)
        result[accuracy_key(r)] = 100.0 * hits / len(rows)
    result["median_km"] = statistics.median(answered)
    result["mean_km"] = sum(answered) / len(answered)
    score = sum(5000.0 * math.exp(-d / 1492.7) for d in answered)
    result["mean_geoscore"] = score / len(rows)
    return result


def realistic_rows(count: int, seed: int) -> list[tuple[str, ...]]:
    """Prediction rows as a model's output would look, with every awkward case mixed in."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, ...]] = []
    # Even entries go into pred_lat, odd ones into pred_lon: each is unusable where it goes.
    junk = ["", "nan", "unknown", "NaN", "95.5", "N/A", " ", "181", "-90.0001", "-200"]
    for i in range(count):
        kind = i % 10
        t_lat = math.degrees(math.asin(rng.uniform(-1, 1)))
        t_lon = rng.uniform(-180, 180)
        if kind == 0:  # antimeridian
            t_lat, t_lon = rng.uniform(-60, 60), 179.95
            p_lat, p_lon = repr(t_lat + rng.normal(0, 0.1)), repr(-179.95 + rng.uniform(0, 0.3))
        elif kind == 1:  # pole, any longitude
            t_lat = 90.0 if i % 20 == 1 else -90.0
            towards_equator = -math.copysign(abs(rng.normal(0, 0.2)), t_lat)
            p_lat, p_lon = repr(t_lat + towards_equator), repr(rng.uniform(-180, 180))
        elif kind == 2:  # unanswered or out of range, in one of the coordinates
            bad = junk[(i // 10) % len(junk)]
            p_lat, p_lon = (bad, repr(t_lon)) if i % 20 == 2 else (repr(t_lat), bad)
        elif kind == 3:  # exactly on a threshold, due north or due east along the equator
            r = THRESHOLDS[(i // 10) % len(THRESHOLDS)]
            step = math.degrees(r / R_EARTH)
            if i % 20 == 3:
                t_lat = rng.uniform(-60, 60)
                p_lat, p_lon = repr(t_lat + step), repr(t_lon)
            else:
                t_lat, t_lon = 0.0, rng.uniform(-170, 170)
                p_lat, p_lon = repr(0.0), repr(t_lon - step)
        elif kind == 4:  # one metre beyond a threshold
            r = THRESHOLDS[(i // 10) % len(THRESHOLDS)] + 0.001
            t_lat, t_lon = rng.uniform(-60, 60), rng.uniform(-170, 170)
            p_lat, p_lon = repr(t_lat + math.degrees(r / R_EARTH)), repr(t_lon)
        elif kind == 5:  # exact hit, written with padding
            p_lat, p_lon = f" {t_lat!r}", f"{t_lon!r} "
        elif kind in (6, 7):  # near miss at street to region scale
            scale = 10.0 ** rng.uniform(-2, 1)
            p_lat = repr(float(np.clip(t_lat + rng.normal(0, scale), -90, 90)))
            p_lon = repr(float((t_lon + rng.normal(0, scale) + 180) % 360 - 180))
        else:  # anywhere
            p_lat = repr(math.degrees(math.asin(rng.uniform(-1, 1))))
            p_lon = repr(rng.uniform(-180, 180))
        rows.append((f"img{i:04d}", p_lat, p_lon, repr(t_lat), repr(t_lon)))
    return rows


def test_evaluator_agrees_with_independent_implementation(tmp_path: Path) -> None:
    rows = realistic_rows(300, seed=7)
    pred = write_csv(tmp_path / "pred.csv", HEADER, rows)
    result = evaluate_file(pred, tmp_path / "out", make_plots=False)
    expected = reference_evaluate(rows)
    got = result.to_dict()
    assert got["n"] == expected["n"] == 300
    assert got["answered"] == expected["answered"]
    assert got["answered"] == 270  # exactly the 30 junk rows are unanswered
    for r in THRESHOLDS:
        assert got[accuracy_key(r)] == pytest.approx(expected[accuracy_key(r)], abs=1e-9)
    for key in ("median_km", "mean_km", "mean_geoscore"):
        assert got[key] == pytest.approx(expected[key], rel=1e-9)
    # Per image too: the same distances row by row, in input order.
    per_image = pl.read_csv(tmp_path / "out" / "per_image.csv", infer_schema=False)
    assert per_image["image_id"].to_list() == [row[0] for row in rows]
    for row, text in zip(rows, per_image["distance_km"].to_list(), strict=True):
        lat, lon = reference_number(row[1], 90.0), reference_number(row[2], 180.0)
        if lat is None or lon is None:
            assert text is None
        else:
            expected_d = reference_distance(float(row[3]), float(row[4]), lat, lon)
            assert float(text) == pytest.approx(expected_d, abs=1e-7)


def test_prediction_exactly_on_a_threshold_is_a_hit(tmp_path: Path) -> None:
    step = math.degrees(25.0 / R_EARTH)
    rows = [
        ("a", repr(10.0 + step), "20.0", "10.0", "20.0"),  # 25 km due north
        ("b", "0.0", repr(100.0 + step), "0.0", "100.0"),  # 25 km due east on the equator
        ("c", repr(10.0 + math.degrees(25.001 / R_EARTH)), "20.0", "10.0", "20.0"),  # 1 m over
    ]
    result = evaluate_file(write_csv(tmp_path / "p.csv", HEADER, rows), tmp_path, make_plots=False)
    assert result.metrics.accuracy["acc@25km"] == pytest.approx(200.0 / 3.0)


def test_misses_count_against_all_rows(tmp_path: Path) -> None:
    rows = [
        ("a", "12.5", "45.0", "12.5", "45.0"),
        ("b", "-33.9", "151.2", "-33.9", "151.2"),
        ("c", "", "", "40.0", "-74.0"),
        ("d", "", "", "35.7", "139.7"),
    ]
    result = evaluate_file(write_csv(tmp_path / "p.csv", HEADER, rows), tmp_path, make_plots=False)
    m = result.metrics
    assert (m.n, m.answered) == (4, 2)
    assert m.accuracy["acc@1km"] == 50.0
    assert m.accuracy["acc@2500km"] == 50.0
    assert m.median_km == pytest.approx(0.0, abs=1e-9)
    assert m.mean_geoscore == pytest.approx(2500.0)  # two perfect 5000s, two zeros


def test_nothing_answered_gives_nulls_not_nan(tmp_path: Path) -> None:
    rows = [("a", "unknown", "unknown", "1", "2"), ("b", "nan", "nan", "3", "4")]
    evaluate_file(write_csv(tmp_path / "p.csv", HEADER, rows), tmp_path / "o", make_plots=True)
    document = strict_loads((tmp_path / "o" / "accuracy.json").read_text())
    assert isinstance(document, dict)
    assert document["answered"] == 0
    assert document["acc@1km"] == 0.0
    assert document["median_km"] is None
    assert document["mean_km"] is None
    assert document["mean_geoscore"] == 0.0
    assert (tmp_path / "o" / "error_cdf.png").stat().st_size > 1000


def test_header_only_file_gives_nulls(tmp_path: Path) -> None:
    result = evaluate_file(write_csv(tmp_path / "p.csv", HEADER, []), tmp_path / "o")
    document = strict_loads((tmp_path / "o" / "accuracy.json").read_text())
    assert isinstance(document, dict)
    assert result.metrics.n == 0
    assert document["acc@25km"] is None
    assert document["ci"]["acc@25km"] is None
    assert (tmp_path / "o" / "world_map.png").is_file()


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    pred = write_csv(tmp_path / "p.csv", ("pred_lat", "pred_lon", "true_lat"), [("1", "2", "3")])
    with pytest.raises(InputTableError) as excinfo:
        evaluate_file(pred, tmp_path / "out")
    message = str(excinfo.value)
    assert str(pred) in message
    assert "'true_lon'" in message
    assert not (tmp_path / "out").exists()


def test_bad_ground_truth_names_file_column_and_rows(tmp_path: Path) -> None:
    rows = [
        ("a", "1", "2", "1", "2"),
        ("b", "1", "2", "1", "2"),
        ("c", "1", "2", "north", "2"),
        ("d", "1", "2", "1", "2"),
        ("e", "1", "2", "", "2"),
        ("f", "1", "2", "1", "200"),
    ]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    with pytest.raises(InputTableError) as excinfo:
        evaluate_file(pred, tmp_path / "out")
    message = str(excinfo.value)
    assert str(pred) in message
    assert "'true_lat'" in message and "rows 3 ('north'), 5 (empty)" in message
    assert "'true_lon'" in message and "row 6 ('200')" in message


def test_many_bad_rows_are_summarised(tmp_path: Path) -> None:
    rows = [(str(i), "1", "2", "nan", "2") for i in range(50)]
    with pytest.raises(InputTableError, match=r"rows 1 \('nan'\), 2 .* and 45 more"):
        evaluate_file(write_csv(tmp_path / "p.csv", HEADER, rows), tmp_path / "out")


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputTableError, match="not found"):
        evaluate_file(tmp_path / "absent.csv", tmp_path / "out")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(InputTableError, match=r"empty\.csv: cannot read"):
        evaluate_file(empty, tmp_path / "out")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    with pytest.raises(InputTableError, match=r"garbage\.parquet: cannot read"):
        evaluate_file(garbage, tmp_path / "out")


@pytest.mark.parametrize(
    "settings",
    [
        {"thresholds_km": []},
        {"thresholds_km": [0, 25]},
        {"thresholds_km": [float("nan")]},
        {"distance": "manhattan"},
        {"confidence": 1.0},
        {"bootstrap_resamples": -1},
        {"earth_radius_km": 0},
        {"seed": -3},
    ],
)
def test_bad_settings_are_user_errors(settings: dict[str, object]) -> None:
    with pytest.raises(GeolocsftError, match="evaluate: "):
        EvaluationSettings.from_mapping(settings)


def test_settings_from_config_section() -> None:
    settings = EvaluationSettings.from_mapping(
        {"thresholds_km": [25, 1, 25], "distance": "geodesic", "seed": 3}
    )
    assert settings.thresholds_km == (1.0, 25.0)
    assert settings.distance == "geodesic"
    assert settings.seed == 3


# ---------------------------------------------------------------------------------------------
# Metric names and bootstrap


def test_accuracy_keys() -> None:
    assert accuracy_key(1.0) == "acc@1km"
    assert accuracy_key(2500) == "acc@2500km"
    assert accuracy_key(0.5) == "acc@0.5km"
    metrics = compute_metrics(
        [0.3, 0.7, np.nan], configured(EvaluationSettings, thresholds_km=(0.5, 1.0))
    )
    assert metrics.accuracy == pytest.approx({"acc@0.5km": 100 / 3, "acc@1km": 200 / 3})


def test_bootstrap_ci_contains_estimate_narrows_and_repeats() -> None:
    settings = configured(
        EvaluationSettings,
        thresholds_km=(100.0,),
        interval="bootstrap",
        bootstrap_resamples=2000,
        seed=5,
    )
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1000, 10000):
        distances = np.where(rng.random(n) < 0.3, 50.0, 500.0)
        metrics = compute_metrics(distances, settings)
        estimate, ci = metrics.accuracy_pct[0], metrics.ci_pct[0]
        assert estimate is not None and ci is not None
        assert ci[0] < estimate < ci[1]
        widths.append(ci[1] - ci[0])
        assert compute_metrics(distances, settings).ci_pct == metrics.ci_pct
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] == pytest.approx(2 * 1.96 * math.sqrt(0.3 * 0.7 / 10000) * 100, rel=0.15)


def test_binomial_shortcut_matches_resampling_rows() -> None:
    n, k, resamples = 200, 50, 4000
    rows = np.zeros(n, dtype=bool)
    rows[:k] = True
    rng = np.random.default_rng(11)
    literal = rows[rng.integers(0, n, size=(resamples, n))].mean(axis=1) * 100
    expected = np.quantile(literal, [0.025, 0.975])
    (shortcut,) = bootstrap_accuracy_ci([k], n, resamples=resamples, confidence=0.95, seed=3)
    assert shortcut is not None
    assert shortcut == pytest.approx(tuple(expected), abs=1.6)  # 1.6 points ~ sampling noise


def test_no_bootstrap_means_no_interval(tmp_path: Path) -> None:
    rows = [("a", "1", "2", "1", "2")]
    settings = configured(EvaluationSettings, interval="bootstrap", bootstrap_resamples=0)
    evaluate_file(write_csv(tmp_path / "p.csv", HEADER, rows), tmp_path, settings=settings)
    document = strict_loads((tmp_path / "accuracy.json").read_text())
    assert isinstance(document, dict)
    assert document["ci"] == dict.fromkeys(document["ci"])
    assert document["acc@1km"] == 100.0


# ---------------------------------------------------------------------------------------------
# Countries


def test_per_country_with_manifest_join(tmp_path: Path) -> None:
    rows = [
        ("fr1", "48.86", "2.35", "48.86", "2.35"),  # exact
        ("fr2", "43.30", "5.37", "48.86", "2.35"),  # ~660 km off
        ("fr3", "", "", "45.76", "4.84"),  # unanswered
        ("jp1", "35.68", "139.77", "35.68", "139.77"),  # exact
        ("xx1", "10", "10", "10", "10"),  # in the manifest with a null country
    ]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    manifest = tmp_path / "manifest.parquet"
    pl.DataFrame(
        {
            "image_id": ["jp1", "fr1", "fr2", "fr3", "xx1", "de1"],
            "country_code": ["JP", "FR", "FR", "FR", None, "DE"],
            "lat": [35.68, 48.86, 48.86, 45.76, 10.0, 52.52],
            "lon": [139.77, 2.35, 2.35, 4.84, 10.0, 13.40],
        }
    ).write_parquet(manifest)
    result = evaluate_file(pred, tmp_path / "out", manifest_path=manifest, make_plots=False)
    table = pl.read_csv(tmp_path / "out" / "per_country.csv")
    # de1 has no prediction: a miss of Germany, counted in n.
    assert table["country_code"].to_list() == ["FR", "DE", "JP", "unknown"]
    fr = table.row(0, named=True)
    assert (fr["n"], fr["answered"]) == (3, 2)
    assert fr["acc@1km"] == pytest.approx(100 / 3)
    assert fr["acc@750km"] == pytest.approx(200 / 3)
    assert fr["median_km"] == pytest.approx(result.distance_km[2] / 2)
    de = table.row(1, named=True)
    assert (de["n"], de["answered"], de["acc@2500km"]) == (1, 0, 0.0)
    per_image = pl.read_csv(tmp_path / "out" / "per_image.csv", infer_schema=False)
    # One row per eval image, in the manifest's order.
    assert per_image["image_id"].to_list() == ["jp1", "fr1", "fr2", "fr3", "xx1", "de1"]
    assert per_image["country_code"].to_list() == ["JP", "FR", "FR", "FR", None, "DE"]
    assert per_image["answered"].to_list() == ["true", "true", "true", "false", "true", "false"]


def test_country_of_the_manifest_wins_and_the_file_fills_gaps(tmp_path: Path) -> None:
    header = (*HEADER, "country_code")
    rows = [("a", "1", "1", "1", "1", "BR"), ("b", "1", "1", "1", "1", "PE")]
    manifest = tmp_path / "m.parquet"
    pl.DataFrame(
        {"image_id": ["a", "b"], "country_code": ["AR", None], "lat": [1.0, 1.0], "lon": [1.0, 1.0]}
    ).write_parquet(manifest)
    pred = write_csv(tmp_path / "p.csv", header, rows)
    result = evaluate_file(pred, tmp_path / "o", manifest_path=manifest, make_plots=False)
    assert sorted(result.per_country["country_code"].to_list()) == ["AR", "PE"]


def test_no_countries_gives_header_only_table(tmp_path: Path) -> None:
    pred = write_csv(tmp_path / "p.csv", HEADER, [("a", "1", "1", "1", "1")])
    evaluate_file(pred, tmp_path / "o", make_plots=False)
    lines = (tmp_path / "o" / "per_country.csv").read_text().splitlines()
    assert lines == [
        "country_code,n,answered,acc@1km,acc@25km,acc@200km,acc@750km,acc@2500km,"
        "median_km,mean_geoscore"
    ]


def test_manifest_without_truth_columns_is_an_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pl.DataFrame({"image_id": ["a"], "country_code": ["FR"]}).write_parquet(manifest)
    pred = write_csv(tmp_path / "p.csv", HEADER, [("a", "1", "1", "1", "1")])
    with pytest.raises(InputTableError, match=r"m\.parquet.*'lat', 'lon'"):
        evaluate_file(pred, tmp_path / "o", manifest_path=manifest)


def test_manifest_without_country_gives_header_only_per_country(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,lat,lon\na,1,1\n")
    pred = write_csv(tmp_path / "p.csv", HEADER, [("a", "1", "1", "1", "1")])
    result = evaluate_file(pred, tmp_path / "o", manifest_path=manifest, make_plots=False)
    assert result.per_country.height == 0 and result.metrics.accuracy["acc@1km"] == 100.0


# ---------------------------------------------------------------------------------------------
# Output files


def test_output_files_and_keys(tmp_path: Path) -> None:
    header = (*HEADER, "raw_answer")
    rows = [
        ("a", "48.85", "2.35", "51.51", "-0.13", '"Paris, France"'),
        ("b", "nan", "", "40.71", "-74.01", "I cannot tell"),
        ("c", "40.0", "-74.0", "40.71", "-74.01", "USA"),
    ]
    pred = write_csv(tmp_path / "pred.csv", header, rows)
    out = tmp_path / "eval"
    result = evaluate_file(pred, out, label="demo/holdout")
    expected = {
        "accuracy.json",
        "accuracy.csv",
        "accuracy.md",
        "per_image.csv",
        "per_country.csv",
        "error_cdf.png",
        "world_map.png",
    }
    assert {p.name for p in out.iterdir()} == expected
    assert {p.name for p in result.outputs.values()} == expected
    for png in ("error_cdf.png", "world_map.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    document = strict_loads((out / "accuracy.json").read_text())
    assert isinstance(document, dict)
    for key in ("n", "answered", "median_km", "mean_geoscore", "ci", "distance", "seed"):
        assert key in document
    acc_keys = ["acc@1km", "acc@25km", "acc@200km", "acc@750km", "acc@2500km"]
    assert [k for k in document if k.startswith("acc@")] == acc_keys
    assert list(document["ci"]) == acc_keys
    assert document["label"] == "demo/holdout"
    assert (document["n"], document["answered"]) == (3, 2)
    assert document["thresholds_km"] == list(THRESHOLDS)
    assert document["earth_radius_km"] == R_EARTH

    summary = pl.read_csv(out / "accuracy.csv")
    assert summary.height == 1
    assert summary["label"].to_list() == ["demo/holdout"]
    assert summary["acc@750km"].to_list() == [document["acc@750km"]]
    assert summary["acc@750km_ci_high"].to_list() == [document["ci"]["acc@750km"][1]]

    markdown = (out / "accuracy.md").read_text()
    assert "| metric | value | 95% CI |" in markdown
    assert "| Acc@750 km (%) | 66.67 |" in markdown

    per_image = pl.read_csv(out / "per_image.csv", infer_schema=False)
    assert per_image.columns == [*header, "distance_km", "answered", "geoscore"]
    assert per_image["raw_answer"].to_list() == ["Paris, France", "I cannot tell", "USA"]
    assert per_image["pred_lat"][1] == "nan"  # the text as the model wrote it
    assert per_image["geoscore"][1] == "0.0"


def test_geodesic_setting_changes_distances(tmp_path: Path) -> None:
    rows = [("a", "1.0", "0.0", "0.0", "0.0")]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    settings = configured(EvaluationSettings, distance="geodesic", thresholds_km=(110.6,))
    result = evaluate_file(pred, tmp_path / "g", settings=settings, make_plots=False)
    assert result.metrics.median_km == pytest.approx(110.574, abs=0.01)
    assert result.metrics.accuracy["acc@110.6km"] == 100.0
    sphere = evaluate_file(
        pred, tmp_path / "h", settings=configured(EvaluationSettings), make_plots=False
    )
    assert sphere.metrics.median_km == pytest.approx(111.195, abs=0.01)


def test_parquet_predictions(tmp_path: Path) -> None:
    pred = tmp_path / "p.parquet"
    pl.DataFrame(
        {
            "image_id": [1, 2],
            "pred_lat": [10.0, None],
            "pred_lon": [20.0, None],
            "true_lat": [10.0, 0.0],
            "true_lon": [20.0, 0.0],
        }
    ).write_parquet(pred)
    result = evaluate_file(pred, tmp_path / "o", make_plots=False)
    assert (result.metrics.n, result.metrics.answered) == (2, 1)
    assert result.metrics.accuracy["acc@1km"] == 50.0


def test_summary_of_several_evaluations(tmp_path: Path) -> None:
    good = [("a", "1", "1", "1", "1"), ("b", "5", "5", "5", "5")]
    poor = [("a", "", "", "1", "1"), ("b", "5", "5", "5", "5")]
    paths = []
    for name, rows in (("good", good), ("poor", poor)):
        pred = write_csv(tmp_path / f"{name}.csv", HEADER, rows)
        paths.append(evaluate_file(pred, tmp_path / name, make_plots=False).outputs["json"])
    table = write_summary(
        [("medoid", "holdout", paths[0]), ("knn", "holdout", str(paths[1]))],
        tmp_path / "summary.csv",
        tmp_path / "summary.md",
    )
    assert table["predictor"].to_list() == ["medoid", "knn"]
    assert table["acc@1km"].to_list() == [100.0, 50.0]
    written = pl.read_csv(tmp_path / "summary.csv")
    assert written.columns[:5] == ["predictor", "evalset", "n", "answered", "answered_pct"]
    assert "acc@1km_ci_low" in written.columns
    markdown = (tmp_path / "summary.md").read_text()
    assert "## holdout" in markdown
    # Wilson intervals: 2 of 2 hits still has width below 100.
    assert "| medoid | 2 | 2 | 100.00 [34.24, 100.00]" in markdown
    assert "| knn | 2 | 1 | 50.00 [9.45, 90.55]" in markdown


def test_summary_names_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "accuracy.json"
    broken.write_text("{not json")
    with pytest.raises(InputTableError, match=r"accuracy\.json: cannot read"):
        write_summary([("p", "e", broken)], tmp_path / "s.csv", tmp_path / "s.md")
