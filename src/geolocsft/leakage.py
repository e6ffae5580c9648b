"""No eval image in the training data: identical and near-duplicate photos across the split.

The split assigns images by id (or group), so the same photo under two ids, or a benchmark photo
that is also in the corpus, can sit on both sides. This module finds every **training** image
(the corpus' train split) that is

* **identical** to an eval image: the same bytes (``sha256``), or
* a **near-duplicate** of one (``leakage.near_duplicates``): a perceptual hash within
  ``leakage.max_hamming`` bits, which survives resizing, re-encoding and small edits;

where the eval images are the corpus' test split (eval set ``holdout``) and every benchmark
manifest. Each such training image is excluded from everything trained or fitted on the corpus
(the SFT dataset, the medoid and kNN baselines) and listed in the report with the eval image it
matches; the eval images themselves stay where they are.

Perceptual hash: the 64-bit difference hash (dHash) of the upright photo, as 16 hex digits,
the same definition as ``imagehash.dhash``: greyscale, resized to 9x8 (Lanczos), bit = the pixel
right of it is brighter, row-major, first bit most significant. A manifest's ``phash`` column is
used when present (ingest adds it); until then it is computed here from the image at ``path``,
once per image content (memo keyed by sha256). A low-detail image (fewer than
``leakage.min_hash_bits`` bits set or unset, e.g. hash 0: no brighter neighbour anywhere, a
blank sky) is never called a near-duplicate: such hashes lie within a few bits of each other
whatever the photo, and would match every other low-detail image (1-2% of real photos: the
1st percentile of set bits is 7 in the Im2GPS3k and EXIF samples, the median 30).

Near-duplicate search is sub-quadratic: the 64 bits are cut into ``max_hamming + 1`` bands, and
two hashes within ``max_hamming`` bits agree exactly on at least one band (pigeonhole), so only
pairs sharing a band are compared. Candidates are checked band by band, in slices of training
images holding at most :data:`CANDIDATES_PER_SLICE` candidate pairs, and only true pairs are kept,
so memory is bounded by the slice and the pairs found, whatever the hashes' distribution.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import polars as pl
from tqdm import tqdm

from geolocsft.codegraph import module_code_version
from geolocsft.errors import BadImageError, GeolocsftError
from geolocsft.images import open_upright_rgb
from geolocsft.io import atomic_write_json
from geolocsft.memo import ItemTable, memo_version
from geolocsft.splits import TEST, TRAIN

log = logging.getLogger(__name__)

HOLDOUT = "holdout"
IDENTICAL = "identical"
NEAR_DUPLICATE = "near_duplicate"
LEAKAGE_REPORT_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.String(),
    "kind": pl.String(),
    "hamming": pl.Int64(),
    "eval_set": pl.String(),
    "eval_image_id": pl.String(),
    "sha256": pl.String(),
    "eval_sha256": pl.String(),
    "path": pl.String(),
    "eval_path": pl.String(),
}


@dataclass(frozen=True)
class LeakageSettings:
    """Which training images count as eval images (``leakage`` in config)."""

    CONFIG_SECTION: ClassVar[str] = "leakage"

    near_duplicates: bool
    max_hamming: int
    min_hash_bits: int


def dhash(path: Path) -> str:
    """The 64-bit difference hash of the upright photo at ``path``, as 16 hex digits."""
    from PIL import Image

    try:
        grey = open_upright_rgb(path).convert("L")
    except BadImageError as exc:
        raise BadImageError(f"{exc} (perceptual hash)") from exc
    pixels = np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).ravel()
    value = int.from_bytes(np.packbits(bits).tobytes(), "big")
    return f"{value:016x}"


def hash_memo(memo_dir: Path) -> ItemTable:
    """Computed dHashes by image sha256 (shared by every run with the same hash code)."""
    return ItemTable(memo_dir, "dhash", memo_version("dhash-64", module_code_version("leakage")))


def perceptual_hashes(manifest: pl.DataFrame, memo_dir: Path | None) -> pl.Series:
    """The ``phash`` of each manifest row: its own column, or dHash computed from ``path``
    (each distinct content once; with ``memo_dir``, once across runs)."""
    if "phash" in manifest.columns:
        return manifest["phash"].cast(pl.String)
    memo = hash_memo(memo_dir) if memo_dir is not None else None
    contents = manifest.select("sha256", "path").unique("sha256", keep="first", maintain_order=True)
    known = memo.load(contents["sha256"]) if memo is not None else None
    have = (
        known if known is not None else pl.DataFrame(schema={"key": pl.String, "phash": pl.String})
    )
    todo = contents.join(have.rename({"key": "sha256"}), on="sha256", how="anti")
    computed = [
        dhash(Path(p))
        for p in tqdm(todo["path"], desc="perceptual hashes", unit="img", disable=None)
    ]
    new = pl.DataFrame({"key": todo["sha256"], "phash": computed}, schema=have.schema)
    if memo is not None:
        memo.add(new)
    table = pl.concat([have, new]).rename({"key": "sha256"})
    log.info("perceptual hashes: %d computed, %d reused", new.height, have.height)
    return manifest.select("sha256").join(table, on="sha256", how="left", maintain_order="left")[
        "phash"
    ]


def _as_uint64(hexes: pl.Series) -> npt.NDArray[np.uint64]:
    return np.array([int(h, 16) for h in hexes.to_list()], dtype=np.uint64)


#: The manifest columns the check reads (a million-row manifest holds many more).
LEAKAGE_MANIFEST_COLUMNS = ("image_id", "sha256", "path", "split", "phash")


def read_leakage_columns(path: Path | str) -> pl.DataFrame:
    """The columns of a manifest (Parquet) that :func:`find_leaks` reads."""
    manifest = pl.scan_parquet(path)
    names = manifest.collect_schema().names()
    return manifest.select([c for c in LEAKAGE_MANIFEST_COLUMNS if c in names]).collect()


def eval_images(corpus: pl.DataFrame, benchmarks: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Every eval image: the corpus' test split (``holdout``) and every benchmark's rows."""
    parts = [corpus.filter(pl.col("split") == TEST).with_columns(pl.lit(HOLDOUT).alias("eval_set"))]
    parts += [m.with_columns(pl.lit(name).alias("eval_set")) for name, m in benchmarks.items()]
    columns = ["image_id", "sha256", "path", "eval_set"]
    if all("phash" in p.columns for p in parts):
        columns.append("phash")
    return pl.concat([p.select(columns) for p in parts])


