"""Evaluation joined on the eval set's manifest: truth and n from it, ids checked; bad
prediction-file input (0..360 longitudes, empty cells) named in clear messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest
from test_evaluate import HEADER, write_csv

from geolocsft.cli import main
from geolocsft.errors import InputTableError
from geolocsft.evaluate import evaluate_file


def corpus_manifest(path: Path) -> Path:
    """A corpus manifest: four test images (the eval set) and two training images."""
    pl.DataFrame(
        {
            "image_id": ["t1", "t2", "t3", "t4", "r1", "r2"],
            "lat": [48.8566, 51.5074, 40.7128, -33.8688, 35.6762, 55.7558],
            "lon": [2.3522, -0.1278, -74.0060, 151.2093, 139.6503, 37.6173],
            "split": ["test", "test", "test", "test", "train", "train"],
            "country_code": ["FR", "GB", "US", "AU", "JP", "RU"],
        }
    ).write_parquet(path)
    return path


def test_truth_and_n_come_from_the_manifest_and_a_missing_id_is_a_miss(tmp_path: Path) -> None:
    manifest = corpus_manifest(tmp_path / "manifest.parquet")
    # t3 has no row; the file's own truth of t2 is wrong (the manifest's is used).
    rows = [
        ("t4", "-33.8688", "151.2093", "-33.8688", "151.2093"),
        ("t1", "48.8566", "2.3522", "48.8566", "2.3522"),
        ("t2", "51.5074", "-0.1278", "0", "0"),
    ]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    result = evaluate_file(pred, tmp_path / "o", manifest_path=manifest, make_plots=False)
    m = result.metrics
    assert (m.n, m.answered) == (4, 3)
    assert m.accuracy["acc@1km"] == 75.0  # t2 is exact against the manifest's truth
    document = json.loads((tmp_path / "o" / "accuracy.json").read_text())
    assert document["truth_source"] == "manifest"
    assert document["missing_predictions"] == 1
    assert document["truth_disagreements"] == 1
    assert "note" not in document
    per_image = pl.read_csv(tmp_path / "o" / "per_image.csv", infer_schema=False)
    assert per_image["image_id"].to_list() == ["t1", "t2", "t3", "t4"]
    assert per_image["answered"].to_list() == ["true", "true", "false", "true"]
    assert per_image["true_lat"][1] == "51.5074"


def test_prediction_file_may_omit_the_truth_columns_when_a_manifest_gives_them(
    tmp_path: Path,
) -> None:
    manifest = corpus_manifest(tmp_path / "manifest.parquet")
    pred = write_csv(tmp_path / "p.csv", ("image_id", "pred_lat", "pred_lon"), [("t1", "48", "2")])
    result = evaluate_file(pred, tmp_path / "o", manifest_path=manifest, make_plots=False)
    assert (result.metrics.n, result.metrics.answered) == (4, 1)


def test_an_unknown_id_is_an_error_naming_it(tmp_path: Path) -> None:
    manifest = corpus_manifest(tmp_path / "manifest.parquet")
    rows = [("t1", "1", "1", "1", "1"), ("zz9", "1", "1", "1", "1"), ("r1", "1", "1", "1", "1")]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    with pytest.raises(InputTableError) as excinfo:
        evaluate_file(pred, tmp_path / "o", manifest_path=manifest)
    message = str(excinfo.value)
    assert str(pred) in message and str(manifest) in message
    assert "'zz9' (row 2)" in message
    assert "'r1' (row 3, not in the eval split)" in message  # a training image
    assert not (tmp_path / "o").exists()


def test_a_repeated_id_is_an_error_naming_it_and_its_rows(tmp_path: Path) -> None:
    manifest = corpus_manifest(tmp_path / "manifest.parquet")
    rows = [("t1", "1", "1", "1", "1"), ("t2", "1", "1", "1", "1"), ("t1", "2", "2", "1", "1")]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    with pytest.raises(InputTableError, match=r"predicted more than once: 't1' \(rows 1, 3\)"):
        evaluate_file(pred, tmp_path / "o", manifest_path=manifest)


def test_an_empty_id_is_an_error_naming_its_row(tmp_path: Path) -> None:
    manifest = corpus_manifest(tmp_path / "manifest.parquet")
    rows = [("t1", "1", "1", "1", "1"), ("", "2", "2", "1", "1")]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    with pytest.raises(InputTableError, match=r"column 'image_id' is empty in data row\(s\) 2"):
        evaluate_file(pred, tmp_path / "o", manifest_path=manifest)


def test_a_repeated_id_in_the_eval_set_is_an_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,lat,lon\na,1,1\nb,2,2\na,1,1\n")
    pred = write_csv(tmp_path / "p.csv", HEADER, [("a", "1", "1", "1", "1")])
    with pytest.raises(
        InputTableError, match=r"m\.csv: the eval set has duplicate image_id\(s\) 'a'"
    ):
        evaluate_file(pred, tmp_path / "o", manifest_path=manifest)


def test_an_empty_manifest_latitude_names_row_column_and_image(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,lat,lon\na,1,1\nb,,2\nc,1,200\n")
    pred = write_csv(tmp_path / "p.csv", HEADER, [("a", "1", "1", "1", "1")])
    with pytest.raises(InputTableError) as excinfo:
        evaluate_file(pred, tmp_path / "o", manifest_path=manifest)
    message = str(excinfo.value)
    assert (
        "column 'lat' is empty, not a number or outside [-90, 90] in row 2 (image 'b')" in message
    )
    assert "column 'lon'" in message and "row 3 (image 'c')" in message
    assert "None" not in message


def test_without_a_manifest_the_outputs_say_where_the_truth_came_from(tmp_path: Path) -> None:
    pred = write_csv(tmp_path / "p.csv", HEADER, [("a", "1", "1", "1", "1")])
    evaluate_file(pred, tmp_path / "o", make_plots=False)
    document = json.loads((tmp_path / "o" / "accuracy.json").read_text())
    assert document["truth_source"] == "prediction file"
    assert "--manifest" in document["note"]
    markdown = (tmp_path / "o" / "accuracy.md").read_text()
    assert "Note: Ground truth and n come from the prediction file itself" in markdown
    assert pl.read_csv(tmp_path / "o" / "accuracy.csv")["truth_source"][0] == "prediction file"


def test_0_to_360_longitudes_are_converted_with_a_warning_naming_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Predictions written east of Greenwich from 0 to 360: New York is 286 (= -74).
    rows = [
        ("ny", "40.7128", "285.9940", "40.7128", "-74.0060"),
        ("paris", "48.8566", "2.3522", "48.8566", "2.3522"),
        ("sydney", "-33.8688", "151.2093", "-33.8688", "151.2093"),
    ]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    with caplog.at_level(logging.WARNING, logger="geolocsft"):
        result = evaluate_file(pred, tmp_path / "o", make_plots=False)
    assert result.metrics.accuracy["acc@1km"] == 100.0
    assert result.arrays.lon_wrapped == 1
    assert "0..360" in caplog.text and "row 1 ('285.9940')" in caplog.text
    assert json.loads((tmp_path / "o" / "accuracy.json").read_text())["pred_lon_wrapped"] == 1


def test_a_longitude_above_180_among_negative_ones_is_a_named_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [("a", "10", "-20", "10", "-20"), ("b", "10", "200", "10", "-160")]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    with caplog.at_level(logging.WARNING, logger="geolocsft"):
        result = evaluate_file(pred, tmp_path / "o", make_plots=False)
    assert (result.metrics.answered, result.arrays.lon_wrapped) == (1, 0)
    assert "column 'pred_lon' is outside [-180, 180] in data row 2 ('200')" in caplog.text


def test_an_empty_predicted_latitude_is_named_by_row_and_column(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        ("a", "10", "20", "10", "20"),
        ("b", "", "20", "10", "20"),
        ("c", "north", "1", "1", "1"),
    ]
    pred = write_csv(tmp_path / "p.csv", HEADER, rows)
    with caplog.at_level(logging.WARNING, logger="geolocsft"):
        evaluate_file(pred, tmp_path / "o", make_plots=False)
    assert "column 'pred_lat' is empty in data row 2 (empty)" in caplog.text
    assert "column 'pred_lat' is not a number in data row 3 ('north')" in caplog.text
    assert "None" not in caplog.text


def test_cli_with_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = corpus_manifest(tmp_path / "manifest.parquet")
    pred = write_csv(tmp_path / "p.csv", HEADER, [("t1", "48.8566", "2.3522", "", "")])
    assert main(["-q", "evaluate", str(pred), "--manifest", str(manifest), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| n | 4 | |" in out and "| Acc@1 km (%) | 25.00 |" in out
    assert "Note:" not in out
    bad = write_csv(tmp_path / "bad.csv", HEADER, [("nope", "1", "1", "1", "1")])
    assert main(["evaluate", str(bad), "--manifest", str(manifest), "--no-plots"]) == 1
    assert "error: " in capsys.readouterr().err
