"""Ingest: every bad-input case is reported by row/file and reason; nothing valid is dropped."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import (
    DEMO_IMAGES,
    write_16bit_tiff,
    write_photo,
    write_png_bomb,
    write_truncated_jpeg,
)
from PIL import Image

from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.images import to_rgb8
from geolocsft.ingest import IngestSettings, ingest, write_outputs
from geolocsft.settings import configured
from geolocsft.splits import assign_split
from geolocsft.tables import (
    ColumnMap,
    check_table_columns,
    normalise_image_id,
    unsafe_id_reason,
)


@pytest.fixture
def messy_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """A folder and table with one example of every bad-input case next to valid rows."""
    images = tmp_path / "images"
    images.mkdir()
    for name, seed in [
        ("good_a.jpg", 1),
        ("good_b.png", 2),
        ("1000269685_e60e9cdfb4_1125_78841376@N00.jpg", 3),
        ("lat_high.jpg", 4),
        ("lon_low.jpg", 5),
        ("no_coords.jpg", 6),
        ("nan_coords.jpg", 7),
        ("dup_conflict.jpg", 8),
        ("dup_exact.jpg", 9),
    ]:
        write_photo(images / name, seed=seed)
    write_truncated_jpeg(images / "truncated.jpg")
    write_photo(images / "placeholder.jpg", size=(1, 1))
    write_png_bomb(images / "bomb.png")
    write_16bit_tiff(images / "grey16.tif")
    (images / "not_an_image.jpg").write_bytes(b"<html>404 Not Found</html>")
    table = tmp_path / "labels.csv"
    table.write_text(
        "IMG_ID,LAT,LON\r\n"
        "good_a.jpg,48.8566,2.3522\r\n"  # row 1
        "good_b,-33.8688,151.2093\r\n"  # row 2: id without extension
        "1000269685_e60e9cdfb4_1125_78841376@N00.jpg,32.325436,-64.764404\r\n"  # row 3
        "lat_high,91.5,10\r\n"  # row 4
        "lon_low,10,-180.5\r\n"  # row 5
        "no_coords,,\r\n"  # row 6
        "nan_coords,NaN,12\r\n"  # row 7
        "dup_conflict,1,1\r\n"  # row 8
        "dup_conflict,2,2\r\n"  # row 9
        "dup_exact,5,5\r\n"  # row 10
        "dup_exact,5,5\r\n"  # row 11: exact repeat
        "../../etc/passwd,1,1\r\n"  # row 12
        "missing_file,1,1\r\n"  # row 13
        "truncated,1,1\r\n"  # row 14
        "placeholder,1,1\r\n"  # row 15
        "bomb,1,1\r\n"  # row 16
        "grey16,49.18,1.65\r\n"  # row 17
        "not_an_image,1,1\r\n"  # row 18
    )
    return images, table


def reasons_by_row(rejected: pl.DataFrame) -> dict[int, str]:
    return {row: reason for row, reason in rejected.select("row", "reason").iter_rows()}


def test_every_bad_row_is_quarantined_with_row_and_reason(messy_dataset):
    images, table = messy_dataset
    result = ingest(images, table, ColumnMap(), configured(IngestSettings))
    reasons = reasons_by_row(result.rejected)
    assert reasons == {
        4: "bad_latitude",
        5: "bad_longitude",
        6: "missing_coordinates",
        7: "missing_coordinates",
        8: "duplicate_id",
        9: "duplicate_id",
        11: "duplicate_row",
        12: "unsafe_id",
        13: "missing_file",
        14: "undecodable",
        15: "too_small",
        16: "decompression_bomb",
        18: "undecodable",
    }
    # Nothing valid is dropped: the valid rows, the exact duplicate's first copy, the 16-bit TIFF.
    assert sorted(result.manifest["image_id"]) == sorted(
        ["good_a", "good_b", "1000269685_e60e9cdfb4_1125_78841376@N00", "dup_exact", "grey16"]
    )
    details = dict(result.rejected.select("row", "detail").iter_rows())
    assert "91.5" in details[4] and "[-90, 90]" in details[4]
    assert "escape" in details[12]
    assert "1x1" in details[15]
    assert "2,500,000,000 pixels exceeds ingest.max_image_pixels = 89,478,485" in details[16]
    assert set(result.rejected["source"]) == {str(table)}


def test_manifest_rows_carry_hash_size_format_and_country(messy_dataset):
    images, table = messy_dataset
    manifest = ingest(images, table, ColumnMap(), configured(IngestSettings)).manifest
    paris = manifest.filter(pl.col("image_id") == "good_a").row(0, named=True)
    import hashlib

    assert paris["sha256"] == hashlib.sha256((images / "good_a.jpg").read_bytes()).hexdigest()
    assert (paris["width"], paris["height"], paris["format"]) == (96, 64, "JPEG")
    assert paris["country_code"] == "FR" and paris["coord_source"] == "table"
    assert paris["source_row"] == 1
    bermuda = manifest.filter(pl.col("image_id").str.contains("@")).row(0, named=True)
    assert bermuda["country_code"] == "BM"
    assert manifest.filter(pl.col("image_id") == "grey16")["mode"].item() == "I;16"


def test_fail_policy_stops_with_every_problem_named(messy_dataset):
    images, table = messy_dataset
    with pytest.raises(GeolocsftError) as excinfo:
        ingest(images, table, ColumnMap(), configured(IngestSettings, on_bad_input="fail"))
    message = str(excinfo.value)
    assert "13 unusable" in message
    assert f"{table}, row 4" in message and "bad_latitude" in message
    assert "row 13" in message and "missing_file" in message
    assert "truncated" in message and "undecodable" in message


def test_high_bit_depth_can_be_rejected_and_converts_without_clipping(tmp_path):
    tiff = write_16bit_tiff(tmp_path / "grey16.tif")
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\ngrey16,49.18,1.65\n")
    with pytest.raises(GeolocsftError, match="high_bit_depth"):
        ingest(tmp_path, table, ColumnMap(), configured(IngestSettings, high_bit_depth="reject"))
    with Image.open(tiff) as image:
        rgb = to_rgb8(image)
    assert rgb.mode == "RGB"
    extrema = rgb.convert("L").getextrema()
    assert extrema[0] < 10 and extrema[1] > 245  # rescaled to the full 8-bit range


def test_exif_gps_of_the_demo_photos_matches_their_source_metadata():
    result = ingest(DEMO_IMAGES, None, ColumnMap(), configured(IngestSettings))
    assert result.rejected.height == 0
    assert result.manifest.height == len(list(DEMO_IMAGES.iterdir())) - 0
    rome = result.manifest.filter(pl.col("image_id") == "Apple_iPhone_4").row(0, named=True)
    assert rome["lat"] == pytest.approx(41.853, abs=1e-5)
    assert rome["lon"] == pytest.approx(12.488833, abs=1e-5)
    assert rome["country_code"] == "IT" and rome["coord_source"] == "exif"
    assert set(result.manifest["coord_source"]) == {"exif"}


def test_images_without_exif_gps_are_reported_when_no_table_is_given(tmp_path):
    write_photo(tmp_path / "plain.jpg")
    with pytest.raises(GeolocsftError, match="no_exif_gps"):
        ingest(tmp_path, None, ColumnMap(), configured(IngestSettings))


@pytest.mark.parametrize(
    ("header", "columns"),
    [
        ("image_id,lat,lon", ColumnMap()),
        ("id,latitude,longitude", ColumnMap()),
        ("IMG_ID,LAT,LON", ColumnMap()),
        ("name,Latitude,lng", ColumnMap()),
        ("photo,y_deg,x_deg", ColumnMap(id="photo", lat="y_deg", lon="x_deg")),
    ],
)
def test_real_dataset_column_names_are_recognised(tmp_path, header, columns):
    write_photo(tmp_path / "img" / "a b@N00.jpg")
    table = tmp_path / "t.csv"
    table.write_text(f"{header}\na b@N00.jpg,10.5,-20.25\n")
    manifest = ingest(tmp_path / "img", table, columns, configured(IngestSettings)).manifest
    assert manifest.select("image_id", "lat", "lon").row(0) == ("a b@N00", 10.5, -20.25)


def test_parquet_table_with_file_column_relative_to_the_table(tmp_path):
    write_photo(tmp_path / "data" / "pics" / "x.webp")
    table = tmp_path / "data" / "meta.parquet"
    pl.DataFrame({"file": ["pics/x.webp"], "lat": [1.0], "lon": [2.0]}).write_parquet(table)
    manifest = ingest(
        tmp_path / "elsewhere", table, ColumnMap(), configured(IngestSettings)
    ).manifest
    assert manifest.select("image_id", "format").row(0) == ("x", "WEBP")


def test_missing_columns_name_the_table_and_its_columns(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("picture,where\na,b\n")
    with pytest.raises(InputTableError) as excinfo:
        check_table_columns(table, ColumnMap())
    message = str(excinfo.value)
    assert str(table) in message and "no lat column" in message and "picture, where" in message
    with pytest.raises(InputTableError, match=r"'latitude_deg' \(columns.lat in config\) is not"):
        check_table_columns(table, ColumnMap(lat="latitude_deg"))


def test_unlabelled_images_are_counted_not_ingested(tmp_path):
    write_photo(tmp_path / "a.jpg")
    write_photo(tmp_path / "stray.jpg")
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\na,1,2\n")
    result = ingest(tmp_path, table, ColumnMap(), configured(IngestSettings))
    assert result.manifest["image_id"].to_list() == ["a"]
    assert result.summary["unlabelled_images"] == 1
    assert result.summary["unlabelled_examples"] == ["stray.jpg"]


def test_split_is_deterministic_and_stable_when_images_are_added():
    ids = [f"img{i:04d}" for i in range(2000)]
    first = assign_split(ids, 0.2, "salt")
    grown = assign_split([*ids, *(f"new{i}" for i in range(500))], 0.2, "salt")
    assert grown[: len(ids)] == first
    assert 0.17 < first.count("test") / len(ids) < 0.23
    assert assign_split(ids, 0.2, "other salt") != first


def test_id_rules():
    assert normalise_image_id(" 123_abc@N00.JPG ") == "123_abc@N00"
    assert normalise_image_id("archive.tar") == "archive.tar"
    for bad in ["../x", "a/b", "a\\b", ".hidden", "", "tab\there"]:
        assert unsafe_id_reason(bad)
    assert unsafe_id_reason("Zürich 2019 @home") is None


def test_outputs_are_written(tmp_path, messy_dataset):
    images, table = messy_dataset
    result = ingest(images, table, ColumnMap(), configured(IngestSettings))
    out = tmp_path / "out"
    write_outputs(result, out / "m.parquet", out / "rejected.csv", out / "summary.json")
    assert pl.read_parquet(out / "m.parquet").height == 5
    rejected = pl.read_csv(out / "rejected.csv")
    assert rejected.columns == ["source", "row", "image_id", "path", "reason", "detail"]
    assert rejected.height == 13
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected_by_reason"]["missing_coordinates"] == 2


def test_im2gps3k_label_file_with_ids_carrying_extensions(shared_dir):
    sample = shared_dir / "data" / "im2gps3k-sample"
    result = ingest(
        sample / "images",
        sample / "im2gps3k_all_metadata.csv",
        ColumnMap(id="IMG_ID"),
        configured(IngestSettings),
        split_mode="all_test",
    )
    assert result.manifest.height == 200
    assert set(result.manifest["split"]) == {"test"}
    assert result.manifest["image_id"].str.contains("@").all()
    # Labels whose photo is not in the 200-image sample are reported, not silently dropped.
    assert result.summary["rejected_by_reason"] == {"missing_file": 2797}


def test_configured_pixel_limit_rejects_before_decoding(tmp_path):
    write_photo(tmp_path / "big.jpg", size=(120, 100))
    write_photo(tmp_path / "ok.jpg", size=(40, 40))
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\nbig,1,1\nok,1,1\n")
    result = ingest(tmp_path, table, ColumnMap(), configured(IngestSettings, max_image_pixels=5000))
    assert result.manifest["image_id"].to_list() == ["ok"]
    row = result.rejected.row(0, named=True)
    assert row["reason"] == "decompression_bomb"
    assert "12,000 pixels exceeds ingest.max_image_pixels = 5,000" in row["detail"]
    assert "before decoding" in row["detail"]


def test_pixel_limit_can_be_raised_above_pillows_default(tmp_path):
    """A 10000x10000 scan (1e8 pixels: over Pillow's 89,478,485) is accepted under a higher
    configured limit, Pillow's own limit follows the setting, and a lower limit refuses it with
    a message that agrees with the setting."""
    Image.new("L", (10_000, 10_000), 128).save(tmp_path / "scan.png")
    write_photo(tmp_path / "ok.jpg")
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\nscan,1,1\nok,1,1\n")
    raised = configured(IngestSettings, max_image_pixels=200_000_000)
    result = ingest(tmp_path, table, ColumnMap(), raised)
    assert result.rejected.height == 0
    scan = result.manifest.filter(pl.col("image_id") == "scan")
    assert scan.select("width", "height", "mode").row(0) == (10_000, 10_000, "L")
    assert Image.MAX_IMAGE_PIXELS == 200_000_000
    # Below Pillow's default, between it and twice it (Pillow's warning), and above twice it.
    for limit in (40_000_000, 60_000_000, 99_999_999):
        settings = configured(IngestSettings, max_image_pixels=limit)
        row = ingest(tmp_path, table, ColumnMap(), settings).rejected.row(0, named=True)
        assert (row["image_id"], row["reason"]) == ("scan", "decompression_bomb")
        assert row["detail"].startswith(
            f"100,000,000 pixels exceeds ingest.max_image_pixels = {limit:,}"
        ), row["detail"]


def test_images_without_a_metadata_row_are_rejected_and_stop_a_fail_run(tmp_path):
    write_photo(tmp_path / "images" / "a.jpg")
    write_photo(tmp_path / "images" / "stray.jpg", seed=1)
    write_photo(tmp_path / "images" / "sub" / "lost.png", seed=2)
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\na,1,2\n")
    result = ingest(tmp_path / "images", table, ColumnMap(), configured(IngestSettings))
    assert result.manifest["image_id"].to_list() == ["a"]
    rows = result.rejected.select("image_id", "path", "reason", "row").rows()
    assert sorted(rows) == [
        ("stray", f"{(tmp_path / 'images/stray.jpg').as_posix()}", "no_metadata_row", None),
        ("sub__lost", f"{(tmp_path / 'images/sub/lost.png').as_posix()}", "no_metadata_row", None),
    ]
    with pytest.raises(GeolocsftError, match="no_metadata_row"):
        ingest(
            tmp_path / "images",
            table,
            ColumnMap(),
            configured(IngestSettings, on_bad_input="fail"),
        )


def test_fail_mode_writes_every_problem_before_stopping(tmp_path):
    for i in range(3):
        write_photo(tmp_path / "images" / f"ok{i}.jpg", seed=i)
    table = tmp_path / "t.csv"
    table.write_text(
        "id,lat,lon\n"
        + "".join(f"ok{i},1,1\n" for i in range(3))
        + "".join(f"ghost{i},1,1\n" for i in range(24))
    )
    report = tmp_path / "logs" / "corpus-rejected.csv"
    settings = configured(IngestSettings, on_bad_input="fail")
    with pytest.raises(GeolocsftError) as excinfo:
        ingest(tmp_path / "images", table, ColumnMap(), settings, failure_report=report)
    message = str(excinfo.value)
    assert "24 unusable" in message and "… and 4 more" in message
    assert f"All 24 are listed in {report}" in message
    listed = pl.read_csv(report)
    assert listed.columns == ["source", "row", "image_id", "path", "reason", "detail"]
    assert sorted(listed["image_id"]) == sorted(f"ghost{i}" for i in range(24))
    assert set(listed["reason"]) == {"missing_file"}
    # A later successful run removes the stale report.
    table.write_text("id,lat,lon\n" + "".join(f"ok{i},1,1\n" for i in range(3)))
    ingest(tmp_path / "images", table, ColumnMap(), settings, failure_report=report)
    assert not report.exists()


def test_a_windows_1252_table_is_named_or_read_when_declared(tmp_path):
    write_photo(tmp_path / "images" / "café.jpg")
    table = tmp_path / "t.csv"
    table.write_bytes("id,lat,lon\ncafé,48.85,2.35\n".encode("cp1252"))
    with pytest.raises(InputTableError) as excinfo:
        ingest(tmp_path / "images", table, ColumnMap(), configured(IngestSettings))
    message = str(excinfo.value)
    assert str(table) in message and "not valid utf-8" in message and "line 2" in message
    assert "Windows-1252" in message and "'café,48.85,2.35'" in message
    assert "encoding: cp1252" in message
    result = ingest(
        tmp_path / "images", table, ColumnMap(), configured(IngestSettings), encoding="cp1252"
    )
    assert result.manifest["image_id"].to_list() == ["café"]
    # The header alone (parse time) is checked with the same encoding.
    header = tmp_path / "h.csv"
    header.write_bytes("id,latitude °,lon\n".encode("cp1252"))
    with pytest.raises(InputTableError, match="header is not valid utf-8"):
        check_table_columns(header, ColumnMap())
    assert check_table_columns(header, ColumnMap(lat="latitude °"), "cp1252").lat == "latitude °"


def test_utf16_table_is_recognised(tmp_path):
    table = tmp_path / "t.csv"
    table.write_bytes("id,lat,lon\na,1,2\n".encode("utf-16"))
    with pytest.raises(InputTableError, match="UTF-16 byte-order mark"):
        ingest(tmp_path, table, ColumnMap(), configured(IngestSettings))


def test_empty_and_non_numeric_coordinates_are_described_plainly(tmp_path):
    for name in ("a", "b", "c", "ok"):
        write_photo(tmp_path / f"{name}.jpg")
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\na,,2\nb,north,2\nc,1,inf\nok,1,2\n")
    settings = configured(IngestSettings)
    rejected = ingest(tmp_path, table, ColumnMap(), settings, failure_report=None)
    details = dict(rejected.rejected.select("image_id", "detail").iter_rows())
    assert details["a"] == "lat is empty"
    assert details["b"] == "lat = 'north' is not a number"
    assert details["c"] == "lon = 'inf' is not a finite number"
    assert "None" not in " ".join(details.values())


def test_reverse_geocoding_is_memoized_per_point(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """Places of points seen before come from the memo: a second run with two new points
    searches the places table for those two only, and gives the columns of a search of all."""
    from geolocsft import geocode

    searched: list[int] = []
    real = geocode.reverse_geocode

    def counted(lat, lon, max_km: float = 100.0) -> pl.DataFrame:
        searched.append(len(lat))
        return real(lat, lon, max_km)

    monkeypatch.setattr(geocode, "reverse_geocode", counted)
    lat = pl.Series([48.8566, 32.3078, 41.9028, 48.8566, 0.0])  # Paris twice, the open sea
    lon = pl.Series([2.3522, -64.7505, 12.4964, 2.3522, -140.0])
    memo = tmp_path / "memo"
    first = geocode.reverse_geocode_memoized(lat, lon, 100.0, memo)
    assert searched == [4]  # each distinct point once
    assert first["country_code"].to_list() == ["FR", "BM", "IT", "FR", None]
    more_lat, more_lon = (
        pl.concat([lat, pl.Series([35.6762, 0.1 + 0.2])]),
        pl.concat([lon, pl.Series([139.6503, 0.3])]),
    )
    again = geocode.reverse_geocode_memoized(more_lat, more_lon, 100.0, memo)
    assert searched == [4, 2]
    assert again.equals(real(more_lat, more_lon, 100.0))
    geocode.reverse_geocode_memoized(lat, lon, 50.0, memo)  # another distance: another memo
    assert searched == [4, 2, 4]


def test_the_listing_kept_with_its_digest_is_the_folder_scan(tmp_path):
    """listing_digests keeps the listing under the digest it computed (the ingest job then
    reads it instead of walking the folder again); a changed folder has another digest."""
    from geolocsft.image_folder import (
        combined_digest,
        listing_digests,
        remembered_listing,
        scan_images,
    )

    folder = tmp_path / "photos"
    for i in range(3):
        write_photo(folder / f"sub{i % 2}" / f"p{i}.jpg", seed=i)
    memo = tmp_path / "memo"
    assert listing_digests(folder) == listing_digests(folder, memo_dir=memo)  # same digests
    digest = combined_digest(listing_digests(folder))
    kept = remembered_listing(memo, digest)
    assert kept is not None and kept.equals(scan_images(folder))
    write_photo(folder / "p9.jpg", seed=9)
    assert combined_digest(listing_digests(folder)) != digest
    assert remembered_listing(memo, combined_digest(listing_digests(folder))) is None
    settings = configured(IngestSettings)
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\np0,1,2\np1,3,4\np2,5,6\n")
    columns = ColumnMap()
    walked = ingest(folder, table, columns, settings)
    given = ingest(folder, table, columns, settings, scan=kept)
    assert walked.manifest.drop("path").equals(given.manifest.drop("path"))
