"""Ingest at the item level: nested folders, the per-image memo, phash, split groups, parts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import DEMO_IMAGES, write_photo
from PIL import Image

from geolocsft.errors import GeolocsftError
from geolocsft.image_check import IMAGE_CHECKS_KIND, dhash_hex
from geolocsft.image_folder import id_from_relpath, listing_digests, scan_images
from geolocsft.images import open_upright_rgb
from geolocsft.ingest import IngestSettings, ingest, write_outputs, write_part
from geolocsft.ingest_plan import check_plan, plan_dataset
from geolocsft.layout import part_of
from geolocsft.settings import configured
from geolocsft.tables import ColumnMap


def exif_corpus(root: Path) -> Path:
    """The demo photos (EXIF GPS) in nested folders, as MP16/OSV-5M ship them."""
    for i, photo in enumerate(sorted(DEMO_IMAGES.iterdir())):
        target = root / f"{i % 3:02d}" / ("deep" if i % 2 else "") / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo.read_bytes())
    return root


def test_nested_folders_give_ids_from_relative_paths(tmp_path):
    images = exif_corpus(tmp_path / "images")
    (images / ".hidden").mkdir()
    write_photo(images / ".hidden" / "x.jpg")
    write_photo(images / "00" / "._shadow.jpg")
    result = ingest(images, None, ColumnMap(), configured(IngestSettings))
    manifest = result.manifest
    assert manifest.height == len(list(DEMO_IMAGES.iterdir()))
    assert result.rejected.height == 0  # hidden files and folders are not images
    ids = set(manifest["image_id"])
    assert "00__Apple_iPhone_4" in ids and "01__deep__Apple_iPhone_5" in ids
    row = manifest.filter(pl.col("image_id") == "01__deep__Apple_iPhone_5").row(0, named=True)
    assert row["path"] == (images / "01/deep/Apple_iPhone_5.jpg").as_posix()
    assert all("/" not in i for i in ids)
    assert id_from_relpath("a/b/c.JPG") == "a__b__c" and id_from_relpath("c.jpg") == "c"


def test_table_ids_find_files_anywhere_in_the_tree_or_at_their_relative_path(tmp_path):
    images = tmp_path / "images"
    write_photo(images / "train" / "00" / "123456.jpg", seed=1)  # OSV-5M: id without folder
    write_photo(images / "e4" / "5b" / "3413224425.jpg", seed=2)  # MP16: id with folders
    write_photo(images / "a" / "same.jpg", seed=3)
    write_photo(images / "b" / "same.jpg", seed=4)
    table = tmp_path / "t.csv"
    table.write_text(
        "id,lat,lon\n123456,1,1\ne4/5b/3413224425.jpg,2,2\nsame,3,3\na/same,4,4\n"
        "../../etc/passwd,5,5\n"
    )
    result = ingest(images, table, ColumnMap(), configured(IngestSettings))
    assert result.manifest.select("image_id", "source_row").rows() == [
        ("123456", 1),
        ("e4__5b__3413224425", 2),
        ("a__same", 4),
    ]
    reasons = dict(result.rejected.select("row", "reason").iter_rows())
    assert reasons == {3: "ambiguous_file", 5: "unsafe_id", None: "no_metadata_row"}
    assert "escape" in result.rejected.filter(pl.col("row") == 5)["detail"].item()


def test_colliding_nested_ids_are_refused_not_merged(tmp_path):
    photos = sorted(DEMO_IMAGES.glob("*.jpg"))
    for relative, photo in (
        ("a/b__c.jpg", photos[0]),
        ("a__b/c.jpg", photos[1]),
        ("ok.jpg", photos[2]),
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(photo.read_bytes())
    result = ingest(tmp_path, None, ColumnMap(), configured(IngestSettings))
    assert result.manifest["image_id"].to_list() == ["ok"]
    assert result.rejected.select("image_id", "reason").rows() == [
        ("a__b__c", "duplicate_id"),
        ("a__b__c", "duplicate_id"),
    ]


def age(folder: Path, seconds: float = 3600) -> None:
    """Files last modified an hour ago (the memo keeps no file modified in the last 2 s)."""
    for path in folder.rglob("*"):
        if path.is_file():
            info = path.stat()
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns - int(seconds * 1e9)))


def test_memo_reads_only_new_or_changed_images_and_reused_rows_are_identical(tmp_path):
    images = exif_corpus(tmp_path / "images")
    age(images)
    memo = tmp_path / "memo"
    settings = configured(IngestSettings)
    first = ingest(images, None, ColumnMap(), settings, memo_dir=memo)
    assert first.manifest.height > 0
    fresh = ingest(images, None, ColumnMap(), settings)  # no memo: everything recomputed
    reused = ingest(images, None, ColumnMap(), settings, memo_dir=memo)
    assert reused.manifest.equals(fresh.manifest) and reused.rejected.equals(fresh.rejected)
    out_fresh, out_reused = tmp_path / "fresh", tmp_path / "reused"
    for result, out in ((fresh, out_fresh), (reused, out_reused)):
        write_outputs(result, out / "m.parquet", out / "r.csv", out / "s.json", out / "l.parquet")
    for name in ("m.parquet", "r.csv", "l.parquet"):
        assert (out_fresh / name).read_bytes() == (out_reused / name).read_bytes(), name
    # The corpus copied elsewhere with its mtimes (a node's scratch disk) is still known.
    copy = shutil.copytree(images, tmp_path / "scratch" / "images")
    elsewhere = ingest(copy, None, ColumnMap(), settings, memo_dir=memo)
    assert (
        elsewhere.summary["checked_now"] == 0 and elsewhere.manifest.height == first.manifest.height
    )

    # An unchanged file costs a stat: overwrite one in place with other bytes of the same size
    # and restore its mtime: the memo answers without reading it.
    victim = next(images.rglob("HTC_Desire.jpg"))
    info = victim.stat()
    with victim.open("r+b") as handle:
        handle.seek(info.st_size // 2)
        handle.write(b"\0" * 64)
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    same = ingest(images, None, ColumnMap(), settings, memo_dir=memo)
    assert same.manifest.equals(fresh.manifest)
    # A changed mtime is a changed file: it is read again (and its new sha256 is seen).
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns + 5_000_000_000))
    # A file modified just now is checked, but not memoized (it may change again within the
    # file system's clock tick): each run reads it.
    fresh_file = images / "00" / "just_now.jpg"
    fresh_file.write_bytes((DEMO_IMAGES / "HTC_Desire.jpg").read_bytes())
    changed = ingest(images, None, ColumnMap(), settings, memo_dir=memo)
    row = changed.manifest.filter(pl.col("path").str.ends_with("/HTC_Desire.jpg"))
    old = fresh.manifest.filter(pl.col("path").str.ends_with("/HTC_Desire.jpg"))
    assert row["sha256"].item() != old["sha256"].item()
    records = pl.read_parquet(next((memo / IMAGE_CHECKS_KIND).rglob("*.parquet")).parent)
    assert not records["key"].str.starts_with("00/just_now.jpg").any()
    assert changed.manifest["image_id"].str.contains("just_now").any()


def test_memo_version_follows_the_limits(tmp_path):
    write_photo(tmp_path / "images" / "a.jpg", size=(64, 64))
    write_photo(tmp_path / "images" / "b.jpg", size=(16, 16))
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\na,1,1\nb,1,1\n")
    age(tmp_path / "images")
    memo = tmp_path / "memo"
    strict = ingest(
        tmp_path / "images", table, ColumnMap(), configured(IngestSettings), memo_dir=memo
    )
    assert strict.rejected["reason"].to_list() == ["too_small"]
    lenient = configured(IngestSettings, min_side_px=8)
    assert (
        ingest(tmp_path / "images", table, ColumnMap(), lenient, memo_dir=memo).rejected.height == 0
    )
    assert len(list((memo / IMAGE_CHECKS_KIND).iterdir())) == 2  # one memo per set of limits


def numpy_dhash(image: Image.Image) -> str:
    """An independent dHash: greyscale 9x8 Lanczos, bit = right brighter than left."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=int)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return f"{sum(int(b) << (63 - i) for i, b in enumerate(bits)):016x}"


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def test_phash_is_the_dhash_of_the_upright_image_and_finds_near_duplicates(tmp_path):
    result = ingest(DEMO_IMAGES, None, ColumnMap(), configured(IngestSettings))
    for row in result.manifest.iter_rows(named=True):
        assert row["phash"] == numpy_dhash(open_upright_rgb(Path(row["path"]))), row["image_id"]
    # EXIF orientation: a photo stored sideways with orientation 6 hashes like its upright twin.
    photo = open_upright_rgb(DEMO_IMAGES / "HTC_Desire.jpg")
    sideways = photo.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)
    photo.save(tmp_path / "upright.jpg", quality=95)
    photo.resize((photo.width // 3, photo.height // 3)).save(tmp_path / "small.jpg", quality=60)
    (tmp_path / "other.jpg").write_bytes((DEMO_IMAGES / "Apple_iPhone_4.jpg").read_bytes())
    table = tmp_path / "t.csv"
    table.write_text("id,lat,lon\nsideways,1,1\nupright,1,1\nsmall,1,1\nother,1,1\n")
    hashes = dict(
        ingest(tmp_path, table, ColumnMap(), configured(IngestSettings))
        .manifest.select("image_id", "phash")
        .iter_rows()
    )
    assert hamming(hashes["sideways"], hashes["upright"]) <= 2
    assert hamming(hashes["small"], hashes["upright"]) <= 6
    assert hamming(hashes["other"], hashes["upright"]) >= 16
    assert dhash_hex(Image.new("L", (90, 80), 7)) == "0000000000000000"
    ramp = Image.fromarray(np.tile(np.arange(0, 180, 2, dtype=np.uint8), (80, 1)))
    assert dhash_hex(ramp) == "ffffffffffffffff"


def test_split_by_a_column_keeps_each_group_on_one_side(tmp_path):
    rows = ["id,lat,lon,user"]
    for i in range(120):
        write_photo(tmp_path / "images" / f"p{i}.jpg", seed=i, size=(40, 40))
        rows.append(f"p{i},{i % 80},{i % 170},u{i % 12}")
    table = tmp_path / "t.csv"
    table.write_text("\n".join(rows) + "\n")
    settings = configured(IngestSettings, split_by="user", test_fraction=0.3)
    manifest = ingest(tmp_path / "images", table, ColumnMap(), settings).manifest
    sides = manifest.group_by("split_group").agg(pl.col("split").n_unique().alias("sides"))
    assert sides["sides"].max() == 1 and sides.height == 12
    assert set(manifest["split"]) == {"train", "test"}
    by_id = ingest(tmp_path / "images", table, ColumnMap(), configured(IngestSettings)).manifest
    assert by_id["split_group"].to_list() == by_id["image_id"].to_list()


def test_split_group_pattern_over_flickr_ids(tmp_path):
    users = ["78841376@N00", "12345678@N05", "99999999@N02"]
    rows = ["IMG_ID,LAT,LON"]
    for i in range(60):
        name = f"{1000000 + i}_abcdef{i:02d}_{1000 + i}_{users[i % 3]}.jpg"
        write_photo(tmp_path / "images" / name, seed=i, size=(40, 40))
        rows.append(f"{name},{i},{i}")
    write_photo(tmp_path / "images" / "no_user_here.jpg", size=(40, 40))
    rows.append("no_user_here.jpg,1,1")
    table = tmp_path / "t.csv"
    table.write_text("\n".join(rows) + "\n")
    settings = configured(IngestSettings, split_group_pattern=r"_(\d+@N\d+)$", test_fraction=0.5)
    result = ingest(tmp_path / "images", table, ColumnMap(id="IMG_ID"), settings)
    manifest = result.manifest
    assert set(manifest["split_group"]) == {*users, "no_user_here"}
    for user in users:
        assert manifest.filter(pl.col("split_group") == user)["split"].n_unique() == 1
    assert result.summary["split_group_fallbacks"] == 1
    with pytest.raises(GeolocsftError, match="not a regular expression"):
        ingest(
            tmp_path / "images",
            table,
            ColumnMap(id="IMG_ID"),
            configured(IngestSettings, split_group_pattern="(unclosed"),
        )


def test_listing_digest_changes_with_any_image_of_its_part_and_only_that_part(tmp_path):
    images = exif_corpus(tmp_path / "images")
    before = listing_digests(images, 4)
    assert listing_digests(images, 4) == before  # deterministic
    # A copy that keeps the mtimes (cp -p, rsync -a: new inodes) is the same listing.
    assert listing_digests(shutil.copytree(images, tmp_path / "copy"), 4) == before
    (images / "notes.txt").write_text("not an image")
    assert listing_digests(images, 4) == before
    new = images / "01" / "deep" / "new.jpg"
    write_photo(new)
    after = listing_digests(images, 4)
    changed = [k for k in range(4) if after[k] != before[k]]
    assert changed == [part_of("01/deep/new.jpg", 4)]
    os.utime(new, ns=(0, 10**18))
    assert listing_digests(images, 4)[changed[0]] != after[changed[0]]
    assert scan_images(images).height == len(list(DEMO_IMAGES.iterdir())) + 1


def test_parts_checked_separately_gather_into_the_same_manifest(tmp_path):
    images = exif_corpus(tmp_path / "images")
    settings = configured(IngestSettings)
    whole = ingest(images, None, ColumnMap(), settings)
    plan = plan_dataset(images, None, ColumnMap())
    part_files = []
    seen: list[str] = []
    for part in range(3):
        checked = check_plan(plan, settings.limits, 1, None, part=part, parts=3)
        assert all(part_of(r, 3) == part for r in checked["relpath"])
        seen += checked["relpath"].to_list()
        part_files.append(tmp_path / f"part-{part}.parquet")
        write_part(checked, part_files[-1])
    assert sorted(seen) == sorted(plan.frame["relpath"])  # every image in exactly one part
    gathered = ingest(images, None, ColumnMap(), settings, part_files=part_files)
    assert gathered.manifest.equals(whole.manifest)
    assert gathered.listing is not None and gathered.listing.equals(whole.listing)
