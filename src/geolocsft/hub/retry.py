"""Retries of Hub requests: which failures are transient, the backoff, and user-facing errors.

A request that fails with a network error or HTTP 408/429/5xx is retried with a doubling
backoff (``acquire.max_attempts``, ``backoff_s``, ``max_backoff_s``); anything else, or the last
failure, becomes a :class:`GeolocsftError` that names the repo or file and what to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from geolocsft.errors import GeolocsftError

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_STATUS = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per request (transient network errors, 408/429/5xx) and the backoff between
    them (doubling, at most ``max_backoff_s``). An attempt that received bytes resets the count."""

    CONFIG_SECTION: ClassVar[str] = "acquire"

    max_attempts: int
    backoff_s: float
    max_backoff_s: float

    def wait(self, attempt: int) -> None:
        time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


def short_error(exc: BaseException) -> str:
    """The first line of an exception's message (huggingface_hub appends help links)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def is_transient(exc: BaseException) -> bool:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status in RETRY_STATUS
    return False


def hub_error(exc: BaseException, what: str, endpoint: str) -> GeolocsftError:
    """A user-facing error for a failed Hub call."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return GeolocsftError(
            f"{what}: HF_HUB_OFFLINE is set, but fetching from the Hub needs the network "
            "(acquisition runs on the submit host: unset HF_HUB_OFFLINE there)"
        )
    if isinstance(exc, GatedRepoError):
        return GeolocsftError(
            f"{what}: the repo is gated on {endpoint}: accept its terms on the Hub and set "
            "HF_TOKEN (or run `hf auth login`)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return GeolocsftError(
            f"{what}: repository not found on {endpoint} (check repo_id and repo_type; a private "
            "repo needs HF_TOKEN)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return GeolocsftError(f"{what}: the revision does not exist on {endpoint}")
    if isinstance(exc, RemoteEntryNotFoundError):
        return GeolocsftError(f"{what}: the file does not exist on {endpoint}")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " (set HF_TOKEN for a private or gated repo)" if status in (401, 403) else ""
        return GeolocsftError(f"{what}: HTTP {status} from {endpoint}{hint} ({short_error(exc)})")
    return GeolocsftError(
        f"{what}: cannot reach {endpoint} ({short_error(exc)}); check the network, HF_ENDPOINT and "
        "proxies, then rerun"
    )


def with_retries(call: Callable[[], T], what: str, endpoint: str, retry: RetryPolicy) -> T:
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or attempt >= retry.max_attempts:
                raise hub_error(exc, what, endpoint) from exc
            log.warning(
                "%s: %s; retry %d/%d", what, short_error(exc), attempt, retry.max_attempts - 1
            )
            retry.wait(attempt)
