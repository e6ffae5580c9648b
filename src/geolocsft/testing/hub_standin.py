"""A loopback stand-in of the Hugging Face Hub, for the real ``huggingface_hub`` client.

Point ``HF_ENDPOINT`` (or ``endpoint=``) at it and ``HfApi.model_info``/``dataset_info``/
``repo_info``, ``list_repo_tree``/``list_repo_files``, ``hf_hub_download``,
``snapshot_download`` and :func:`geolocsft.hub.fetch.fetch_repo` work against it over HTTP on
127.0.0.1, without network. It serves the routes those calls use:

* ``GET /api/{models,datasets}/<repo>[/revision/<rev>]``: repo info with the commit ``sha`` and
  the ``siblings``;
* ``GET /api/{models,datasets}/<repo>/tree/<rev>[/<path>]?recursive=``: the tree listing, with
  git blob ids and, for files of at least ``lfs_min_bytes``, LFS pointers (sha256, size);
* ``HEAD``/``GET /<repo>/resolve/<rev>/<file>`` (models) and ``/datasets/<repo>/resolve/...``:
  the file, with ``ETag``, ``X-Repo-Commit``, ``Content-Length``, ``X-Linked-Etag``/
  ``X-Linked-Size`` for LFS files, and ``Range`` requests answered with ``206`` (resume).

Each repo has one fixed 40-hex commit; ``main`` (and any alias) resolves to it. No Xet headers
are ever sent, so clients always take the plain HTTP download path. Errors carry the Hub's
``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).

Faults: :meth:`HubState.interrupt` cuts the connection after N bytes of a file's first GET
(optionally followed by a number of ``503`` answers for that file, or stalling instead of closing,
to let a test kill the client mid-download). Every GET is counted per file with the bytes sent
and the ``Range`` start, so a test can prove a resumed download did not fetch the received part
again.

Also a command, serving every repo under a folder (``<root>/datasets/<owner>/<name>/...`` and
``<root>/models/<owner>/<name>/...``)::

    python -m geolocsft.testing.hub_standin --root DIR --port 8766
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from geolocsft.testing.loopback import BackgroundServer, LoopbackServer, serve_until_interrupted

RepoType = Literal["model", "dataset"]
REPO_TYPES: tuple[RepoType, ...] = ("model", "dataset")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 1 << 20


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as ``oid`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of a large file."""
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    return text.encode()


