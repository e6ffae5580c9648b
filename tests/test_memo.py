"""The per-item memo and the sharded layout of per-item folders."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from geolocsft.layout import item_path, item_relpath, shard_of
from geolocsft.memo import KEPT_LARGEST_PARTS, MAX_PARTS, BlobStore, ItemTable, memo_version


def test_item_table_returns_what_was_stored_for_the_asked_keys_across_runs(tmp_path: Path):
    table = ItemTable(tmp_path, "facts", memo_version({"a": 1}, "code:1"))
    assert table.load() is None
    table.add(pl.DataFrame({"key": ["x", "y"], "value": [1, 2]}))
    table.add(pl.DataFrame({"key": ["z"], "value": [3]}))
    again = ItemTable(tmp_path, "facts", memo_version({"a": 1}, "code:1"))  # a later run
    found = again.load(["y", "z", "new"])
    assert found is not None and dict(found.iter_rows()) == {"y": 2, "z": 3}
    other = ItemTable(tmp_path, "facts", memo_version({"a": 2}, "code:1"))  # other settings
    assert other.load() is None


def test_item_table_compacts_many_parts_without_losing_a_record(tmp_path: Path):
    table = ItemTable(tmp_path, "facts", "v1")
    for i in range(MAX_PARTS + 1):
        table.add(pl.DataFrame({"key": [f"k{i}"], "value": [i]}))
    assert len(table.parts()) == KEPT_LARGEST_PARTS + 1
    loaded = table.load()
    assert loaded is not None and sorted(loaded["value"]) == list(range(MAX_PARTS + 1))


def test_item_table_compaction_merges_the_small_parts_and_leaves_the_large_ones(tmp_path: Path):
    # A memo of many records and a rerun's small parts: compacting must not rewrite the
    # large part (a rerun that adds 100 images to a million would rewrite a million records).
    table = ItemTable(tmp_path, "facts", "v1")
    table.add(pl.DataFrame({"key": [f"big{i}" for i in range(5000)], "value": range(5000)}))
    (big,) = table.parts()
    big_stat = big.stat()
    for i in range(MAX_PARTS):
        table.add(pl.DataFrame({"key": [f"k{i}"], "value": [i]}))
    parts = table.parts()
    assert big in parts and big.stat().st_ino == big_stat.st_ino  # untouched
    assert len(parts) == KEPT_LARGEST_PARTS + 1
    loaded = table.load()
    assert loaded is not None and loaded.height == 5000 + MAX_PARTS
    assert table.count_missing(pl.Series(["big7", "k3", "new", "new"])) == 1
    table.compact(keep_largest=0)
    assert len(table.parts()) == 1 and table.load().height == 5000 + MAX_PARTS  # type: ignore[union-attr]


def test_blobs_are_stored_once_linked_into_outputs_and_read_only(tmp_path: Path):
    store = BlobStore(tmp_path / "memo")
    digest = store.put(b"jpeg bytes")
    assert store.put(b"jpeg bytes") == digest and store.has(digest)
    out = tmp_path / "results" / "media" / "ab" / "img.jpg"
    store.link(digest, out)
    assert out.read_bytes() == b"jpeg bytes"
    assert out.stat().st_ino == store.path(digest).stat().st_ino
    assert out.stat().st_mode & 0o777 == 0o444  # a writer other than root is refused
    store.link(digest, out)  # relinking an existing output is fine


def test_per_item_paths_are_sharded_by_a_stable_hash_of_the_id(tmp_path: Path):
    image_id = "1000269685_e60e9cdfb4_1125_78841376@N00"
    shard = shard_of(image_id)
    assert len(shard) == 2 and int(shard, 16) >= 0
    assert item_path(tmp_path, image_id, ".json") == tmp_path / shard / f"{image_id}.json"
    assert item_relpath(image_id, ".jpg") == f"{shard}/{image_id}.jpg"
    shards = {shard_of(f"img{i}") for i in range(2000)}
    assert len(shards) == 256


def test_file_hashes_are_remembered_by_inode_size_and_mtime_and_redone_after_an_edit(
    tmp_path: Path,
):
    import os

    from geolocsft.audit import FileHashes, artifact_digest
    from geolocsft.io import file_sha256

    folder = tmp_path / "captions"
    for i in range(3):
        (folder / f"{i:02x}").mkdir(parents=True)
        (folder / f"{i:02x}" / f"img{i}.json").write_text(f'{{"i": {i}}}\n')
    memo = tmp_path / "memo"
    first = FileHashes.in_memo(memo)
    digest = artifact_digest(folder, first)
    first.save()
    assert digest == artifact_digest(folder)  # the same as hashing every file
    later = FileHashes.in_memo(memo)  # another job
    edited = folder / "01" / "img1.json"
    later.sha256(folder / "00" / "img0.json")
    assert not later.new  # remembered, not read again
    edited.write_text('{"i": 42}\n')
    os.utime(edited, ns=(1, 1))  # a different mtime, as any real edit has
    assert later.sha256(edited) == file_sha256(edited)
    assert artifact_digest(folder, later) == artifact_digest(folder)


def test_a_directory_digest_is_remembered_by_its_listing_and_follows_path_components(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The digest of a folder of files is over (path, sha256) in the order of path components;
    a later job digesting the same unchanged folder finds it under the folder's listing and
    hashes nothing, and any edit (a new mtime) gives the new digest."""
    import hashlib
    import os

    from geolocsft import audit
    from geolocsft.audit import FileHashes, artifact_digest
    from geolocsft.io import file_sha256

    folder = tmp_path / "tree"
    names = ["ab/x", "ab.json", "a-b/y", "a/z", "b", "ab/c/d", ".snakemake_timestamp"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    expected = hashlib.sha256()
    for name in sorted(names[:-1], key=lambda n: n.split("/")):  # Snakemake's marker left out
        expected.update(f"{name}\0{file_sha256(folder / name)}\n".encode())
    memo = tmp_path / "memo"
    first = FileHashes.in_memo(memo)
    digest = artifact_digest(folder, first)
    size = sum(len(name) for name in names[:-1])
    assert digest == {
        "kind": "directory",
        "sha256": expected.hexdigest(),
        "bytes": size,
        "files": 6,
    }
    first.save()

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(audit, "file_sha256", no_hashing)
    later = FileHashes.in_memo(memo)
    monkeypatch.setattr(later, "look_up", lambda stats: pytest.fail("per-file look-up"))
    assert artifact_digest(folder, later) == digest
    monkeypatch.undo()
    (folder / "a" / "z").write_text("edited")
    os.utime(folder / "a" / "z", ns=(1, 1))
    edited = artifact_digest(folder, FileHashes.in_memo(memo))
    assert edited["sha256"] != digest["sha256"]
    assert edited == artifact_digest(folder)  # the same as hashing every file


def test_blob_presence_by_listing_matches_a_stat_of_each(tmp_path: Path, monkeypatch) -> None:
    """Many blobs are checked from one listing of the store: the same answers as a stat each,
    a deleted blob (a pruned memo) and an unknown digest included."""
    from geolocsft import memo as memo_module

    store = BlobStore(tmp_path / "memo")
    digests = [store.put(f"blob {i}".encode()) for i in range(20)]
    store.path(digests[3]).chmod(0o644)
    store.path(digests[3]).unlink()
    asked = [*digests, "0" * 64, "ff" + "1" * 62]
    by_stat = [store.has(d) for d in asked]
    assert by_stat.count(False) == 3
    monkeypatch.setattr(memo_module, "PRESENT_BY_LISTING", 2)
    assert store.present(asked) == by_stat
    monkeypatch.setattr(memo_module, "PRESENT_BY_LISTING", 10_000)
    assert store.present(asked) == by_stat
