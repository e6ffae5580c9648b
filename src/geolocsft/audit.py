"""Provenance of every artifact, the audit manifest, and the drift check (``geolocsft audit``).

Every job of the workflow writes a provenance record
(``results/audit/provenance/<rule>/<wildcards>.json``, a declared output of the job) when it
succeeds: its outputs and inputs with their sha256, the config subset it ran with (its params),
the package modules it ran and their code version, the versions of the packages that matter, and
the git commit of the checkout. The ``audit_manifest`` rule collects the records of every job
into ``results/audit/manifest.json``, with the sha256 of every artifact as it is now.

:func:`audit` re-hashes everything the manifest lists and reports drift:

* ``missing``: an artifact is gone;
* ``changed``: its bytes are not those the manifest recorded;
* ``code_changed``: the package code its job ran has changed since (a rerun would differ);
* ``config_changed``: Snakemake says the job's params (its config subset) or its set of input
  files are no longer what they were (read from ``snakemake --summary``);
* ``stale``: an input of its job is newer than it (an upstream artifact was remade);
* ``ok`` otherwise.

A directory artifact is hashed as a tree: the sha256 of its sorted (relative path, file sha256)
pairs, so a renamed, added or changed file changes it. Secrets never enter a record: the records
hold params and hashes, never the environment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import socket
import stat as stat_module
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from geolocsft.codegraph import code_version_from_files
from geolocsft.errors import GeolocsftError
from geolocsft.io import canonical_sha256, file_sha256
from geolocsft.memo import ItemTable

log = logging.getLogger(__name__)

PROVENANCE_SCHEMA = "geolocsft-provenance-1"
AUDIT_MANIFEST_SCHEMA = "geolocsft-audit-manifest-1"
#: The distributions whose versions each record keeps (those installed).
TRACKED_PACKAGES = (
    "geolocsft",
    "snakemake",
    "polars",
    "numpy",
    "pillow",
    "pydantic",
    "google-genai",
    "openai",
    "huggingface-hub",
    "torch",
    "torchvision",
    "torchaudio",
    "transformers",
    "tokenizers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "llamafactory",
    "deepspeed",
    "vllm",
    "scikit-learn",
    "pyproj",
    "matplotlib",
)
#: Files inside directory outputs that are not part of the artifact: Snakemake's own marker.
IGNORED_FILES = frozenset({".snakemake_timestamp"})


class FileHashes:
    """sha256 of files, remembered across jobs by (device, inode, size, mtime in ns).

    Provenance records hash every input and output, and directory artifacts (caption files,
    dataset media) hold one file per image: hashing them again in every job that reads them
    would cost O(N) reads per job. As in git's index, a file whose inode, size and modification
    time are unchanged is not read again; a file edited in place gets a new mtime and is
    re-hashed. The memo (``memo.dir``) keeps the hashes; hard-linked copies of one file (the
    per-item memo's blobs) share an inode and are hashed once. ``table=None`` hashes every file.
    """

    def __init__(self, table: ItemTable | None) -> None:
        self.table = table
        self.known: dict[str, str] = {}  # looked up in the memo by this job
        self.new: dict[str, str] = {}  # hashed by this job, not yet saved
        self._asked: set[str] = set()  # keys looked up (found or not)

    @classmethod
    def in_memo(cls, memo_dir: Path) -> FileHashes:
        return cls(ItemTable(memo_dir, "file-sha256", "v1"))

    @staticmethod
    def _key(stat: os.stat_result) -> str:
        return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"

    def look_up(self, stats: Iterable[os.stat_result]) -> None:
        """Fetch the remembered hashes of these files in one query (the memo holds every file
        version ever hashed: a job reads the keys it needs, never the whole table)."""
        if self.table is None:
            return
        keys = {self._key(stat) for stat in stats}
        keys -= self._asked | self.known.keys() | self.new.keys()
        if not keys:
            return
        self._asked |= keys
        found = self.table.load(sorted(keys))
        if found is not None:
            self.known.update(zip(found["key"], found["sha256"], strict=True))

    def look_up_paths(self, paths: Iterable[Path]) -> None:
        """:meth:`look_up` of the plain files among ``paths`` (folders look up their own)."""
        stats = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            if not stat_module.S_ISDIR(stat.st_mode):
                stats.append(stat)
        self.look_up(stats)

    def remembered(self, key: str) -> str | None:
        """A digest kept under ``key`` by :meth:`remember` (this job's, or the memo's)."""
        if self.table is None:
            return None
        if key not in self.known and key not in self.new and key not in self._asked:
            self._asked.add(key)
            found = self.table.load([key])
            if found is not None and found.height:
                self.known[key] = found["sha256"][0]
        return self.known.get(key) or self.new.get(key)

    def remember(self, key: str, digest: str) -> None:
        """Keep a digest that is not a file's (a directory's, by its listing)."""
        if self.table is not None:
            self.new[key] = digest

    def sha256_of_stat(self, stat: os.stat_result) -> str | None:
        """The hash of the file with this ``stat``, when known (looked up before)."""
        key = self._key(stat)
        return self.known.get(key) or self.new.get(key)

    def sha256(self, path: Path, stat: os.stat_result | None = None) -> str:
        """The file's sha256 (``stat``: its ``os.stat`` result, when the caller has it)."""
        if self.table is None:
            return file_sha256(path)
        stat = stat or path.stat()
        key = self._key(stat)
        found = self.known.get(key) or self.new.get(key)
        if found is None and key not in self._asked:
            self.look_up([stat])
            found = self.known.get(key)
        if found is None:
            found = self.new[key] = file_sha256(path)
        return found

    def save(self) -> None:
        """Keep the hashes computed since the last save (one new part of the table)."""
        if self.table is not None and self.new:
            self.table.add(
                pl.DataFrame(
                    {"key": list(self.new), "sha256": list(self.new.values())},
                    schema={"key": pl.String, "sha256": pl.String},
                )
            )
            self.known.update(self.new)
            self.new = {}