def _bands(max_hamming: int) -> list[tuple[int, int]]:
    """(shift, width) of ``max_hamming + 1`` bands covering the 64 bits."""
    count = max_hamming + 1
    edges = [round(i * 64 / count) for i in range(count + 1)]
    return [(64 - end, end - start) for start, end in itertools.pairwise(edges)]


#: The most candidate pairs (sharing one band) compared at once: each costs about 100 bytes
#: while it is compared (a 750k x 250k check at 1M: 1.0 GB peak at 4M, 2.1 GB at 20M; as fast).
CANDIDATES_PER_SLICE = 4_000_000


def informative(hashes: npt.NDArray[np.uint64], min_bits: int) -> npt.NDArray[np.bool_]:
    """Hashes with at least ``min_bits`` bits set and at least ``min_bits`` unset (never 0)."""
    ones = np.bitwise_count(hashes)
    return (ones >= max(min_bits, 1)) & (ones <= 64 - min_bits)


def _slices(candidates: npt.NDArray[np.int64], limit: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges whose candidate counts sum to at most ``limit`` (a
    single row above it is a range of its own); one search per range, not a loop per row."""
    totals = np.cumsum(candidates)
    ranges, start, before = [], 0, 0
    while start < candidates.size:
        stop = max(int(np.searchsorted(totals, before + limit, side="right")), start + 1)
        ranges.append((start, stop))
        start, before = stop, int(totals[stop - 1])
    return ranges


def near_duplicate_pairs(
    train_hash: npt.NDArray[np.uint64],
    eval_hash: npt.NDArray[np.uint64],
    max_hamming: int,
    min_bits: int = 0,
    limit: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Index pairs (train, eval) of hashes within ``max_hamming`` bits, and their distance,
    sorted; low-detail hashes (see :func:`informative`) are left out. At most ``limit``
    candidate pairs (default :data:`CANDIDATES_PER_SLICE`) are compared at once."""
    limit = limit or CANDIDATES_PER_SLICE
    t_rows = np.flatnonzero(informative(train_hash, min_bits)).astype(np.int64)
    e_rows = np.flatnonzero(informative(eval_hash, min_bits)).astype(np.int64)
    found_t: list[npt.NDArray[np.int64]] = []
    found_e: list[npt.NDArray[np.int64]] = []
    if not (t_rows.size and e_rows.size):
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty.copy()
    for shift, width in _bands(max_hamming):
        mask = np.uint64((1 << width) - 1)
        key_t = ((train_hash[t_rows] >> np.uint64(shift)) & mask).astype(np.int64)
        key_e = ((eval_hash[e_rows] >> np.uint64(shift)) & mask).astype(np.int64)
        keys, counts = np.unique(key_e, return_counts=True)
        at = np.minimum(np.searchsorted(keys, key_t), keys.size - 1)
        candidates = np.where(keys[at] == key_t, counts[at], 0)  # eval rows sharing the band
        right = pl.DataFrame({"key": key_e, "e": e_rows})
        for start, stop in _slices(candidates, limit):
            if not candidates[start:stop].any():
                continue
            left = pl.DataFrame({"key": key_t[start:stop], "t": t_rows[start:stop]})
            pairs = left.join(right, on="key")
            t = pairs["t"].to_numpy()
            e = pairs["e"].to_numpy()
            close = np.bitwise_count(train_hash[t] ^ eval_hash[e]) <= max_hamming
            found_t.append(t[close])
            found_e.append(e[close])
    if not found_t:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty.copy()
    t = np.concatenate(found_t).astype(np.int64)
    e = np.concatenate(found_e).astype(np.int64)
    unique = np.unique(t * max(eval_hash.size, 1) + e)  # a pair may share several bands
    t, e = unique // max(eval_hash.size, 1), unique % max(eval_hash.size, 1)
    distance = np.bitwise_count(train_hash[t] ^ eval_hash[e]).astype(np.int64)
    return t, e, distance


def find_leaks(
    corpus: pl.DataFrame,
    benchmarks: Mapping[str, pl.DataFrame],
    settings: LeakageSettings,
    memo_dir: Path | None = None,
) -> pl.DataFrame:
    """One row per (training image, eval image) pair that leaks (LEAKAGE_REPORT_SCHEMA)."""
    train = corpus.filter(pl.col("split") == TRAIN)
    evals = eval_images(corpus, benchmarks)
    identical = (
        train.select("image_id", "sha256", "path")
        .join(
            evals.select(
                pl.col("sha256"),
                pl.col("eval_set"),
                pl.col("image_id").alias("eval_image_id"),
                pl.col("path").alias("eval_path"),
            ),
            on="sha256",
        )
        .select(
            "image_id",
            pl.lit(IDENTICAL).alias("kind"),
            pl.lit(0, dtype=pl.Int64).alias("hamming"),
            "eval_set",
            "eval_image_id",
            "sha256",
            pl.col("sha256").alias("eval_sha256"),
            "path",
            "eval_path",
        )
    )
    found = [identical]
    if settings.near_duplicates and train.height and evals.height:
        both = pl.concat([train.select("sha256", "path"), evals.select("sha256", "path")])
        with_hash = [c for c in ("phash",) if c in train.columns and c in evals.columns]
        if with_hash:
            hashes = pl.concat([train["phash"], evals["phash"]]).cast(pl.String)
        else:
            hashes = perceptual_hashes(both, memo_dir)
        train_hash = _as_uint64(hashes.head(train.height))
        eval_hash = _as_uint64(hashes.tail(evals.height))
        t, e, distance = near_duplicate_pairs(
            train_hash, eval_hash, settings.max_hamming, settings.min_hash_bits
        )
        near = pl.DataFrame(
            {
                "image_id": train["image_id"].gather(t),
                "kind": NEAR_DUPLICATE,
                "hamming": distance,
                "eval_set": evals["eval_set"].gather(e),
                "eval_image_id": evals["image_id"].gather(e),
                "sha256": train["sha256"].gather(t),
                "eval_sha256": evals["sha256"].gather(e),
                "path": train["path"].gather(t),
                "eval_path": evals["path"].gather(e),
            },
            schema=LEAKAGE_REPORT_SCHEMA,
        ).filter(pl.col("sha256") != pl.col("eval_sha256"))  # identical ones are listed above
        found.append(near)
    report = pl.concat([f.cast(LEAKAGE_REPORT_SCHEMA) for f in found])  # type: ignore[arg-type]
    return report.sort("image_id", "eval_set", "eval_image_id")


def summary(
    report: pl.DataFrame, corpus: pl.DataFrame, settings: LeakageSettings
) -> dict[str, Any]:
    """What the report holds, for ``summary.json`` and the log."""
    return {
        "training_images": corpus.filter(pl.col("split") == TRAIN).height,
        "excluded_training_images": report["image_id"].n_unique(),
        "pairs": {
            kind: int((report["kind"] == kind).sum()) for kind in (IDENTICAL, NEAR_DUPLICATE)
        },
        "by_eval_set": {
            str(k): int(v) for k, v in report.group_by("eval_set").len().sort("eval_set").rows()
        },
        "near_duplicates": settings.near_duplicates,
        "max_hamming": settings.max_hamming,
        "min_hash_bits": settings.min_hash_bits,
    }


def write_report(
    report: pl.DataFrame, info: dict[str, Any], report_path: Path, summary_path: Path
) -> None:
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report.write_csv(report_path)
    atomic_write_json(summary_path, info, fsync=False)
    if info["excluded_training_images"]:
        log.warning(
            "%d training images are eval images (identical or near-duplicate) and are excluded "
            "from training: %s",
            info["excluded_training_images"],
            report_path,
        )


def excluded_ids(report_path: Path) -> frozenset[str]:
    """The training image ids a leakage report excludes."""
    try:
        table = pl.read_csv(
            report_path, columns=["image_id"], schema_overrides={"image_id": pl.String}
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise GeolocsftError(f"{report_path}: cannot read the leakage report: {exc}") from exc
    return frozenset(table["image_id"].to_list())
