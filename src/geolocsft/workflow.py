"""Glue between Snakemake and the package: code versions, logging, user-facing errors.

Only this module knows about the ``snakemake`` object's shape; everything else takes plain
paths and settings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geolocsft.errors import GeolocsftError

PACKAGE = "geolocsft"


def _module_source(name: str, src_dir: Path | None) -> Path:
    if src_dir is not None:
        base = src_dir / PACKAGE / Path(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        raise GeolocsftError(f"{PACKAGE}.{name} is not a module of the package in {src_dir}")
    spec = importlib.util.find_spec(f"{PACKAGE}.{name}")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{PACKAGE}.{name} is not a module of the package")
    return Path(spec.origin)


def code_version_from_files(modules: Sequence[str], src_dir: Path | None = None) -> str:
    """``"<module>,<module>:<hash>"``: the modules and a short hash of their source.

    ``src_dir`` is a checkout's ``src/`` folder; ``None`` uses the importable package.
    """
    names = sorted(set(modules))
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + _module_source(name, src_dir).read_bytes() + b"\0")
    return f"{','.join(names)}:{digest.hexdigest()[:16]}"


def code_version(*modules: str) -> str:
    """The version of the named ``geolocsft`` modules' code, as ``"modules:hash"``.

    Snakemake does not track code that a script imports; rules pass this as a ``param`` so that
    a change to the package code they use makes them rerun (params are a default rerun trigger).
    The module names in it let ``geolocsft audit`` recompute it later.
    """
    return code_version_from_files(modules)


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
    from geolocsft.audit import job_record
    from geolocsft.captions.store import atomic_write_json

    record_path = Path(smk.output.provenance)
    outputs = [str(p) for p in smk.output if str(p) != str(record_path)]
    params = {name: value for name, value in smk.params.items()}
    record = job_record(smk.rule, dict(smk.wildcards.items()), list(smk.input), outputs, params)
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
