"""The summary: our rows per eval set, paired comparisons with the best baseline, and the
published reference rows beside ours, never mixed into our numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from geolocsft.errors import GeolocsftError
from geolocsft.evaluate import EvaluationSettings, SummaryExtras, evaluate_file, write_summary
from geolocsft.evaluation.references import (
    ReferenceSettings,
    bundled_references,
    load_references,
    references_file,
)
from geolocsft.settings import configured, from_config

N = 200


def manifest(path: Path) -> Path:
    rng = np.random.default_rng(0)
    pl.DataFrame(
        {
            "image_id": [f"i{k:03d}" for k in range(N)],
            "lat": rng.uniform(-60, 60, N),
            "lon": rng.uniform(-170, 170, N),
        }
    ).write_parquet(path)
    return path


def predictions(path: Path, truth: pl.DataFrame, exact: np.ndarray) -> Path:
    """Exact answers where ``exact``; elsewhere a point about 5,000 km away."""
    lat = np.where(exact, truth["lat"], -truth["lat"].to_numpy())
    lon = np.where(exact, truth["lon"], truth["lon"].to_numpy() + 40)
    pl.DataFrame({"image_id": truth["image_id"], "pred_lat": lat, "pred_lon": lon}).write_csv(path)
    return path


@pytest.fixture
def evaluated(tmp_path: Path) -> tuple[list[tuple[str, str, Path]], list[Path]]:
    """medoid (20 hits), knn (40 hits) and a fine-tuned run (knn's 40 + 30 more) on im2gps3k."""
    truth_path = manifest(tmp_path / "manifest.parquet")
    truth = pl.read_parquet(truth_path)
    hits = {
        "medoid": np.arange(N) < 20,
        "knn": np.arange(N) < 40,
        "tuned": np.arange(N) < 70,
    }
    entries, per_image = [], []
    for name, exact in hits.items():
        pred = predictions(tmp_path / f"{name}.csv", truth, exact)
        result = evaluate_file(pred, tmp_path / name, manifest_path=truth_path, make_plots=False)
        entries.append((name, "im2gps3k", result.outputs["json"]))
        per_image.append(result.outputs["per_image"])
    return entries, per_image


def test_paired_comparison_with_the_best_baseline(tmp_path: Path, evaluated) -> None:
    entries, per_image = evaluated
    extras = SummaryExtras(
        per_image=per_image,
        baselines=["medoid", "knn"],
        settings=configured(EvaluationSettings, thresholds_km=(1.0, 2500.0)),
        paired_csv=tmp_path / "paired.csv",
        references=[],
    )
    write_summary(entries, tmp_path / "s.csv", tmp_path / "s.md", extras)
    pairs = pl.read_csv(tmp_path / "paired.csv")
    # Every pair, every threshold: 3 pairs x 2 thresholds.
    assert pairs.height == 6 and set(pairs["comparison"]) == {"pair"}
    tuned_knn = pairs.filter(
        (pl.col("predictor_a") == "knn")
        & (pl.col("predictor_b") == "tuned")
        & (pl.col("metric") == "acc@1km")
    ).row(0, named=True)
    assert tuned_knn["difference_pp"] == pytest.approx(-15.0)
    assert (tuned_knn["only_a_hit"], tuned_knn["only_b_hit"], tuned_knn["both_hit"]) == (0, 30, 40)
    assert tuned_knn["ci_high"] < 0 and tuned_knn["p_value_mcnemar"] < 1e-6
    markdown = (tmp_path / "s.md").read_text()
    assert "## Paired comparisons: each predictor vs the best baseline" in markdown
    # tuned vs knn (the best baseline): +15 points; knn vs medoid (best of the others): +10.
    assert "| tuned | im2gps3k | +15.00 [" in markdown and "vs knn" in markdown
    assert "| knn | im2gps3k | +10.00 [" in markdown and "vs medoid" in markdown


def test_published_rows_beside_ours_never_in_our_table(tmp_path: Path, evaluated) -> None:
    entries, per_image = evaluated
    rows = load_references(bundled_references())
    extras = SummaryExtras(
        per_image=per_image,
        baselines=["medoid", "knn"],
        references=rows,
        published_csv=tmp_path / "published.csv",
    )
    table = write_summary(entries, tmp_path / "s.csv", tmp_path / "s.md", extras)
    assert table["predictor"].to_list() == ["medoid", "knn", "tuned"]
    ours = pl.read_csv(tmp_path / "s.csv")
    assert "GeoLocSFT" not in " ".join(ours["predictor"].to_list())
    published = pl.read_csv(tmp_path / "published.csv")
    geolocsft = published.filter(pl.col("method").str.starts_with("GeoLocSFT")).row(0, named=True)
    assert geolocsft["source"] == "published" and geolocsft["evalset"] == "im2gps3k"
    assert [geolocsft[f"acc@{r}km"] for r in (1, 25, 200, 750, 2500)] == [
        8.8,
        32.7,
        47.2,
        65.8,
        82.3,
    ]
    assert "arXiv:2506.01277" in geolocsft["citation"]
    markdown = (tmp_path / "s.md").read_text()
    assert "Published on Im2GPS3k: copied from the papers, NOT computed here" in markdown
    assert (
        "| GeoLocSFT (Gemma 3, SFT on 2,700 MR600k images) | 8.80 | 32.70 | 47.20 | 65.80 | "
        "82.30 |" in markdown
    )
    # The published rows come after our rows of the same eval set, and in no comparison.
    assert markdown.index("| tuned |") < markdown.index("Published on Im2GPS3k")
    assert "vs GeoLocSFT" not in markdown


def test_an_eval_set_named_otherwise_is_matched_through_reference_benchmarks(
    tmp_path: Path, evaluated
) -> None:
    entries, _ = evaluated
    renamed = [(p, "i3k-sample", path) for p, _, path in entries]
    rows = load_references(bundled_references())
    write_summary(renamed, tmp_path / "a.csv", tmp_path / "a.md", SummaryExtras(references=rows))
    assert "Published on" not in (tmp_path / "a.md").read_text()
    extras = SummaryExtras(references=rows, reference_benchmarks={"i3k-sample": "Im2GPS3k"})
    write_summary(renamed, tmp_path / "b.csv", tmp_path / "b.md", extras)
    assert "Published on Im2GPS3k" in (tmp_path / "b.md").read_text()


def test_reference_settings_and_files(tmp_path: Path) -> None:
    settings = from_config(ReferenceSettings, {})
    assert settings.references == "bundled" and settings.reference_benchmarks == {}
    assert references_file("bundled") == bundled_references()
    assert references_file(None) is None
    assert references_file("refs.yaml", tmp_path) == tmp_path / "refs.yaml"
    broken = tmp_path / "refs.yaml"
    broken.write_text("rows:\n  - {benchmark: X, method: M, citation: C, accuracy_pct: {1: 120}}\n")
    with pytest.raises(GeolocsftError, match=r"refs\.yaml: rows\[0\]: accuracy_pct 1: 120"):
        load_references(broken)
    broken.write_text("rows:\n  - {benchmark: X, method: M}\n")
    with pytest.raises(GeolocsftError, match=r"rows\[0\]: missing accuracy_pct, citation"):
        load_references(broken)


def test_every_bundled_row_has_a_citation_and_five_thresholds() -> None:
    rows = load_references(bundled_references())
    assert len(rows) >= 2 and all(row.citation for row in rows)
    assert all(sorted(row.accuracy_pct) == [1.0, 25.0, 200.0, 750.0, 2500.0] for row in rows)
