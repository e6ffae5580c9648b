"""Hub acquisition: the real huggingface_hub client against the loopback Hub stand-in.

Nothing is mocked but the Hub itself, which cannot be reached from here:
``geolocsft.testing.hub_standin`` serves its API and file routes on 127.0.0.1 and the client
finds it through ``HF_ENDPOINT``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import REPO
from PIL import Image

from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.hub.acquire import acquire_dataset
from geolocsft.hub.fetch import fetch_repo
from geolocsft.hub.remote import repo_cache_dir
from geolocsft.hub.retry import RetryPolicy
from geolocsft.hub.unpack import unpack
from geolocsft.hub.unpacking import ACQUIRED_COLUMNS, AcquireColumns, UnpackSettings
from geolocsft.ingest import IngestResult, IngestSettings, ingest
from geolocsft.settings import configured
from geolocsft.sft.models import download_model
from geolocsft.tables import ColumnMap
from geolocsft.testing.hub_standin import HubRepo, HubStandin

FAST = configured(RetryPolicy, max_attempts=3, backoff_s=0.01)


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small, real JPEG with random content (deterministic per seed)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def parquet(rows: list[dict[str, object]]) -> bytes:
    image_type = pl.Struct({"bytes": pl.Binary, "path": pl.String})
    frame = pl.DataFrame(
        rows,
        schema={
            "image": image_type,
            "id": pl.String,
            "latitude": pl.Float64,
            "longitude": pl.Float64,
        },
    )
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def pig_like_repo() -> HubRepo:
    """A PIG_R1-like dataset repo: an image archive plus a metadata table."""
    images = {f"HFRL/images/{i:03d}.jpg": jpeg(i) for i in range(6)}
    images["__MACOSX/HFRL/images/._000.jpg"] = b"\x00\x05\x16\x07 AppleDouble junk"
    table = (
        "new_id,lat,lon,region\n"
        "000,48.8566,2.3522,Paris\n"
        "001,35.6762,139.6503,Tokyo\n"
        "002,-33.8688,151.2093,Sydney\n"
        "003,40.7128,-74.0060,New York\n"
        "004,,,unknown\n"  # no coordinates: reported by ingest, not dropped
        "999,10.0,10.0,no image\n"  # no such image in the archive
    )
    return HubRepo(
        "paidaixing/PIG_R1",
        {
            "HFRL.zip": zipped(images),
            "HFRL_metadata.csv": table.encode(),
            "README.md": b"# PIG_R1 stand-in\n",
            "other/unrelated.zip": zipped({"x.jpg": jpeg(99)}),
        },
        repo_type="dataset",
    )


PIG_SETTINGS = {
    "repo_id": "paidaixing/PIG_R1",
    "repo_type": "dataset",
    "revision": "main",
    "allow_patterns": ["HFRL.zip", "*.csv"],
    "format": "archives",
    "images": ["HFRL.zip"],
    "metadata": ["*.csv"],
    "columns": {"id": "new_id"},
}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubStandin]:
    """The stand-in, with the environment of a machine that knows no other Hub or token."""
    from huggingface_hub import constants

    with HubStandin() as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_TOKEN", "hf_standin_dummy_token")
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield standin


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# The stand-in speaks the Hub's protocol


def test_standin_answers_the_real_client(hub: HubStandin, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    repo = hub.state.add(pig_like_repo())
    model = hub.state.add(HubRepo("org/tiny", {"config.json": b"{}"}, repo_type="model"))
    api = HfApi(endpoint=hub.url)
    assert api.dataset_info(repo.repo_id, revision="main").sha == repo.commit
    assert api.repo_info(repo.repo_id, repo_type="dataset", revision=repo.commit).sha == repo.commit
    assert api.model_info(model.repo_id).sha == model.commit
    assert api.list_repo_files(repo.repo_id, repo_type="dataset") == sorted(repo.files)
    tree = list(api.list_repo_tree(repo.repo_id, repo_type="dataset"))
    assert [f.path for f in tree if isinstance(f, RepoFolder)] == ["other"]
    lfs = {f.path: f.lfs for f in tree if isinstance(f, RepoFile)}
    assert lfs["HFRL.zip"] is not None and lfs["HFRL.zip"].sha256 == sha256(
        repo.content("HFRL.zip")
    )
    assert lfs["README.md"] is None  # small files are plain git blobs
    path = hf_hub_download(
        repo.repo_id,
        "HFRL_metadata.csv",
        repo_type="dataset",
        cache_dir=tmp_path / "c",
        endpoint=hub.url,
    )
    assert Path(path).read_bytes() == repo.content("HFRL_metadata.csv")
    local = snapshot_download(
        repo.repo_id,
        repo_type="dataset",
        allow_patterns=["*.zip"],
        local_dir=tmp_path / "snap",
        endpoint=hub.url,
    )
    assert (Path(local) / "HFRL.zip").read_bytes() == repo.content("HFRL.zip")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(repo.repo_id, revision="v9")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(
            repo.repo_id, "nope.txt", repo_type="dataset", cache_dir=tmp_path, endpoint=hub.url
        )


# ---------------------------------------------------------------------------------------------
# Fetching: revision recorded, checksums, resumable


def test_fetch_records_the_commit_and_every_file_and_never_fetches_twice(
    hub: HubStandin, tmp_path: Path
) -> None:
    repo = hub.state.add(pig_like_repo())
    fetched = fetch_repo(repo.repo_id, "dataset", "main", ["HFRL.zip", "*.csv"], tmp_path / "cache")
    assert fetched.requested_revision == "main" and fetched.commit == repo.commit
    assert fetched.endpoint == hub.url
    record = fetched.record()
    assert [f["path"] for f in record["files"]] == ["HFRL.zip", "HFRL_metadata.csv"]
    for entry in record["files"]:
        assert entry["sha256"] == sha256(repo.content(entry["path"]))
        assert entry["size"] == len(repo.content(entry["path"]))
    for path, local in fetched.paths().items():
        assert local.read_bytes() == repo.content(path)
        assert repo_cache_dir(tmp_path / "cache", "dataset", repo.repo_id) in local.parents
    downloads = hub.state.routes["resolve"]
    again = fetch_repo(
        repo.repo_id, "dataset", repo.commit, ["HFRL.zip", "*.csv"], tmp_path / "cache"
    )
    assert again.record()["files"] == record["files"]
    assert hub.state.routes["resolve"] == downloads  # nothing downloaded again


def test_unknown_repo_revision_and_patterns_are_clear_errors(
    hub: HubStandin, tmp_path: Path
) -> None:
    repo = hub.state.add(pig_like_repo())
    with pytest.raises(GeolocsftError, match="repository not found"):
        fetch_repo("nobody/nothing", "dataset", None, None, tmp_path, retry=FAST)
    with pytest.raises(GeolocsftError, match="revision does not exist"):
        fetch_repo(repo.repo_id, "dataset", "v9", None, tmp_path, retry=FAST)
    with pytest.raises(GeolocsftError, match=r"no file matches allow_patterns .*HFRL\.zip"):
        fetch_repo(repo.repo_id, "dataset", None, ["*.tar"], tmp_path, retry=FAST)


def test_interrupted_download_fails_clearly_then_resumes_where_it_stopped(
    hub: HubStandin, tmp_path: Path
) -> None:
    repo = hub.state.add(pig_like_repo())
    archive = repo.content("HFRL.zip")
    cut = len(archive) // 3
    # The connection drops after `cut` bytes and the Hub then answers 503 until healed.
    hub.state.interrupt(repo.repo_id, "HFRL.zip", after_bytes=cut, outage_requests=1000)
    with pytest.raises(GeolocsftError) as failed:
        fetch_repo(repo.repo_id, "dataset", "main", ["HFRL.zip"], tmp_path, retry=FAST)
    message = str(failed.value)
    assert "HFRL.zip" in message and "503" in message and "resumes" in message
    partials = list((repo_cache_dir(tmp_path, "dataset", repo.repo_id) / "partial").iterdir())
    assert [p.stat().st_size for p in partials] == [cut]

    hub.state.heal()
    fetched = fetch_repo(repo.repo_id, "dataset", "main", ["HFRL.zip"], tmp_path, retry=FAST)
    stats = hub.state.stats(repo.repo_id, "HFRL.zip")
    assert stats.range_starts == [0, cut]  # the second GET asked for the missing bytes only
    assert stats.bytes_sent == len(archive)  # no byte was sent twice
    assert fetched.files[0].sha256 == sha256(archive)
    assert fetched.files[0].local.read_bytes() == archive


def test_dropped_connection_is_resumed_within_the_same_attempt(
    hub: HubStandin, tmp_path: Path
) -> None:
    repo = hub.state.add(pig_like_repo())
    archive = repo.content("HFRL.zip")
    hub.state.interrupt(repo.repo_id, "HFRL.zip", after_bytes=1000)
    fetched = fetch_repo(repo.repo_id, "dataset", None, ["HFRL.zip"], tmp_path, retry=FAST)
    stats = hub.state.stats(repo.repo_id, "HFRL.zip")
    assert stats.range_starts == [0, 1000] and stats.bytes_sent == len(archive)
    assert fetched.files[0].sha256 == sha256(archive)


def test_a_killed_download_resumes_in_the_next_process(hub: HubStandin, tmp_path: Path) -> None:
    repo = hub.state.add(pig_like_repo())
    archive = repo.content("HFRL.zip")
    cut = len(archive) // 2
    hub.state.interrupt(repo.repo_id, "HFRL.zip", after_bytes=cut, stall=True)
    code = (
        "from pathlib import Path; from geolocsft.hub.fetch import fetch_repo; "
        f"fetch_repo({repo.repo_id!r}, 'dataset', None, ['HFRL.zip'], Path({str(tmp_path)!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        stats = hub.state.stats(repo.repo_id, "HFRL.zip")
        deadline = time.monotonic() + 60
        while stats.bytes_sent < cut and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats.bytes_sent == cut, "the download never reached the stall"
        time.sleep(0.3)  # let the child write what it received
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    hub.state.heal()
    partial = next((repo_cache_dir(tmp_path, "dataset", repo.repo_id) / "partial").iterdir())
    assert partial.stat().st_size == cut  # every byte received was on disk when it was killed
    fetched = fetch_repo(repo.repo_id, "dataset", None, ["HFRL.zip"], tmp_path, retry=FAST)
    assert stats.range_starts == [0, cut] and stats.bytes_sent == len(archive)
    assert fetched.files[0].local.read_bytes() == archive


def test_a_corrupted_download_is_deleted_and_refetched(hub: HubStandin, tmp_path: Path) -> None:
    repo = hub.state.add(pig_like_repo())
    archive = repo.content("HFRL.zip")
    partial_dir = repo_cache_dir(tmp_path, "dataset", repo.repo_id) / "partial"
    partial_dir.mkdir(parents=True)
    # A partial file whose first bytes are wrong: the resumed file fails the sha256 check.
    (partial_dir / f"{sha256(archive)}.part").write_bytes(b"\xff" * 100)
    with pytest.raises(GeolocsftError, match=r"sha256 .* is not the Hub's"):
        fetch_repo(repo.repo_id, "dataset", None, ["HFRL.zip"], tmp_path, retry=FAST)
    fetched = fetch_repo(repo.repo_id, "dataset", None, ["HFRL.zip"], tmp_path, retry=FAST)
    assert fetched.files[0].local.read_bytes() == archive


# ---------------------------------------------------------------------------------------------
# Unpacking into the layout ingest reads


def _ingest(folder: Path, policy: str = "quarantine") -> IngestResult:
    return ingest(
        images_dir=folder / "images",
        metadata_table=folder / "metadata.csv",
        column_map=ColumnMap(**ACQUIRED_COLUMNS),
        settings=configured(IngestSettings, on_bad_input=policy, workers=1),
        split_mode="all_test",
    )


def test_acquired_archive_is_unpacked_for_ingest_without_losing_a_row(
    hub: HubStandin, tmp_path: Path
) -> None:
    repo = hub.state.add(pig_like_repo())
    out = tmp_path / "acquired"
    record = acquire_dataset(
        PIG_SETTINGS,
        tmp_path / "cache",
        out / "images",
        out / "metadata.csv",
        out / "source.json",
        retry=FAST,
    )
    source = json.loads((out / "source.json").read_text())
    assert source == record
    assert source["commit"] == repo.commit and source["requested_revision"] == "main"
    assert {f["path"] for f in source["files"]} == {"HFRL.zip", "HFRL_metadata.csv"}
    assert source["unpack"]["rows"] == 6 and source["unpack"]["rows_without_coordinates"] == 1
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:03d}.jpg" for i in range(6)]
    assert (out / "images" / "002.jpg").read_bytes() == jpeg(2)
    metadata = pl.read_csv(out / "metadata.csv", infer_schema=False)
    assert metadata.columns == ["image_id", "file", "lat", "lon", "source_file", "source_row"]
    assert metadata["image_id"].to_list() == ["000", "001", "002", "003", "004", "999"]
    assert set(metadata["source_file"]) == {"HFRL_metadata.csv"}

    result = _ingest(out)
    assert sorted(result.manifest["image_id"]) == ["000", "001", "002", "003"]
    reasons = dict(zip(result.rejected["image_id"], result.rejected["reason"], strict=True))
    # 005.jpg is in the archive but in no row of the table: reported, not silently dropped.
    assert reasons == {
        "004": "missing_coordinates",
        "999": "missing_file",
        "005": "no_metadata_row",
    }

    # Deterministic: the same input gives the same bytes.
    again = tmp_path / "again"
    unpack(
        {f["path"]: _blob(tmp_path / "cache", repo, f["path"]) for f in source["files"]},
        again / "images",
        again / "metadata.csv",
        UnpackSettings.from_config(PIG_SETTINGS, on_bad_input="quarantine"),
    )
    assert (again / "metadata.csv").read_bytes() == (out / "metadata.csv").read_bytes()
    for image in (out / "images").iterdir():
        assert (again / "images" / image.name).read_bytes() == image.read_bytes()


def _blob(cache: Path, repo: HubRepo, path: str) -> Path:
    meta = repo.meta(path)
    return repo_cache_dir(cache, repo.repo_type, repo.repo_id) / "blobs" / meta.etag


def _parquet_files(tmp_path: Path, rows: list[dict[str, object]]) -> dict[str, Path]:
    shard = tmp_path / "train-00000-of-00001.parquet"
    shard.write_bytes(parquet(rows))
    return {"data/train-00000-of-00001.parquet": shard}


def test_parquet_shards_with_an_image_feature_are_unpacked(hub: HubStandin, tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {
            "image": {"bytes": jpeg(i), "path": f"{i}.jpg"},
            "id": f"img{i}",
            "latitude": 10.0 + i,
            "longitude": -20.5,
        }
        for i in range(4)
    ]
    rows[3]["latitude"] = None
    repo = hub.state.add(
        HubRepo("someone/geo-parquet", {"data/train-00000-of-00001.parquet": parquet(rows)})
    )
    settings = {"repo_id": repo.repo_id, "format": "parquet", "columns": {"image": "image"}}
    out = tmp_path / "out"
    record = acquire_dataset(
        settings, tmp_path / "cache", out / "images", out / "metadata.csv", out / "source.json"
    )
    assert record["commit"] == repo.commit and record["requested_revision"] == "main"
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"img{i}.jpg" for i in range(4)]
    assert (out / "images" / "img1.jpg").read_bytes() == jpeg(1)
    metadata = pl.read_csv(out / "metadata.csv", infer_schema=False)
    assert metadata["file"].to_list() == [f"images/img{i}.jpg" for i in range(4)]
    assert metadata["lat"].to_list()[:2] == ["10.0", "11.0"]
    assert metadata["source_row"].to_list() == ["1", "2", "3", "4"]
    result = _ingest(out)
    assert sorted(result.manifest["image_id"]) == ["img0", "img1", "img2"]
    assert result.rejected["reason"].to_list() == ["missing_coordinates"]


def test_bad_parquet_rows_are_reported_with_shard_and_row(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"image": {"bytes": jpeg(0), "path": None}, "id": "a", "latitude": 1.0, "longitude": 2.0},
        {
            "image": {"bytes": b"not an image", "path": None},
            "id": "b",
            "latitude": 1.0,
            "longitude": 2.0,
        },
        {"image": {"bytes": jpeg(1), "path": None}, "id": "c", "latitude": 1.0, "longitude": 2.0},
        {"image": {"bytes": jpeg(2), "path": None}, "id": "c", "latitude": 1.0, "longitude": 2.0},
        {"image": None, "id": "d", "latitude": 1.0, "longitude": 2.0},
    ]
    files = _parquet_files(tmp_path, rows)
    quarantine = configured(UnpackSettings, format="parquet", on_bad_input="quarantine")
    result = unpack(files, tmp_path / "q" / "images", tmp_path / "q" / "metadata.csv", quarantine)
    assert result.rows == 5  # every row is passed on
    assert [(p.row, p.reason) for p in result.problems] == [
        (2, "undecodable"),
        (4, "duplicate_id"),
        (5, "missing_image"),
    ]
    ingested = _ingest(tmp_path / "q")
    assert ingested.manifest["image_id"].to_list() == ["a"]
    assert sorted(ingested.rejected["reason"]) == [
        "duplicate_id",
        "duplicate_id",
        "missing_file",
        "undecodable",
    ]

    fail = configured(UnpackSettings, format="parquet", on_bad_input="fail")
    with pytest.raises(GeolocsftError) as error:
        unpack(files, tmp_path / "f" / "images", tmp_path / "f" / "metadata.csv", fail)
    message = str(error.value)
    assert "3 unusable rows" in message
    assert "data/train-00000-of-00001.parquet row 2 (id 'b'): undecodable" in message
    assert "row 4 (id 'c'): duplicate_id" in message


def tarred(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_gz_with_its_table_inside_and_ambiguous_names(tmp_path: Path) -> None:
    archive = tmp_path / "part1.tar.gz"
    archive.write_bytes(
        tarred(
            {
                "part1/photos/a.jpg": jpeg(0),
                "part1/photos/b.png": jpeg(1),  # named .png, holds a JPEG: ingest decides
                "part1/labels.tsv": b"image\tlatitude\tlongitude\na.jpg\t1.5\t2.5\nb.png\t3\t4\n",
            }
        )
    )
    out = tmp_path / "out"
    result = unpack(
        {"part1.tar.gz": archive},
        out / "images",
        out / "metadata.csv",
        configured(UnpackSettings, on_bad_input="quarantine"),
    )
    assert result.rows == 2 and result.images == 2
    metadata = pl.read_csv(out / "metadata.csv", infer_schema=False)
    assert metadata["source_file"].to_list() == ["part1.tar.gz:part1/labels.tsv"] * 2
    assert sorted(_ingest(out).manifest["image_id"]) == ["a", "b"]

    other = tmp_path / "part2.zip"
    other.write_bytes(zipped({"a.jpg": jpeg(5)}))
    with pytest.raises(GeolocsftError, match=r"two different images are named a\.jpg"):
        unpack(
            {"part1.tar.gz": archive, "part2.zip": other},
            tmp_path / "x" / "images",
            tmp_path / "x" / "metadata.csv",
            configured(UnpackSettings, on_bad_input="quarantine"),
        )


def test_missing_columns_are_clear_errors(tmp_path: Path) -> None:
    files = _parquet_files(
        tmp_path,
        [{"image": {"bytes": jpeg(0), "path": None}, "id": "a", "latitude": 1.0, "longitude": 2.0}],
    )
    with pytest.raises(InputTableError, match=r"train-00000-of-00001\.parquet: column 'lat_deg'"):
        unpack(
            files,
            tmp_path / "a" / "images",
            tmp_path / "a" / "metadata.csv",
            configured(
                UnpackSettings,
                format="parquet",
                columns=AcquireColumns(lat="lat_deg"),
                on_bad_input="quarantine",
            ),
        )
    table = tmp_path / "labels.csv"
    table.write_text("id,lat\n000,1.0\n")
    archive = tmp_path / "images.zip"
    archive.write_bytes(zipped({"000.jpg": jpeg(0)}))
    with pytest.raises(InputTableError, match=r"labels\.csv: no lon column"):
        unpack(
            {"labels.csv": table, "images.zip": archive},
            tmp_path / "b" / "images",
            tmp_path / "b" / "metadata.csv",
            configured(UnpackSettings, on_bad_input="quarantine"),
        )


# ---------------------------------------------------------------------------------------------
# Models


def test_download_model_resumes_into_the_cache_and_links_the_files(
    hub: HubStandin, tmp_path: Path
) -> None:
    weights = os.urandom(200_000)
    repo = hub.state.add(
        HubRepo(
            "org/tiny-vlm",
            {
                "config.json": b'{"model_type": "qwen2_vl"}',
                "model.safetensors": weights,
                "weights-copy/model.safetensors": weights,  # same content: one download
            },
            repo_type="model",
        )
    )
    hub.state.interrupt(repo.repo_id, "model.safetensors", after_bytes=50_000, outage_requests=1000)
    cache, out = tmp_path / "cache", tmp_path / "results" / "models" / "hub" / "org--tiny-vlm@main"
    with pytest.raises(GeolocsftError, match=r"model\.safetensors"):
        download_model(repo.repo_id, None, out, cache, retry=FAST)
    hub.state.heal()
    provenance = download_model(repo.repo_id, None, out, cache)
    assert provenance["commit"] == repo.commit and provenance["requested_revision"] == "main"
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "weights-copy" / "model.safetensors").read_bytes() == weights
    assert hub.state.stats(repo.repo_id, "weights-copy/model.safetensors").gets == 0
    assert hub.state.stats(repo.repo_id, "model.safetensors").range_starts == [0, 50_000]
    recorded = json.loads((out / "geolocsft_source.json").read_text())
    assert recorded["commit"] == repo.commit
    assert {f["path"]: f["sha256"] for f in recorded["files"]}["model.safetensors"] == sha256(
        weights
    )
    blob = repo_cache_dir(cache, "model", repo.repo_id) / "blobs" / sha256(weights)
    assert (out / "model.safetensors").stat().st_ino == blob.stat().st_ino  # a hard link
    # Snakemake deletes the output of a job it reruns: the cache makes the rerun free.
    gets = hub.state.stats(repo.repo_id, "model.safetensors").gets
    download_model(repo.repo_id, repo.commit, tmp_path / "again", cache)
    assert hub.state.stats(repo.repo_id, "model.safetensors").gets == gets


# ---------------------------------------------------------------------------------------------
# The workflow: acquire, then ingest


@pytest.mark.workflow
def test_workflow_acquires_a_benchmark_resumes_after_a_failure_and_ingests_it(
    hub: HubStandin, tmp_path: Path
) -> None:
    from test_workflow import copy_workflow, planned_jobs, snakemake

    repo = hub.state.add(pig_like_repo())
    workdir = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["acquire"] = {
        "cache": "cache/hub",
        "max_attempts": 1,
        "backoff_s": 0.0,
        "datasets": {"pig": {k: v for k, v in PIG_SETTINGS.items() if k != "repo_type"}},
    }
    config["benchmarks"] = {"pig": {"acquired": "pig"}}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    until = ("--until", "ingest_benchmark")
    assert planned_jobs(workdir, *until) == {"acquire_dataset": 1, "ingest_benchmark": 1}

    archive = repo.content("HFRL.zip")
    cut = len(archive) // 2
    hub.state.interrupt(repo.repo_id, "HFRL.zip", after_bytes=cut, outage_requests=1000)
    failed = snakemake(workdir, *until, check=False)
    assert failed.returncode != 0
    log = (workdir / "logs" / "acquire" / "pig.log").read_text()
    assert "HFRL.zip" in log and "the next run resumes from there" in log
    assert "Traceback" not in log
    assert not (workdir / "results" / "acquired" / "pig" / "source.json").exists()

    hub.state.heal()
    snakemake(workdir, *until)
    stats = hub.state.stats(repo.repo_id, "HFRL.zip")
    assert stats.range_starts == [0, cut] and stats.bytes_sent == len(archive)
    source = json.loads((workdir / "results" / "acquired" / "pig" / "source.json").read_text())
    assert source["commit"] == repo.commit
    manifest = pl.read_parquet(workdir / "results" / "benchmarks" / "pig" / "manifest.parquet")
    assert sorted(manifest["image_id"]) == ["000", "001", "002", "003"]
    assert set(manifest["split"]) == {"test"}
    rejected = pl.read_csv(workdir / "results" / "benchmarks" / "pig" / "rejected.csv")
    assert sorted(rejected["reason"]) == ["missing_coordinates", "missing_file", "no_metadata_row"]
    assert planned_jobs(workdir, *until) == {}
