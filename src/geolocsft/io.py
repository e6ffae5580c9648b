"""Reading and writing files: atomic writes, canonical JSON, hashes and text tables.

Every stage writes through these helpers, so that a killed job never leaves half a file behind
(temporary file in the same folder, fsync, rename) and JSON that is hashed or compared is
always serialised the same way. Tables (CSV, TSV, Parquet) are read with every column as text,
so that their values are validated by the stage that reads them, with messages naming the row.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from geolocsft.errors import InputTableError

PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
TSV_SUFFIXES = frozenset({".tsv", ".tab"})
_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces): the form that is hashed or compared."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_sha256(value: Any) -> str:
    """sha256 of :func:`canonical_json`: equal for equal values whatever their key order."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a part.

    ``fsync=False`` skips the flush to disk (the rename stays atomic): for outputs that are
    rebuilt from a persistent source anyway, where a sync per file would dominate the cost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_bytes(value: Any, indent: int | None = 2, sort_keys: bool = True) -> bytes:
    """Readable JSON (UTF-8, trailing newline) as written by :func:`atomic_write_json`."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=sort_keys)
    return (text + "\n").encode()


def atomic_write_json(
    path: Path,
    value: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = True,
    fsync: bool = True,
) -> None:
    """Write ``value`` as readable JSON, atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, json_bytes(value, indent=indent, sort_keys=sort_keys), fsync=fsync)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def table_separator(path: Path) -> str:
    return "\t" if path.suffix.lower() in TSV_SUFFIXES else ","


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def encoding_problem(data: bytes, encoding: str) -> str | None:
    """Why ``data`` is not text in ``encoding`` (where, and what it probably is), or None.

    For a table declared (or assumed) UTF-8 that is not, the message names the line and the
    bytes, and guesses the real encoding: UTF-16 by its byte-order mark or its NUL bytes, else
    Windows-1252 (the usual Excel export on Windows; Latin-1 is a subset), showing how the
    bytes read there.
    """
    try:
        data.decode(encoding)
    except LookupError:
        return f"unknown encoding {encoding!r} (use a Python codec name: utf-8, cp1252, latin-1)"
    except UnicodeDecodeError as exc:
        line = _line_of(data, exc.start)
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        raw = data[start : end if end != -1 else len(data)][:120]
        where = f"line {line} (byte {exc.start:,}) holds {data[exc.start : exc.end]!r}"
        if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            return where
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            guess = "it starts with a UTF-16 byte-order mark: the encoding is utf-16"
        elif data[:4096].count(b"\0") > len(data[:4096]) // 4:
            guess = "it holds many NUL bytes: probably utf-16 without a byte-order mark"
        else:
            try:
                shown = raw.decode("cp1252").strip()
                guess = f"as Windows-1252 (cp1252) that line reads {shown!r}"
            except UnicodeDecodeError:
                shown = raw.decode("latin-1").strip()
                guess = f"as Latin-1 (latin-1) that line reads {shown!r}"
        return f"{where}; {guess}"
    return None


def decoded_table_bytes(path: Path, what: str, encoding: str, hint: str = "") -> bytes:
    """The bytes of a CSV/TSV file as UTF-8, or :class:`InputTableError` naming its encoding."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputTableError(f"{path}: cannot read the {what}: {exc}") from exc
    problem = encoding_problem(data, encoding)
    if problem:
        raise InputTableError(
            f"{path}: the {what} is not valid {encoding} text: {problem}. Save it as UTF-8"
            + (f", or {hint}" if hint else "")
        )
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        return data
    return data.decode(encoding).encode("utf-8")


def read_text_table(
    path: Path, what: str = "table", encoding: str = "utf-8", hint: str = ""
) -> pl.DataFrame:
    """A CSV/TSV/Parquet table with every column as text and header names stripped.

    Text tables are read as ``encoding`` (UTF-8 by default; a byte-order mark is fine); bytes that
    are not valid there raise :class:`InputTableError` naming the file, the line and the likely
    encoding, with ``hint`` saying how to declare it. Raises :class:`InputTableError` naming the
    file when it is missing or unreadable.
    """
    if not path.is_file():
        raise InputTableError(f"{path}: {what} not found (no such file)")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            table = pl.read_parquet(path)
            table = table.with_columns(pl.all().cast(pl.String))
        else:
            table = pl.read_csv(
                decoded_table_bytes(path, what, encoding, hint),
                infer_schema=False,
                separator=table_separator(path),
            )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputTableError(f"{path}: cannot read the {what}: {exc}") from exc
    stripped = [name.strip() for name in table.columns]
    if stripped != table.columns and len(set(stripped)) == len(stripped):
        table.columns = stripped
    return table


def read_table_header(
    path: Path, what: str = "table", encoding: str = "utf-8", hint: str = ""
) -> list[str]:
    """The column names of a CSV/TSV/Parquet table, read without its rows."""
    if not path.is_file():
        raise InputTableError(f"{path}: {what} not found (no such file)")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return list(pl.read_parquet_schema(path))
        with path.open("rb") as handle:
            first = handle.readline(1 << 20)
        problem = encoding_problem(first, encoding)
        if problem:
            raise InputTableError(
                f"{path}: the {what}'s header is not valid {encoding} text: {problem}. Save it as "
                "UTF-8" + (f", or {hint}" if hint else "")
            )
        header = first.decode(encoding).encode("utf-8")
        return pl.read_csv(header, n_rows=0, separator=table_separator(path)).columns
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputTableError(f"{path}: cannot read the {what}: {exc}") from exc
