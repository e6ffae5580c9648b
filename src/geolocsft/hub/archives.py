"""Unpacking image archives (zip, tar, tar.gz, ...) or image files, with metadata tables (CSV, TSV
or Parquet) among the fetched files or inside the archives."""

from __future__ import annotations

import functools
import logging
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.hub.unpacking import (
    ARCHIVE_SUFFIXES,
    TABLE_SUFFIXES,
    ImageWriter,
    UnpackResult,
    UnpackSettings,
    cell_text,
    is_archive,
    matches_any,
)
from geolocsft.images import IMAGE_SUFFIXES
from geolocsft.tables import read_metadata_table, resolve_columns

log = logging.getLogger(__name__)


def archive_members(path: Path, label: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(member name, reader) of every regular file of a zip or tar archive, sorted by name."""
    errors = (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error)

    def guarded(read: Callable[[], bytes], name: str) -> Callable[[], bytes]:
        def call() -> bytes:
            try:
                return read()
            except errors as exc:
                raise GeolocsftError(f"{label}: cannot extract {name}: {exc}") from exc

        return call

    try:
        if path.name.lower().endswith(".zip") or zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zipped:
                for info in sorted(zipped.infolist(), key=lambda i: i.filename):
                    if not info.is_dir():
                        read_info = functools.partial(zipped.read, info)
                        yield info.filename, guarded(read_info, info.filename)
            return
        with tarfile.open(path, mode="r:*") as tarred:
            members = sorted((m for m in tarred.getmembers() if m.isfile()), key=lambda m: m.name)
            for member in members:

                def read(member: tarfile.TarInfo = member) -> bytes:
                    handle = tarred.extractfile(member)
                    return handle.read() if handle is not None else b""

                yield member.name, guarded(read, member.name)
    except errors as exc:
        raise GeolocsftError(f"{label}: cannot read the archive: {exc}") from exc


def unpack_archives(
    files: Mapping[str, Path],
    writer: ImageWriter,
    settings: UnpackSettings,
    result: UnpackResult,
    scratch: Path,
) -> list[dict[str, Any]]:
    image_patterns = settings.images or (
        *(f"*{s}" for s in ARCHIVE_SUFFIXES),
        *(f"*{s}" for s in sorted(IMAGE_SUFFIXES)),
    )
    table_patterns = settings.metadata or tuple(f"*{s}" for s in TABLE_SUFFIXES)
    sources = [p for p in sorted(files) if matches_any(p, image_patterns)]
    tables: list[tuple[str, Path]] = [
        (p, files[p])
        for p in sorted(files)
        if p not in sources
        and matches_any(p, table_patterns)
        and p.lower().endswith(TABLE_SUFFIXES)
    ]
    if not sources:
        raise GeolocsftError(
            f"no image archive or image file among the fetched files matches images: "
            f"{list(image_patterns)} (fetched: {', '.join(sorted(files)) or 'nothing'})"
        )
    skipped = 0
    for source in sources:
        entries: Iterable[tuple[str, Callable[[], bytes]]]
        if is_archive(source):
            entries = archive_members(files[source], source)
        else:
            entries = [(source, files[source].read_bytes)]
        for member, read in entries:
            member_path = PurePosixPath(member.replace("\\", "/"))
            origin = f"{source}:{member}" if is_archive(source) else source
            if "__MACOSX" in member_path.parts or member_path.name.startswith("."):
                skipped += 1
                continue
            suffix = member_path.suffix.lower()
            if is_archive(source) and suffix in TABLE_SUFFIXES:
                if matches_any(member, table_patterns):
                    extracted = scratch / f"{len(tables):04d}{suffix}"
                    extracted.write_bytes(read())
                    tables.append((f"{source}:{member}", extracted))
                continue
            if suffix not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            name = member_path.name
            data = read()
            used, clash = writer.add(name, data, origin)
            if used != name:
                raise GeolocsftError(
                    f"two different images are named {name}: {clash} and {origin}; ingest finds "
                    "images by file name, so narrow allow_patterns/images to one copy"
                )
    if skipped:
        log.info("skipped %d archive members that are not images or tables", skipped)
    if not tables:
        raise GeolocsftError(
            f"no metadata table (CSV, TSV or Parquet) matches metadata: {list(table_patterns)} "
            "among the fetched files or the archives' members; set acquire.datasets.<name>."
            "metadata to the table's path"
        )
    cols = settings.columns
    rows: list[dict[str, Any]] = []
    for label, path in tables:
        try:
            table = read_metadata_table(path, settings.encoding)
            found = resolve_columns(table.columns, cols, label)
        except InputTableError as exc:
            raise InputTableError(str(exc).replace(str(path), label)) from None
        ids = table[found.id].to_list() if found.id else [None] * table.height
        paths = table[found.file].to_list() if found.file else [None] * table.height
        lats, lons = table[str(found.lat)].to_list(), table[str(found.lon)].to_list()
        for index, (raw_id, raw_file, lat, lon) in enumerate(
            zip(ids, paths, lats, lons, strict=True)
        ):
            file_name = PurePosixPath(cell_text(raw_file).replace("\\", "/")).name
            rows.append(
                {
                    "image_id": cell_text(raw_id).strip() or file_name,
                    "file": f"images/{file_name}" if file_name else "",
                    "lat": cell_text(lat),
                    "lon": cell_text(lon),
                    "source_file": label,
                    "source_row": index + 1,
                }
            )
    return rows