@dataclass(frozen=True)
class FileMeta:
    """What the Hub knows about one file of a commit."""

    size: int
    sha256: str
    git_oid: str  # blob id of the content, or of the LFS pointer for LFS files
    lfs: bool
    pointer_size: int

    @property
    def etag(self) -> str:
        """sha256 for LFS files, the git blob id otherwise (as on the Hub)."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class HubRepo:
    """One repository at one commit, its files in memory (``bytes``) or on disk (``Path``)."""

    repo_id: str
    files: dict[str, bytes | Path]
    repo_type: RepoType = "dataset"
    commit: str | None = None
    aliases: tuple[str, ...] = ("main",)
    lfs_min_bytes: int = 1024
    _meta: dict[str, FileMeta] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}, not {self.repo_type!r}")
        if self.commit is None:
            listing = "".join(f"{p}\0{self.meta(p).git_oid}\n" for p in sorted(self.files))
            self.commit = hashlib.sha1(f"{self.repo_id}\n{listing}".encode()).hexdigest()
        if not COMMIT_RE.match(self.commit):
            raise ValueError(f"commit must be 40 lowercase hex digits, not {self.commit!r}")

    @classmethod
    def from_folder(
        cls, repo_id: str, folder: Path, repo_type: RepoType = "dataset", **kwargs: Any
    ) -> HubRepo:
        """A repo serving every file under ``folder`` (read when requested, not loaded)."""
        files: dict[str, bytes | Path] = {
            p.relative_to(folder).as_posix(): p
            for p in sorted(folder.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(folder).parts
        }
        return cls(repo_id=repo_id, files=files, repo_type=repo_type, **kwargs)

    def content(self, path: str) -> bytes:
        source = self.files[path]
        return source if isinstance(source, bytes) else source.read_bytes()

    def chunks(self, path: str, start: int, end: int) -> Iterator[bytes]:
        """The bytes ``start`` to ``end`` (exclusive) of a file, in chunks."""
        source = self.files[path]
        if isinstance(source, bytes):
            for offset in range(start, end, _CHUNK):
                yield source[offset : min(end, offset + _CHUNK)]
            return
        with source.open("rb") as handle:
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                block = handle.read(min(_CHUNK, remaining))
                if not block:
                    return
                remaining -= len(block)
                yield block

    def meta(self, path: str) -> FileMeta:
        if path not in self._meta:
            data = self.content(path)
            sha256 = hashlib.sha256(data).hexdigest()
            lfs = len(data) >= self.lfs_min_bytes
            pointer = lfs_pointer(sha256, len(data))
            self._meta[path] = FileMeta(
                size=len(data),
                sha256=sha256,
                git_oid=git_blob_sha1(pointer if lfs else data),
                lfs=lfs,
                pointer_size=len(pointer),
            )
        return self._meta[path]

    def resolve(self, revision: str) -> str | None:
        """The commit a revision names (``main``, an alias or the commit itself), or None."""
        return self.commit if revision in (self.commit, *self.aliases) else None


@dataclass
class Interruption:
    """A fault on one file: the first GET sends ``after_bytes`` of its body, then the connection
    is closed (or, with ``stall``, held open without data until :attr:`HubState.release` is set);
    the next ``outage_requests`` requests for the file are answered ``503``."""

    after_bytes: int
    outage_requests: int = 0
    stall: bool = False


@dataclass
class FileStats:
    """Requests for one file: GETs with the ``Range`` start of each (0 without one), HEADs,
    bytes of file content sent and ``503`` answers."""

    gets: int = 0
    heads: int = 0
    bytes_sent: int = 0
    range_starts: list[int] = field(default_factory=list)
    unavailable: int = 0


@dataclass
class HubState:
    """The repos served, the faults to inject and what was asked (thread-safe)."""

    repos: list[HubRepo] = field(default_factory=list)
    interruptions: dict[tuple[str, str], Interruption] = field(default_factory=dict)
    #: set to let stalled downloads end (their connection is then closed)
    release: threading.Event = field(default_factory=threading.Event)
    stall_timeout_s: float = 60.0
    #: requests by route: info, tree, resolve
    routes: Counter[str] = field(default_factory=Counter)
    files: dict[tuple[str, str], FileStats] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _outages: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos.append(repo)
        return repo

    def interrupt(
        self,
        repo_id: str,
        path: str,
        after_bytes: int,
        outage_requests: int = 0,
        stall: bool = False,
    ) -> None:
        """Arm a fault on the next GET of ``path`` in ``repo_id`` (see :class:`Interruption`)."""
        with self.lock:
            self.interruptions[(repo_id, path)] = Interruption(after_bytes, outage_requests, stall)

    def heal(self) -> None:
        """Drop every armed fault and outage, and let stalled downloads end."""
        with self.lock:
            self.interruptions.clear()
            self._outages.clear()
        self.release.set()

    def stats(self, repo_id: str, path: str) -> FileStats:
        with self.lock:
            return self.files.setdefault((repo_id, path), FileStats())

    def find(self, repo_type: RepoType, rest: str) -> tuple[HubRepo, str] | None:
        """The repo whose id starts ``rest`` (longest match) and what follows it."""
        best: HubRepo | None = None
        for repo in self.repos:
            if repo.repo_type != repo_type:
                continue
            if (rest == repo.repo_id or rest.startswith(repo.repo_id + "/")) and (
                best is None or len(repo.repo_id) > len(best.repo_id)
            ):
                best = repo
        if best is None:
            return None
        return best, rest[len(best.repo_id) :].lstrip("/")

    def _take_fault(self, key: tuple[str, str], method: str) -> tuple[bool, Interruption | None]:
        """(answer 503?, interruption to apply to this GET)."""
        with self.lock:
            stats = self.files.setdefault(key, FileStats())
            if self._outages.get(key, 0) > 0:
                self._outages[key] -= 1
                stats.unavailable += 1
                return True, None
            if method != "GET":
                return False, None
            interruption = self.interruptions.pop(key, None)
            if interruption is not None and interruption.outage_requests:
                self._outages[key] = interruption.outage_requests
            return False, interruption


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer[HubState]
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing ----------------------------------------------------------------------------

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(
        self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._json(status, {"error": message}, extra)

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        state = self.server.state
        match = re.match(r"^/api/(models|datasets)/(.+)$", path)
        if match:
            repo_type: RepoType = "model" if match.group(1) == "models" else "dataset"
            found = state.find(repo_type, match.group(2))
            if found is None:
                self._error(404, "RepoNotFound", f"Repository not found: {match.group(2)}")
                return
            repo, tail = found
            if tail == "" or tail.startswith("revision/"):
                self._info(repo, tail[len("revision/") :] if tail else "main")
            elif tail.startswith("tree/"):
                revision, _, sub = tail[len("tree/") :].partition("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                self._tree(repo, revision, sub.strip("/"), recursive)
            else:
                self._error(404, None, f"no route {url.path}")
            return
        repo_type = "dataset" if path.startswith("/datasets/") else "model"
        rest = path[len("/datasets/") :] if repo_type == "dataset" else path.lstrip("/")
        repo_part, sep, tail = rest.partition("/resolve/")
        if not sep:
            self._error(404, None, f"no route {url.path}")
            return
        found = state.find(repo_type, repo_part)
        if found is None or found[1]:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_part}")
            return
        revision, _, filename = tail.partition("/")
        self._resolve(found[0], revision, filename)

    # -- API routes --------------------------------------------------------------------------

    def _info(self, repo: HubRepo, revision: str) -> None:
        with self.server.state.lock:
            self.server.state.routes["info"] += 1
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        self._json(
            200,
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
                "sha": commit,
                "private": False,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": "2025-01-01T00:00:00.000Z",
                "createdAt": "2025-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            },
        )

    def _tree(self, repo: HubRepo, revision: str, sub: str, recursive: bool) -> None:
        with self.server.state.lock:
            self.server.state.routes["tree"] += 1
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        prefix = f"{sub}/" if sub else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix) :]
            parts = relative.split("/")
            # every folder on the way (the Hub lists folders too)
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                folder = prefix + "/".join(parts[:depth])
                oid = hashlib.sha1(f"tree {folder}".encode()).hexdigest()
                entries.setdefault(
                    folder, {"type": "directory", "oid": oid, "size": 0, "path": folder}
                )
            if not recursive and len(parts) > 1:
                continue
            meta = repo.meta(path)
            entry: dict[str, Any] = {
                "type": "file",
                "oid": meta.git_oid,
                "size": meta.size,
                "path": path,
            }
            if meta.lfs:
                entry["lfs"] = {
                    "oid": meta.sha256,
                    "size": meta.size,
                    "pointerSize": meta.pointer_size,
                }
            entries[path] = entry
        if sub and not entries:
            message = f"{sub} does not exist on {revision}"
            self._error(404, "EntryNotFound", message, {"X-Repo-Commit": commit})
            return
        self._json(200, [entries[key] for key in sorted(entries)])

    def _resolve(self, repo: HubRepo, revision: str, filename: str) -> None:
        state = self.server.state
        with state.lock:
            state.routes["resolve"] += 1
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if filename not in repo.files:
            self._error(
                404,
                "EntryNotFound",
                f"{filename} does not exist on {revision}",
                {"X-Repo-Commit": commit},
            )
            return
        key = (repo.repo_id, filename)
        unavailable, interruption = state._take_fault(key, self.command)
        if unavailable:
            self._error(503, None, "Service Unavailable (injected outage)")
            return
        meta = repo.meta(filename)
        start, end = 0, meta.size
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            parsed = re.match(r"^bytes=(\d+)-(\d*)$", range_header.strip())
            if parsed is None:
                self._error(400, None, f"unsupported Range {range_header!r}")
                return
            start = int(parsed.group(1))
            end = min(meta.size, int(parsed.group(2)) + 1) if parsed.group(2) else meta.size
            if start >= meta.size or start >= end:
                unsatisfiable = {"Content-Range": f"bytes */{meta.size}"}
                self._error(416, None, "Range Not Satisfiable", unsatisfiable)
                return
            status = 206
        stats = state.stats(*key)
        with state.lock:
            if self.command == "GET":
                stats.gets += 1
                stats.range_starts.append(start)
            else:
                stats.heads += 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{meta.etag}"')
        self.send_header("X-Repo-Commit", commit)
        if meta.lfs:
            self.send_header("X-Linked-Etag", f'"{meta.sha256}"')
            self.send_header("X-Linked-Size", str(meta.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{meta.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = end - start
        if interruption is not None and interruption.after_bytes < limit:
            limit = interruption.after_bytes
        else:
            interruption = None
        sent = 0
        try:
            for block in repo.chunks(filename, start, start + limit):
                self.wfile.write(block)
                sent += len(block)
                with state.lock:
                    stats.bytes_sent += len(block)
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True
            return
        if interruption is not None:
            if interruption.stall:
                state.release.wait(state.stall_timeout_s)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class HubStandin(BackgroundServer[HubState]):
    """Run the stand-in in a background thread: ``with HubStandin(state) as hub: hub.url``."""

    def __init__(self, state: HubState | None = None, port: int = 0) -> None:
        super().__init__(LoopbackServer(_Handler, state or HubState(), port))

    def stop(self) -> None:
        self.state.release.set()  # let stalled downloads end
        super().stop()


def repos_under(root: Path) -> list[HubRepo]:
    """Every repo under ``root/datasets/<owner>/<name>`` and ``root/models/<owner>/<name>``."""
    repos = []
    kinds: tuple[tuple[str, RepoType], ...] = (("datasets", "dataset"), ("models", "model"))
    for folder_name, repo_type in kinds:
        base = root / folder_name
        if not base.is_dir():
            continue
        for owner in sorted(p for p in base.iterdir() if p.is_dir()):
            for repo_dir in sorted(p for p in owner.iterdir() if p.is_dir()):
                repo_id = f"{owner.name}/{repo_dir.name}"
                repos.append(HubRepo.from_folder(repo_id, repo_dir, repo_type))
    return repos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of datasets/ and models/")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args(argv)
    state = HubState(repos=repos_under(args.root))
    if not state.repos:
        parser.error(f"no repo under {args.root}/datasets/<owner>/<name> or models/<owner>/<name>")
    server = LoopbackServer(_Handler, state, args.port)
    for repo in state.repos:
        print(f"{repo.repo_type} {repo.repo_id} @ {repo.commit}")
    print(f"Hub stand-in listening on {server.url} (export HF_ENDPOINT={server.url})", flush=True)
    serve_until_interrupted(server, lambda: {"requests": dict(state.routes)})


if __name__ == "__main__":
    main()
