"""Per-item work in worker processes: same results, in order, as in one process; errors reach
the caller; and the image stages give byte-identical items either way."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import write_photo, write_truncated_jpeg

from geolocsft.errors import BadImageError
from geolocsft.features import FeatureSettings, compute_features
from geolocsft.image_check import CheckLimits, check_images
from geolocsft.parallel import MIN_ITEMS_FOR_WORKERS, map_in_processes
from geolocsft.settings import configured
from geolocsft.sft.dataset import IMAGE_SCHEMA, DatasetSettings, prepare_media

COUNT = MIN_ITEMS_FOR_WORKERS + 16  # enough items for the worker processes to start


def doubled_with_pid(item: int) -> tuple[int, int]:
    return item * 2, os.getpid()


def fails_on_100(item: int) -> int:
    if item == 100:
        raise BadImageError(f"item {item}: cannot decode")
    return item


def test_results_come_back_in_order_from_other_processes():
    results = list(map_in_processes(doubled_with_pid, list(range(500)), workers=2))
    assert [value for value, _ in results] == [2 * i for i in range(500)]
    pids = {pid for _, pid in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_few_items_or_one_worker_run_in_this_process():
    few = list(map_in_processes(doubled_with_pid, list(range(5)), workers=2))
    one = list(map_in_processes(doubled_with_pid, list(range(500)), workers=1))
    assert {pid for _, pid in few + one} == {os.getpid()}


def test_an_error_in_a_worker_reaches_the_caller_with_its_message():
    with pytest.raises(BadImageError, match="item 100: cannot decode"):
        list(map_in_processes(fails_on_100, list(range(2000)), workers=2))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    return [write_photo(folder / f"p{i:03d}.jpg", seed=i, size=(300, 200)) for i in range(COUNT)]


def test_features_from_worker_processes_equal_those_computed_here(photos):
    manifest = pl.DataFrame(
        {
            "image_id": [p.stem for p in photos],
            "path": [str(p) for p in photos],
            "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos],
        }
    )
    settings = configured(FeatureSettings)
    here = compute_features(manifest, settings, workers=1)
    workers = compute_features(manifest, settings, workers=2)
    assert here["image_id"].to_list() == manifest["image_id"].to_list()
    np.testing.assert_array_equal(here["features"].to_numpy(), workers["features"].to_numpy())


def test_media_from_worker_processes_are_byte_identical(photos, tmp_path):
    images = pl.DataFrame(
        {
            "image_id": [p.stem for p in photos],
            "path": [str(p) for p in photos],
            "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos],
            "lat": [0.0] * len(photos),
            "lon": [0.0] * len(photos),
            "caption_path": [None] * len(photos),
            "caption_sha256": [None] * len(photos),
        },
        schema=IMAGE_SCHEMA,
    )
    settings = configured(DatasetSettings, name="geo", image_max_side=128)
    here, made_here = prepare_media(images, settings, tmp_path / "one", False, workers=1)
    there, made_there = prepare_media(images, settings, tmp_path / "two", False, workers=2)
    assert made_here == made_there == COUNT
    assert here.equals(there)
    blobs = sorted((tmp_path / "two" / "blobs").rglob("*"))
    stored = [b for b in blobs if b.is_file()]
    assert len(stored) == COUNT and not [b for b in stored if b.name.endswith(".tmp")]
    assert all(oct(b.stat().st_mode)[-3:] == "444" for b in stored)  # read-only blobs


def test_image_checks_from_worker_processes_equal_those_made_here(photos, tmp_path):
    bad = write_truncated_jpeg(tmp_path / "cut.jpg")
    files = [str(p) for p in photos] + [str(bad), str(tmp_path / "gone.jpg")]
    table = pl.DataFrame(
        {"file": files, "key": [None] * len(files), "mtime_ns": [0] * len(files)},
        schema={"file": pl.String, "key": pl.String, "mtime_ns": pl.Int64},
    )
    limits = CheckLimits(max_image_pixels=10**8, min_side_px=32, high_bit_depth="convert")
    here = check_images(table, limits, None, workers=1)
    there = check_images(table, limits, None, workers=2)
    assert here.equals(there)
    assert here["reason"].to_list()[-2:] == ["undecodable", "missing_file"]
    assert here["sha256"].to_list()[0] == hashlib.sha256(photos[0].read_bytes()).hexdigest()


def test_a_job_with_few_new_items_asks_for_one_thread():
    from geolocsft.parallel import PARALLEL_FROM_NEW_ITEMS, threads_for_new_items

    assert threads_for_new_items(2, None) == 2  # inputs not made yet: the rule's threads
    assert threads_for_new_items(2, PARALLEL_FROM_NEW_ITEMS) == 2
    assert threads_for_new_items(2, PARALLEL_FROM_NEW_ITEMS - 1) == 1
    assert threads_for_new_items(8, 0) == 1
    assert threads_for_new_items(8, 5, parallel_from=5) == 8
