"""Glue between Snakemake and the package: code versions, logging, user-facing errors.

Only this module knows about the ``snakemake`` object's shape; everything else takes plain
paths and settings.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geolocsft.audit import FileHashes, job_record
from geolocsft.codegraph import PACKAGE, script_code_version
from geolocsft.errors import GeolocsftError
from geolocsft.io import atomic_write_json


def script_code(script: Path, src_dir: Path) -> str:
    """The code version of every package module a rule's script runs (a rule's ``code`` param).

    Snakemake does not track code that a script imports; rules pass this as a ``param`` so that
    a change to any package module their script uses, directly or not, makes them rerun
    (params are a default rerun trigger). The module names in it let ``geolocsft audit``
    recompute it later. See :mod:`geolocsft.codegraph`.
    """
    return script_code_version(script, src_dir)


def use_checkout_package(src_dir: Path) -> None:
    """Put ``src_dir`` first on ``PYTHONPATH``, so every job imports this checkout's package.

    Jobs inherit the environment (locally, in conda environments and on SLURM nodes), so the
    code that a rule's ``code`` param hashes is the code its job runs.
    """
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(src_dir), *current])


def configure_logging(log_path: str | Path | None, level: int = logging.INFO) -> None:
    """Log to the rule's ``log:`` file (and to stderr, so failures show in Snakemake's output)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    # The HTTP clients log one INFO line per request: too much for a log of thousands.
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "google_genai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def write_provenance(smk: Any) -> None:
    """The job's provenance record, at its declared output ``provenance`` (see geolocsft.audit)."""
    record_path = Path(smk.output.provenance)
    outputs = [str(p) for p in smk.output if str(p) != str(record_path)]
    params = {name: value for name, value in smk.params.items()}
    hashes = FileHashes.in_memo(Path(smk.config["memo"]["dir"]))
    record = job_record(
        smk.rule,
        dict(smk.wildcards.items()),
        list(smk.input),
        outputs,
        params,
        hashes,
        threads=getattr(smk, "threads", None),
    )
    hashes.save()
    atomic_write_json(record_path, record)


def run_script(smk: Any, main: Callable[[Any], None]) -> None:
    """Run a rule's ``main(snakemake)`` with logging set up and clean user-facing errors.

    A :class:`GeolocsftError` (bad input, bad config) is logged as one clear message, without a
    traceback, and the job fails with exit status 1. Any other exception is a bug: it is logged
    with its traceback and re-raised.
    """
    configure_logging(smk.log[0] if len(smk.log) else None)
    logger = logging.getLogger(f"{PACKAGE}.rule.{smk.rule}")
    try:
        main(smk)
        if getattr(smk.output, "provenance", None):
            write_provenance(smk)
    except GeolocsftError as exc:
        logger.error("%s", exc)
        raise SystemExit(1) from None
    except Exception:
        logger.exception(
            "rule %s failed with an unexpected error (a bug: please report it)", smk.rule
        )
        raise


def cancel_pending_timers() -> int:
    """Cancel the :class:`threading.Timer` threads still waiting in this process; how many.

    Snakemake's job-rate limiter (``--max-jobs-per-timespan``, default ``100/1s``) arms a
    one-second timer on every scheduler pass to wake the scheduler again, and Python waits for
    the last one before the process exits: about a second after the last job of every run,
    which a rerun that adds a few images feels. Called from the Snakefile's ``onsuccess`` and
    ``onerror`` handlers, when no job is left for a timer to wake. (The limit cannot be given a
    shorter timespan: Snakemake 9.27 reads ``100/100ms`` as 100 minutes.)"""
    pending = [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]
    for timer in pending:
        timer.cancel()
    return len(pending)
