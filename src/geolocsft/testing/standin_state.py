"""The state of the Gemini/OpenAI stand-in: its faults, its caps, and what it was asked.

See :mod:`geolocsft.testing.standin` for the server.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FAULTS = (
    "429",
    "500",
    "503",
    "malformed",
    "truncated",
    "fences",
    "blocked",
    "safety",
    "no_candidates",
    "slow",
    "400",
    "403",
    "404",
)
USAGE_TOKENS = 1700  # total tokens of every answer (1290 prompt + 410 output)


@dataclass
class StandinState:
    """What the stand-in was asked and how it should misbehave (thread-safe counters)."""

    latency_s: float = 0.0
    retry_delay_s: float = 1.0
    #: fault kind -> probability per request (seeded)
    fault_rates: dict[str, float] = field(default_factory=dict)
    #: faults for the first requests, in order, before fault_rates apply
    fault_script: list[str] = field(default_factory=list)
    #: called with (image sha256, request number); returns a fault kind or None
    fault_for: Callable[[str, int], str | None] | None = None
    answer_offset_deg: float = 0.0
    seed: int = 0
    #: the latency of a 'slow' fault
    slow_s: float = 5.0
    #: answers are cut at MAX_TOKENS while the request's output limit is below this
    min_output_tokens: int = 0
    #: server-side caps over a sliding window of arrival times (None: no cap)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    window_s: float = 60.0
    requests: int = 0
    #: requests the server finished working on (a real API bills these)
    processed: int = 0
    #: requests answered with 429 because they were over a cap
    rejected_over_cap: int = 0
    by_image: Counter[str] = field(default_factory=Counter)
    faults_sent: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)
    #: arrival times of the requests that were admitted under the caps
    admitted: list[float] = field(default_factory=list)
    #: the output token limit of every request, in arrival order
    output_limits: list[int | None] = field(default_factory=list)
    api_keys: set[str] = field(default_factory=set)
    #: the body of the latest request, as JSON (to check what the SDK really sent)
    last_request: dict[str, Any] | None = None
    #: Gemini batch jobs: seconds until a job succeeds, and the jobs by id
    batch_delay_s: float = 0.0
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._window: deque[float] = deque()

    def over_cap(self, now: float) -> bool:
        """Admit a request arriving at ``now`` under the caps, or say it is over one (call with
        the lock held). A cap counts the admitted requests in the window (now - window, now]."""
        window = self._window
        while window and window[0] <= now - self.window_s:
            window.popleft()
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        over = (rpm is not None and len(window) >= rpm) or (
            tpm is not None and (len(window) + 1) * USAGE_TOKENS > tpm
        )
        if over:
            self.rejected_over_cap += 1
            return True
        window.append(now)
        self.admitted.append(now)
        return False

    def next_fault(
        self, image_hash: str, output_limit: int | None = None
    ) -> tuple[int, str | None]:
        with self.lock:
            self.requests += 1
            number = self.requests
            self.by_image[image_hash] += 1
            now = time.monotonic()
            self.times.append(now)
            self.output_limits.append(output_limit)
            if self.over_cap(now):
                return number, "over_cap"
            if self.fault_script:
                fault: str | None = self.fault_script.pop(0)
            elif self.fault_for is not None:
                fault = self.fault_for(image_hash, number)
            else:
                fault = None
                draw = self._rng.random()
                for kind, rate in self.fault_rates.items():
                    if draw < rate:
                        fault = kind
                        break
                    draw -= rate
            if fault in ("", "ok"):
                fault = None
            if fault is None and output_limit is not None and output_limit < self.min_output_tokens:
                fault = "truncated"
            if fault:
                self.faults_sent[fault] += 1
            return number, fault

    def work(self, fault: str | None) -> None:
        """The model's time on a request (a 'slow' fault takes slow_s); then it is billed."""
        time.sleep(self.slow_s if fault == "slow" else self.latency_s)
        with self.lock:
            self.processed += 1

    def max_requests_in_window(self, window_s: float = 60.0, admitted_only: bool = False) -> int:
        times = sorted(self.admitted if admitted_only else self.times)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best