def _files_in_tree(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every file under ``root`` (symlinks to files included, symlinked folders not entered,
    :data:`IGNORED_FILES` left out) as (relative POSIX path, stat), in the order of their path
    components. One ``scandir`` per folder and one stat per file: a folder of a dataset's
    media holds a file per image."""
    found: list[tuple[str, os.stat_result]] = []

    def walk(prefix: str, folder: str) -> None:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:  # by name: depth first, this is the order of path components
            if entry.is_dir(follow_symlinks=False):
                walk(f"{prefix}{entry.name}/", entry.path)
            elif entry.is_file() and entry.name not in IGNORED_FILES:
                found.append((f"{prefix}{entry.name}", entry.stat()))

    walk("", str(root))
    return found


def artifact_digest(path: Path, hashes: FileHashes | None = None) -> dict[str, Any]:
    """``{"kind", "sha256", "bytes"[, "files"]}`` of a file or a directory tree.

    A directory's digest is remembered by its listing (every file's path, device, inode, size
    and mtime): the jobs after the one that wrote a folder of 100,000 files (the dataset job
    reading the captions, the audit) stat each file and look up one key, not every file's."""
    hashes = hashes or FileHashes(None)
    if path.is_dir():
        tree = _files_in_tree(path)
        size = sum(stat.st_size for _, stat in tree)
        listing = hashlib.sha256()
        for relative, stat in tree:
            listing.update(f"{relative}\0{FileHashes._key(stat)}\n".encode())
        listing_key = f"tree:{listing.hexdigest()}"
        found = hashes.remembered(listing_key)
        if found is None:
            hashes.look_up(stat for _, stat in tree)
            digest = hashlib.sha256()
            for relative, stat in tree:
                file_digest = hashes.sha256_of_stat(stat) or hashes.sha256(path / relative, stat)
                digest.update(f"{relative}\0{file_digest}\n".encode())
            found = digest.hexdigest()
            hashes.remember(listing_key, found)
        return {"kind": "directory", "sha256": found, "bytes": size, "files": len(tree)}
    if path.is_file():
        return {"kind": "file", "sha256": hashes.sha256(path), "bytes": path.stat().st_size}
    raise FileNotFoundError(path)


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def checkout_root() -> Path:
    """The folder that holds this package's ``src/`` (the workflow checkout)."""
    return Path(__file__).resolve().parents[2]


