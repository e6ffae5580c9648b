"""Pacing: requests leave evenly, so a server that enforces the configured cap over any sliding
window of arrivals never rejects one, and the run still goes at (nearly) the allowed rate."""

from __future__ import annotations

import itertools
import random

import pytest
from test_captions import gemini, make_items, run

from geolocsft.captions.ratelimit import RateLimiter
from geolocsft.errors import GeolocsftError
from geolocsft.testing.standin import Standin, StandinState


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "pacing-test-key")


class Clock:
    """A clock the test moves (the limiter only reads it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def most_in_window(events: list[tuple[float, float]], window: float) -> float:
    """The largest sum of costs of events within any half-open window of ``window`` seconds."""
    events = sorted(events)
    best = total = 0.0
    start = 0
    for t, cost in events:
        total += cost
        while events[start][0] <= t - window:
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best


def test_requests_asked_all_at_once_leave_evenly_below_the_cap():
    clock = Clock()
    limiter = RateLimiter(100, None, window_s=60.0, margin=0.05, clock=clock)
    slots = [limiter.reserve(1).at for _ in range(500)]
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert all(abs(gap - 60.0 / 95) < 1e-5 for gap in gaps)  # no burst: one every 0.63 s
    assert slots[0] == 0.0 and most_in_window([(t, 1) for t in slots], 60.0) <= 95
    # Arrivals scattered by up to 3 s (network, a busy event loop) still stay under 100.
    rng = random.Random(1)
    arrivals = [(t + rng.uniform(0, 3.0), 1) for t in slots]
    assert most_in_window(arrivals, 60.0) <= 100


def test_token_reservations_settled_lower_speed_the_pace_but_never_break_the_cap():
    clock = Clock()
    limiter = RateLimiter(None, 10_000, window_s=1.0, margin=0.0, clock=clock)
    rng = random.Random(7)
    sent: list[tuple[float, float]] = []
    in_flight = []
    for _ in range(3000):
        reservation = limiter.reserve(3000)
        clock.now = max(clock.now, reservation.at)
        in_flight.append((reservation, rng.randint(300, 3000)))
        if len(in_flight) > 1:  # each answer is back before the next request but one leaves
            done, used = in_flight.pop(0)
            limiter.settle(done, used)
            sent.append((done.at, used))
    assert most_in_window(sent, 1.0) <= 10_000
    span = sent[-1][0] - sent[0][0]
    # More requests per window than 10,000 / 3,000 reservations: the pace follows real usage.
    assert len(sent) / span > 10_000 / 3000 * 1.05


def test_a_request_that_can_never_fit_the_token_cap_is_refused_before_sending():
    with pytest.raises(GeolocsftError, match="tokens_per_minute"):
        RateLimiter(None, 5000).check(5596)


def test_a_server_enforcing_the_cap_over_two_minutes_never_rejects_a_request(tmp_path):
    """60 requests per minute enforced at the server over a sliding 60 s window of arrivals;
    16 requests in flight and 0.5 s per answer would allow 32 per second without the cap."""
    items = make_items(tmp_path / "img", 126)
    state = StandinState(latency_s=0.5, requests_per_minute=60, window_s=60.0)
    with Standin(state) as standin:
        _, summary = run(
            items,
            gemini(standin.url),
            tmp_path,
            concurrency=16,
            requests_per_minute=60,
            max_new_requests=None,
        )
    assert summary["captioned"] == 126 and summary["rate_limited"] == 0
    assert state.rejected_over_cap == 0 and state.requests == 126
    assert state.max_requests_in_window(60.0) <= 60
    duration = state.times[-1] - state.times[0]
    assert duration >= 120.0
    ideal = min(16 / 0.5, 60 / 60)  # min(C / L, RPM / 60) requests per second
    assert (state.requests - 1) / duration >= 0.9 * ideal
