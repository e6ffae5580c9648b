"""Requests that leave evenly: pacing on send time, so a server's per-minute caps hold.

An API that allows ``R`` requests (or tokens) per minute counts what ARRIVES in any sliding 60 s
window. Sending a minute's budget as one burst and then waiting (what a log of the last minute
allows) is exceeded at the server as soon as arrival times scatter a little. Here each cap is a
smooth token bucket with no burst (GCRA: every request moves a "theoretical arrival time" on by
its cost divided by the rate), and the rate keeps a safety margin: ``(1 - margin) * R`` per
window. Sends at least ``1 / rate`` apart put at most ``(1 - margin) * R`` in any window of
their send times, and a server window of arrival times still holds at most ``R`` while arrivals
scatter by less than ``window * margin / (1 - margin)`` (3.2 s for a minute and 5%).

Tokens are reserved before sending (an upper bound: the prompt estimate plus the output limit)
and settled with the real usage when the answer says it. The pace follows what requests really
use (a moving average of used / reserved), and a sliding-window sum of the costs (reserved until
settled, kept incrementally) is a hard guard on top of it, so no window ever holds more than the
budget of reserved-or-used tokens. Every operation is O(1) amortized: each reservation enters
and leaves the window once.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from geolocsft.errors import GeolocsftError

_EPSILON_S = 1e-6


class _Entry:
    __slots__ = ("at", "cost", "in_window")

    def __init__(self, at: float, cost: float) -> None:
        self.at = at
        self.cost = cost
        self.in_window = True


class _Pace:
    """One cap: at most ``budget`` units per ``window_s``, sent at an even rate."""

    def __init__(self, cap: int, window_s: float, margin: float, what: str) -> None:
        self.budget = cap * (1.0 - margin)
        self.seconds_per_unit = window_s / self.budget
        self.window_s = window_s
        self.what = what
        self.tat = -math.inf  # when the bucket is empty again (GCRA's theoretical arrival time)
        self.entries: collections.deque[_Entry] = collections.deque()
        self.in_window = 0.0
        #: what requests really use, as a share of what they reserve (a moving average):
        #: the pace follows real usage while the window guard counts the reservations
        self.used_share = 1.0

    def earliest(self, at: float, cost: float) -> float:
        """The first time >= ``at`` at which ``cost`` units may leave. Times asked for never
        decrease, so entries that leave the window before ``at`` are dropped for good."""
        if cost > self.budget:
            raise GeolocsftError(
                f"one request reserves {cost:.0f} {self.what}, more than the "
                f"{self.budget:.0f} that the cap (less its safety margin) allows per window"
            )
        at = max(at, self.tat)
        self._drop_before(at)
        while self.in_window + cost > self.budget and self.entries:
            # Wait until the oldest reservation has left the window (a hair after, so that
            # float rounding never counts it in again).
            oldest = self._pop()
            at = max(at, oldest.at + self.window_s + _EPSILON_S)
        if not self.entries:
            self.in_window = 0.0  # no drift from many additions and subtractions
        return at

    def _pop(self) -> _Entry:
        entry = self.entries.popleft()
        entry.in_window = False
        self.in_window -= entry.cost
        return entry

    def _drop_before(self, at: float) -> None:
        while self.entries and self.entries[0].at <= at - self.window_s:
            self._pop()

    def commit(self, at: float, cost: float) -> _Entry:
        self.tat = max(at, self.tat) + cost * self.used_share * self.seconds_per_unit
        entry = _Entry(at, cost)
        self.entries.append(entry)
        self.in_window += cost
        return entry

    def settle(self, entry: _Entry, cost: float) -> None:
        """Replace a reservation by what was really used, in the window and in the pace."""
        if entry.cost > 0:
            share = min(max(cost / entry.cost, 0.05), 1.0)
            self.used_share += 0.1 * (share - self.used_share)
        delta = cost - entry.cost
        entry.cost = cost
        if entry.in_window:
            self.in_window += delta


@dataclass
class Reservation:
    """A granted send: when it may leave, and its token entry (for :meth:`RateLimiter.settle`)."""

    at: float
    tokens: _Entry | None


class RateLimiter:
    """Caps on requests and tokens per window (a minute for the APIs' RPM and TPM).

    ``acquire`` returns at the request's send time; requests are granted in the order they ask.
    With no cap configured it returns at once and costs nothing.
    """

    def __init__(
        self,
        requests_per_window: int | None,
        tokens_per_window: int | None,
        window_s: float = 60.0,
        margin: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = (
            _Pace(requests_per_window, window_s, margin, "requests")
            if requests_per_window
            else None
        )
        self.tokens = (
            _Pace(tokens_per_window, window_s, margin, "tokens") if tokens_per_window else None
        )
        self.clock = clock
        self._last = -math.inf

    @property
    def unlimited(self) -> bool:
        return self.requests is None and self.tokens is None

    def check(self, tokens: int) -> None:
        """Raise before anything is sent when one request could never fit in the token cap."""
        if self.tokens is not None and tokens > self.tokens.budget:
            raise GeolocsftError(
                f"one request reserves up to {tokens} tokens (captions.estimated_prompt_tokens + "
                "the output limit, or max_output_tokens_ceiling for a retry of a truncated "
                f"answer), more than the {self.tokens.budget:.0f} that tokens_per_minute less "
                "rate_margin allows per window: raise tokens_per_minute or lower the limits"
            )

    def reserve(self, tokens: int) -> Reservation:
        """Book the next send time for a request of (at most) ``tokens`` tokens."""
        if self.unlimited:
            return Reservation(self.clock(), None)
        at = max(self.clock(), self._last)
        if self.requests is not None:
            at = self.requests.earliest(at, 1.0)
        if self.tokens is not None:
            at = self.tokens.earliest(at, float(tokens))
        if self.requests is not None:
            self.requests.commit(at, 1.0)
        entry = self.tokens.commit(at, float(tokens)) if self.tokens is not None else None
        self._last = at
        return Reservation(at, entry)

    async def acquire(self, tokens: int) -> Reservation:
        """Wait for the request's send time (at once when no cap is configured)."""
        reservation = self.reserve(tokens)
        delay = reservation.at - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        return reservation

    def settle(self, reservation: Reservation, tokens: int | None) -> None:
        """The request's real token usage (None: unknown, keep the reservation)."""
        if tokens is not None and self.tokens is not None and reservation.tokens is not None:
            self.tokens.settle(reservation.tokens, float(tokens))