def git_state(root: Path) -> dict[str, Any]:
    """The commit of a git checkout and whether tracked files differ from it."""
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def to_jsonable(value: Any) -> Any:
    """Params as JSON: mappings, sequences and scalars; anything else as its string."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def split_code_version(version: str) -> tuple[list[str], str]:
    """``"errors,evaluate:ab12…"`` -> (["errors", "evaluate"], "ab12…")."""
    modules, _, digest = version.rpartition(":")
    return [m for m in modules.split(",") if m], digest


def job_record(
    rule: str,
    wildcards: Mapping[str, str],
    inputs: Sequence[str],
    outputs: Sequence[str],
    params: Mapping[str, Any],
    hashes: FileHashes | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """The provenance record of a finished job (``outputs`` without the record itself;
    ``threads``: the cores Snakemake gave it)."""
    recorded: dict[str, Any] = to_jsonable(dict(params))
    code = recorded.pop("code", None)
    modules, code_digest = split_code_version(code) if isinstance(code, str) else ([], None)
    if hashes is not None:
        hashes.look_up_paths(Path(p) for p in [*inputs, *outputs])
    input_digests = {}
    for path in dict.fromkeys(inputs):
        try:
            input_digests[path] = artifact_digest(Path(path), hashes)
        except FileNotFoundError:
            input_digests[path] = {"kind": "missing"}
    return {
        "schema": PROVENANCE_SCHEMA,
        "rule": rule,
        "wildcards": dict(wildcards),
        "outputs": {path: artifact_digest(Path(path), hashes) for path in dict.fromkeys(outputs)},
        "inputs": input_digests,
        "params": recorded,
        "params_sha256": canonical_sha256(recorded),
        "code": {"version": code_digest, "modules": modules},
        "packages": package_versions(),
        "git": git_state(checkout_root()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "threads": threads,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def build_manifest(
    record_paths: Sequence[Path], hashes: FileHashes | None = None
) -> dict[str, Any]:
    """Every artifact of the given provenance records, with its sha256 as it is now."""
    artifacts: dict[str, Any] = {}
    records = {}
    for record_path in sorted(record_paths):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("schema") != PROVENANCE_SCHEMA:
            raise GeolocsftError(f"{record_path}: not a {PROVENANCE_SCHEMA} record")
        records[record_path] = record
    if hashes is not None:
        hashes.look_up_paths(
            [*records, *(Path(path) for record in records.values() for path in record["outputs"])]
        )
    for record_path, record in tqdm(
        records.items(), desc="hashing artifacts", unit="job", mininterval=2.0, disable=None
    ):
        for path, recorded in record["outputs"].items():
            now = artifact_digest(Path(path), hashes)
            if now["sha256"] != recorded["sha256"]:
                log.warning("%s changed after its job (rule %s) wrote it", path, record["rule"])
            artifacts[path] = {**now, "rule": record["rule"], "provenance": str(record_path)}
        artifacts[str(record_path)] = {
            **artifact_digest(record_path, hashes),
            "rule": record["rule"],
            "provenance": str(record_path),
        }
    return {
        "schema": AUDIT_MANIFEST_SCHEMA,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(checkout_root()),
        "packages": package_versions(),
        "artifacts": dict(sorted(artifacts.items())),
    }


def code_version_of(modules: Sequence[str], src_dir: Path) -> str:
    """The code version of ``modules`` as the source under ``src_dir`` has them now."""
    return code_version_from_files(modules, src_dir)


@dataclass(frozen=True)
class Finding:
    path: str
    status: str
    rule: str
    detail: str = ""


#: ``snakemake --summary`` status -> (finding status, explanation).
SUMMARY_STATUS = {
    "rule implementation changed": ("code_changed", "the rule's code changed (snakemake)"),
    "params changed": ("config_changed", "the job's params (config subset) changed (snakemake)"),
    "set of input files changed": ("config_changed", "the job's set of inputs changed (snakemake)"),
    "updated input files": ("stale", "an input is newer than this artifact (snakemake)"),
}


def snakemake_status(workdir: Path, extra_args: Sequence[str] = ()) -> dict[str, tuple[str, str]]:
    """Output -> (finding status, explanation) for every output Snakemake sees as out of date.

    Reads ``snakemake --summary`` (one tab-separated row per output: file, date, rule, log,
    status, plan). ``--list-changes params`` is not used: in Snakemake 9.27 it lists outputs
    whose params did not change too.
    """
    command = [sys.executable, "-m", "snakemake", "--summary", "--nolock", *extra_args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=600, env=env
    )
    if result.returncode != 0:
        raise GeolocsftError(f"snakemake --summary failed in {workdir}:\n{result.stderr.strip()}")
    drift = {}
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) >= 6 and fields[4] in SUMMARY_STATUS:
            drift[fields[0]] = SUMMARY_STATUS[fields[4]]
    return drift


def audit(
    workdir: Path,
    manifest_path: Path,
    check_snakemake: bool = True,
    snakemake_args: Sequence[str] = (),
    hashes: FileHashes | None = None,
) -> list[Finding]:
    """Re-hash every artifact of the manifest and say what drifted (see the module doc).

    ``hashes`` may remember file hashes by inode, size and mtime (:class:`FileHashes`); without
    it every file is read."""
    manifest_file = manifest_path if manifest_path.is_absolute() else workdir / manifest_path
    if not manifest_file.is_file():
        raise GeolocsftError(
            f"{manifest_file}: no audit manifest; run the workflow first (its last job writes it)"
        )
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    if manifest.get("schema") != AUDIT_MANIFEST_SCHEMA:
        raise GeolocsftError(f"{manifest_file}: not a {AUDIT_MANIFEST_SCHEMA} file")
    src_dir = workdir / "src"
    records: dict[str, dict[str, Any]] = {}
    code_drift: dict[str, str] = {}
    for entry in manifest["artifacts"].values():
        record_path = entry["provenance"]
        if record_path in records:
            continue
        try:
            record = json.loads((workdir / record_path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # reported as missing/changed below
        records[record_path] = record
        code = record["code"]
        if code["version"] and code["modules"]:
            try:
                now = split_code_version(code_version_of(code["modules"], src_dir))[1]
            except GeolocsftError as exc:
                code_drift[record_path] = str(exc)
                continue
            if now != code["version"]:
                code_drift[record_path] = (
                    f"modules {', '.join(code['modules'])}: code {code['version']} then, {now} now"
                )
    # Snakemake's own view: params (config subset and code version), input set, rule code.
    snakemake_drift = snakemake_status(workdir, snakemake_args) if check_snakemake else {}
    findings = []
    if hashes is not None:
        hashes.look_up_paths(workdir / path for path in manifest["artifacts"])
    for path, entry in manifest["artifacts"].items():
        rule = entry["rule"]
        target = workdir / path
        if not target.exists():
            findings.append(Finding(path, "missing", rule, "listed in the manifest, not on disk"))
            continue
        current = artifact_digest(target, hashes)
        if current["sha256"] != entry["sha256"]:
            findings.append(
                Finding(
                    path,
                    "changed",
                    rule,
                    f"sha256 {entry['sha256'][:12]}… then, now {current['sha256'][:12]}…",
                )
            )
        elif entry["provenance"] in code_drift:
            findings.append(Finding(path, "code_changed", rule, code_drift[entry["provenance"]]))
        elif path in snakemake_drift:
            status, detail = snakemake_drift[path]
            findings.append(Finding(path, status, rule, detail))
        else:
            findings.append(Finding(path, "ok", rule))
    return findings


def format_findings(findings: Sequence[Finding], show_ok: bool = False) -> str:
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.status] = counts.get(finding.status, 0) + 1
    lines = [
        f"{f.status:<15} {f.path}  ({f.rule}{': ' + f.detail if f.detail else ''})"
        for f in findings
        if show_ok or f.status != "ok"
    ]
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines.append(f"{len(findings)} artifacts: {summary}")
    return "\n".join(lines)
