"""One file from the Hub: a resumable download into a partial file, then checksum verification.

Every file is streamed through ``huggingface_hub``'s HTTP session (``HF_ENDPOINT``, ``HF_TOKEN``,
its user agent) into ``partial/<content id>.part``, written to disk as it arrives; a later run
sends ``Range: bytes=<received>-`` and appends the rest (a ``200`` answer to a range request
restarts the file). ``huggingface_hub.snapshot_download`` deletes a partial file when a download
fails, so a killed job would start big files from zero again: that is why the bytes are fetched
here. A complete file is checked against the Hub's checksum (sha256 of LFS files, git blob id of
the others) before the caller moves it into the cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

from geolocsft.errors import GeolocsftError
from geolocsft.hub.remote import RemoteFile
from geolocsft.hub.retry import RetryPolicy, hub_error, is_transient, short_error
from geolocsft.io import file_sha256

log = logging.getLogger(__name__)


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (the Hub's ``oid`` of a file not stored with LFS)."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_resumable(
    url: str,
    remote: RemoteFile,
    partial: Path,
    headers: Mapping[str, str],
    endpoint: str,
    retry: RetryPolicy,
) -> None:
    """Stream ``url`` into ``partial`` until it holds ``remote.size`` bytes, resuming with Range."""
    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    what = f"downloading {remote.path} ({remote.size:,} bytes)"
    failures = 0  # consecutive failed attempts that received nothing
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        if have > remote.size:
            log.warning("%s: partial file %s is too long; starting again", remote.path, partial)
            partial.unlink()
            have = 0
        if have == remote.size:
            return
        request_headers = {**headers, "Accept-Encoding": "identity"}
        if have:
            request_headers["Range"] = f"bytes={have}-"
            log.info("%s: resuming at byte %s of %s", remote.path, f"{have:,}", f"{remote.size:,}")
        received = 0
        try:
            with http_stream_backoff(
                "GET",
                url,
                headers=request_headers,
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                max_retries=0,
                retry_on_exceptions=(),
                retry_on_status_codes=(),
            ) as response:
                hf_raise_for_status(response)
                mode = "ab"
                if have and response.status_code == 200:
                    log.warning("%s: the server ignored the Range request; starting again", url)
                    mode = "wb"
                elif have and not response.headers.get("Content-Range", "").startswith(
                    f"bytes {have}-"
                ):
                    raise GeolocsftError(
                        f"{what}: asked for bytes {have}- but the server answered with "
                        f"Content-Range {response.headers.get('Content-Range')!r}"
                    )
                # Unbuffered: every chunk is on disk as soon as it arrived, even if the process
                # is killed a moment later.
                with partial.open(mode, buffering=0) as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        received += len(chunk)
        except GeolocsftError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise hub_error(exc, what, endpoint) from exc
            failures = 1 if received else failures + 1
            if failures >= retry.max_attempts:
                kept = partial.stat().st_size if partial.exists() else 0
                raise GeolocsftError(
                    f"{what} from {endpoint} failed ({short_error(exc)}) after "
                    f"{retry.max_attempts} attempts; {kept:,} bytes are kept in {partial} and "
                    "the next run resumes from there"
                ) from exc
            log.warning(
                "%s: %s after %s new bytes; retrying (%d/%d)",
                remote.path,
                short_error(exc),
                f"{received:,}",
                failures,
                retry.max_attempts - 1,
            )
            retry.wait(failures)
            continue
        if received == 0:
            raise GeolocsftError(f"{what}: the server sent an empty body; rerun to retry")


def verify_download(partial: Path, remote: RemoteFile) -> str:
    """Check a complete download against the Hub's checksum; return its sha256."""
    sha256 = file_sha256(partial)
    actual = sha256 if remote.lfs_sha256 else git_blob_sha1(partial)
    if actual != remote.content_id:
        partial.unlink()
        kind = "sha256" if remote.lfs_sha256 else "git blob id"
        raise GeolocsftError(
            f"{remote.path}: the downloaded file's {kind} {actual} is not the Hub's "
            f"{remote.content_id}; the download was deleted, rerun to fetch it again"
        )
    return sha256
