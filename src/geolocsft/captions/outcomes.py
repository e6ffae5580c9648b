"""What happened to each image: the index, the list of failed attempts, and the run's verdict.

Failures come in three classes:

* ``transient``: 429, 5xx, timeouts, connection errors (and, in batch mode, an invalid answer
  that has not used up ``max_attempts``): the image has no caption yet. The job stores every
  success and then fails, and a plain rerun asks again for exactly these images.
* ``rejected``: the server refused the request (4xx other than 429: a bad key, an unknown model,
  an invalid request). Not billed; the job fails the same way, since a rerun after fixing the
  cause should try again.
* ``permanent``: a safety block, invalid answers up to ``max_attempts``, or an answer truncated
  again at the larger output limit. Recorded in the store with every attempt's reason and not
  asked again (unless ``captions.retry_failed``); the job succeeds with a WARNING.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

TRANSIENT = "transient"
REJECTED = "rejected"
PERMANENT = "permanent"
#: Failure classes that leave an image to the next run (and fail the job).
UNRESOLVED = (TRANSIENT, REJECTED)

INDEX_SCHEMA = {
    "image_id": pl.String,
    "status": pl.String,
    "source": pl.String,
    "flagged": pl.Boolean,
    "answer_distance_km": pl.Float64,
    "attempts": pl.Int64,
    "failure_class": pl.String,
    "failure_reason": pl.String,
    "failure_detail": pl.String,
    "attempt_reasons": pl.String,
    "store_key": pl.String,
    "caption_path": pl.String,
    "caption_sha256": pl.String,
}
FAILURES_SCHEMA = {
    "image_id": pl.String,
    "failure_class": pl.String,
    "attempt": pl.Int64,
    "reason": pl.String,
    "detail": pl.String,
    "store_key": pl.String,
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request that did not give a caption: its reason and what the server said."""

    reason: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "detail": self.detail}


@dataclass(slots=True)
class Outcome:
    """One image's result in a run."""

    image_id: str
    status: str  # captioned | failed
    source: str  # store | import | api | offline | none
    key: str | None = None
    attempts: Sequence[Attempt] = ()
    flagged: bool | None = None
    distance_km: float | None = None
    failure_class: str | None = None
    caption_path: str | None = None
    #: sha256 of the caption file's bytes (what a dataset built from it may reuse by)
    caption_sha256: str | None = None

    @property
    def reason(self) -> str | None:
        return self.attempts[-1].reason if self.failure_class and self.attempts else None

    @property
    def detail(self) -> str | None:
        return self.attempts[-1].detail if self.failure_class and self.attempts else None


def index_frame(outcomes: list[Outcome]) -> pl.DataFrame:
    """index.csv: one row per image."""
    return pl.DataFrame(
        {
            "image_id": [o.image_id for o in outcomes],
            "status": [o.status for o in outcomes],
            "source": [o.source for o in outcomes],
            "flagged": [o.flagged for o in outcomes],
            "answer_distance_km": [o.distance_km for o in outcomes],
            "attempts": [len(o.attempts) if o.failure_class else 0 for o in outcomes],
            "failure_class": [o.failure_class for o in outcomes],
            "failure_reason": [o.reason for o in outcomes],
            "failure_detail": [o.detail for o in outcomes],
            "attempt_reasons": [
                ";".join(a.reason for a in o.attempts) if o.attempts else None for o in outcomes
            ],
            "store_key": [o.key for o in outcomes],
            "caption_path": [o.caption_path for o in outcomes],
            "caption_sha256": [o.caption_sha256 for o in outcomes],
        },
        schema=INDEX_SCHEMA,
    )


def failures_frame(outcomes: list[Outcome]) -> pl.DataFrame:
    """Every attempt of every image left without a caption, one row each."""
    rows = [
        {
            "image_id": o.image_id,
            "failure_class": o.failure_class,
            "attempt": number,
            "reason": attempt.reason,
            "detail": attempt.detail,
            "store_key": o.key,
        }
        for o in outcomes
        if o.status != "captioned"
        for number, attempt in enumerate(o.attempts, 1)
    ]
    return pl.DataFrame(rows, schema=FAILURES_SCHEMA)


def counts_by_reason(index: pl.DataFrame, classes: tuple[str, ...]) -> dict[str, int]:
    failed = index.filter(pl.col("failure_class").is_in(list(classes)))
    return dict(collections.Counter(failed["failure_reason"].to_list()).most_common())


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items())


def unresolved_message(summary: dict[str, Any], failures: Path | None) -> str | None:
    """The one-line error of a run that leaves images without a caption for now, or None."""
    unresolved = summary["unresolved"]
    if not unresolved:
        return None
    where = f"every attempt is listed in {failures}" if failures else "see index.csv"
    timeouts = ""
    if "timeout" in summary["unresolved_by_reason"] and summary.get("timeout_s"):
        timeouts = f"; a timeout waited {summary['timeout_s']:g} s (captions.timeout_s)"
    return (
        f"{unresolved} of {summary['images']} images have no caption after failures that may "
        f"pass ({_counts_text(summary['unresolved_by_reason'])}{timeouts}); the "
        f"{summary['captioned']} captions are stored and {summary['permanent_failures']} "
        f"images failed permanently; {where}; rerun to ask again for exactly these "
        f"{unresolved} images"
    )


def permanent_warning(summary: dict[str, Any], failures: Path | None) -> str | None:
    """The WARNING line of a run with permanent failures, or None."""
    count = summary["permanent_failures"]
    if not count:
        return None
    where = f"every attempt is listed in {failures}" if failures else "see index.csv"
    return (
        f"{count} of {summary['images']} images failed permanently "
        f"({_counts_text(summary['permanent_by_reason'])}) and are not asked again (set "
        f"captions.retry_failed: true to resend them); {where}"
    )
