"""Benchmark of the geo-caption stage: API throughput, and the cost of a no-op workflow rerun.

    .venv/bin/python benchmarks/geocaption.py [--quick] [--images N] [--concurrency C]
        [--latency S] [--repeats K] [--corpus M] [--noop-repeats R] [--workdir DIR]
        [--pacing] [--limiter] [--rebuild] [--only-new]

1. **Throughput.** ``N`` (500) distinct 320x240 JPEGs (fixed seed) are captioned with the real
   ``google-genai`` SDK against the loopback stand-in (``geolocsft.testing.standin``, ``S`` = 1.0
   s per request), ``concurrency`` ``C`` (32), an empty response store each repeat. The ideal wall
   time is ``N / C * S`` (15.6 s); the goal is at least 80% of the ideal rate. Also timed: the
   whole stage as the workflow runs it (``captions.stage.run_stage``: manifest in, captions,
   index and summary out), a rerun answered from the store (0 API calls), and diagnostics that
   separate our client from the stand-in (latency 0; the stand-in in its own process).
2. **No-op rerun.** A copy of the workflow in a temporary folder, a corpus of ``M`` (2,700)
   48x48 JPEGs with Im2GPS3k-like ids (``1000269685_e60e9cdfb4_1125_78841376@N00.jpg``) and a
   metadata table, the offline ``metadata`` caption backend (``--noop-backend gemini``: the
   stand-in at latency 0). After one complete run of the caption index's part of the DAG
   (``--noop-target all``: the whole DAG), ``R`` (5) times each: ``snakemake --cores 2
   <target>`` with nothing to do, ``snakemake --cores 2 -n <target>`` (Snakemake's own floor
   for this workflow: parse + DAG) and a one-rule Snakefile (the floor of any Snakemake call).

3. **Pacing at a capped server** (``--pacing``). ``--pacing-images`` (500) images, concurrency
   ``C``, latency ``S``, and a stand-in that enforces ``--pacing-rpm`` (250) requests per minute
   over a sliding 60 s window of arrivals (a request over the cap gets 429 with RetryInfo and is
   counted). Once with this version's limiter, once with a copy of the earlier one (a log of the
   last minute, each request stamped when it is granted). Goal: 0 over-cap 429s and at least
   90% of min(C / S, RPM / 60).
4. **Limiter cost** (``--limiter``): microseconds per request of the limiter with 1,000 to
   100,000 requests in the window, this version vs the earlier one (which summed the window on
   every request, with or without a cap).
5. **Caption files rebuilt at scale** (``--rebuild``): ``--rebuild-images`` (100,000) manifest
   rows whose answers are in the response store (a Gemini captioner; the answers are written
   straight into the store, no image files are needed), and the same rows with the offline
   ``metadata`` backend. The stage (``captions.stage.run_stage``: manifest in, caption files,
   index and summary out) runs in a fresh process per measurement, with the per-item memo empty
   (every file built from the store) and full (every file linked from the memo); wall time,
   files per second and the process's peak RSS. Goal: >= 5,000 files per second from the memo.

Prints one table per part (medians) and whether each goal is met.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from geolocsft.captions.backends import GenerationParams  # noqa: E402
from geolocsft.captions.documents import CaptionItem  # noqa: E402
from geolocsft.captions.gemini import GeminiBackend  # noqa: E402
from geolocsft.captions.prompts import PromptTemplate  # noqa: E402
from geolocsft.captions.ratelimit import RateLimiter  # noqa: E402
from geolocsft.captions.requests import RunnerSettings  # noqa: E402
from geolocsft.captions.runner import CaptionRun, caption_images  # noqa: E402
from geolocsft.captions.stage import captioner_name, run_stage  # noqa: E402
from geolocsft.captions.store import ResponseStore  # noqa: E402
from geolocsft.settings import configured  # noqa: E402
from geolocsft.testing.standin import Standin, StandinState  # noqa: E402

PROMPT = REPO / "config" / "prompts" / "geocaption-v1.txt"
SCHEMA = REPO / "config" / "schema" / "config.schema.yaml"
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "src", "config", "envs", "report", "profiles")
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
MODEL = "gemini-2.5-flash"
DUMMY_KEY = "benchmark-dummy-key"
THROUGHPUT_GOAL = 0.80  # of the ideal rate
NOOP_GOAL_S = 3.0  # no-op rerun at most this much slower than the dry run


# -- inputs ---------------------------------------------------------------------------------


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour fields plus grain: compresses like a small photo, unlike pure noise."""
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    big = np.asarray(
        Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    )
    grain = rng.integers(-12, 13, big.shape)
    return np.clip(big.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def make_caption_items(folder: Path, count: int, seed: int = 0) -> list[CaptionItem]:
    """``count`` distinct 320x240 JPEGs and their caption items (true point, place name)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(photo_like(rng, 320, 240), "RGB").save(path, quality=90)
        items.append(
            CaptionItem(
                image_id=f"img{i:05d}",
                path=path,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                lat=float(np.degrees(np.arcsin(rng.uniform(-1, 1)))),
                lon=float(rng.uniform(-180, 180)),
                place="Benchmarkville, Nowhere, ZZ",
            )
        )
    return items


def im2gps_like_id(rng: np.random.Generator) -> str:
    """An id shaped like Im2GPS3k's: ``<photo>_<secret>_<server>_<owner>@N00``."""
    photo = int(rng.integers(10**9, 10**10))
    secret = "".join(rng.choice(list("0123456789abcdef"), 10))
    server = int(rng.integers(1000, 10000))
    owner = int(rng.integers(10**7, 10**8))
    return f"{photo}_{secret}_{server}_{owner}@N{int(rng.integers(0, 10)):02d}"


def make_corpus(folder: Path, table: Path, count: int, seed: int = 1) -> None:
    """``count`` 48x48 JPEGs with Im2GPS3k-like names and a table ``IMG_ID,LAT,LON``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[str] = []
    seen: set[str] = set()
    while len(rows) < count:
        name = f"{im2gps_like_id(rng)}.jpg"
        if name in seen:
            continue
        seen.add(name)
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / name, quality=75)
        lat = float(np.degrees(np.arcsin(rng.uniform(-0.95, 0.95))))
        rows.append(f"{name},{lat:.6f},{rng.uniform(-180, 180):.6f}\n")
    table.write_text("IMG_ID,LAT,LON\n" + "".join(rows))


# -- part 1: throughput ---------------------------------------------------------------------


@dataclass
class Timing:
    wall_s: float
    api_requests: int
    #: mean requests inside the stand-in (n * latency / span of arrivals); in-process only
    in_flight: float | None = None
    #: seconds the event loop spent running callbacks (with --loop-stats)
    loop_busy_s: float | None = None


class LoopClock:
    """Sums the run time of every asyncio callback: how busy the one event loop is."""

    def __init__(self) -> None:
        self.busy_s = 0.0
        self._original: Callable[[asyncio.Handle], None] = asyncio.Handle._run

    def __enter__(self) -> LoopClock:
        original = self._original = asyncio.Handle._run
        clock = self

        def timed(handle: asyncio.Handle) -> None:
            started = time.perf_counter()
            try:
                original(handle)
            finally:
                clock.busy_s += time.perf_counter() - started

        asyncio.Handle._run = timed  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.Handle._run = self._original  # type: ignore[method-assign,assignment]


def in_flight(state: StandinState | None, count: int) -> float | None:
    if state is None or state.latency_s <= 0 or len(state.times) < 2:
        return None
    span = max(state.times) - min(state.times) + state.latency_s
    return count * state.latency_s / span


def gemini_backend(url: str) -> GeminiBackend:
    return GeminiBackend(MODEL, configured(GenerationParams), base_url=url)


def time_runner(
    items: list[CaptionItem],
    url: str,
    state: StandinState | None,
    store: Path,
    out_dir: Path,
    concurrency: int,
    loop_stats: bool = False,
) -> Timing:
    """One ``caption_images`` pass; the SDK client is made before the clock starts."""
    backend = gemini_backend(url)
    settings = configured(RunnerSettings, concurrency=concurrency, max_new_requests=None)
    prompt = PromptTemplate.load(PROMPT)
    before = state.requests if state is not None else 0
    if state is not None:
        state.times.clear()
    with LoopClock() if loop_stats else contextlib.nullcontext() as loop:
        started = time.perf_counter()
        _, summary = caption_images(
            items, backend, ResponseStore(store), prompt, settings, out_dir, progress=False
        )
        wall = time.perf_counter() - started
    if summary["captioned"] != len(items):
        raise RuntimeError(f"not every image was captioned: {summary}")
    requests = (state.requests - before) if state is not None else summary["requests_sent"]
    return Timing(
        wall, requests, in_flight(state, requests), loop.busy_s if loop is not None else None
    )


def stage_config(url: str, store: Path, concurrency: int) -> dict[str, Any]:
    """The ``captions`` block as the workflow passes it (schema defaults filled in)."""
    from snakemake.utils import validate

    config: dict[str, Any] = {
        "captions": {
            "backend": "gemini",
            "model": MODEL,
            "store": str(store),
            "concurrency": concurrency,
            "max_new_requests": None,
            "gemini": {"base_url": url},
        }
    }
    validate(config, str(SCHEMA))
    return config["captions"]


def write_manifest(items: list[CaptionItem], path: Path) -> Path:
    """A manifest as ingest writes it, with only the columns the caption stage reads."""
    count = len(items)
    pl.DataFrame(
        {
            "image_id": [i.image_id for i in items],
            "path": [str(i.path) for i in items],
            "sha256": [i.sha256 for i in items],
            "lat": [i.lat for i in items],
            "lon": [i.lon for i in items],
            "split": ["train"] * count,
            "nearest_place": ["Benchmarkville"] * count,
            "admin1": ["Nowhere"] * count,
            "country_code": ["ZZ"] * count,
        }
    ).write_parquet(path)
    return path


def time_stage(
    manifest: Path, url: str, state: StandinState, store: Path, out: Path, concurrency: int
) -> Timing:
    """The whole stage as ``scripts/geocaption.py`` runs it (backend built inside the clock)."""
    config = stage_config(url, store, concurrency)  # the workflow validates at parse time
    before = state.requests
    state.times.clear()
    started = time.perf_counter()
    summary = run_stage(
        manifest_path=manifest,
        prompt_path=PROMPT,
        config=config,
        captions_dir=out / "captions",
        index_path=out / "index.csv",
        summary_path=out / "summary.json",
        progress=False,
    )
    wall = time.perf_counter() - started
    if summary["captioned"] != summary["images"]:
        raise RuntimeError(f"not every image was captioned: {summary}")
    requests = state.requests - before
    return Timing(wall, requests, in_flight(state, requests))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def standin_process(latency_s: float) -> Iterator[str]:
    """``python -m geolocsft.testing.standin`` in its own process (so it does not share our GIL)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "geolocsft.testing.standin", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--latency", str(latency_s)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the stand-in process did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def med(values: list[float]) -> float:
    return statistics.median(values)


def throughput(args: argparse.Namespace, work: Path) -> list[str]:
    n, c, latency, repeats = args.images, args.concurrency, args.latency, args.repeats
    started = time.perf_counter()
    items = make_caption_items(work / "images", n)
    size = sum(i.path.stat().st_size for i in items) / n / 1000
    print(f"{n} images 320x240 ({size:.0f} kB each) made in {time.perf_counter() - started:.1f} s")
    gemini_backend("http://127.0.0.1:9")  # import the SDK before any clock starts
    manifest = write_manifest(items, work / "manifest.parquet")
    ideal_s = n / c * latency
    rows: dict[str, list[Timing]] = {}

    def fresh(kind: str, index: int) -> tuple[Path, Path]:
        """An empty store and output folder for one repeat."""
        base = work / re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") / str(index)
        shutil.rmtree(base, ignore_errors=True)
        return base / "store", base / "out"

    def runner_rows(name: str, url: str, state: StandinState | None) -> None:
        rows[name] = [
            time_runner(items, url, state, *fresh(name, i), c, args.loop_stats)
            for i in range(repeats)
        ]

    with Standin(StandinState(latency_s=latency)) as standin:
        url, state = standin.url, standin.state
        headline = "caption_images, empty store"
        runner_rows(headline, url, state)
        store = work / "caption-images-empty-store" / "0" / "store"  # the first repeat's
        rows["caption_images, rerun from the store"] = [
            time_runner(items, url, state, store, work / "rerun" / str(i), c, args.loop_stats)
            for i in range(repeats)
        ]
        if not args.no_stage:
            rows["run_stage (whole stage), empty store"] = [
                time_stage(manifest, url, state, *fresh("stage", i), c) for i in range(repeats)
            ]
            rows["run_stage, rerun from the store"] = [
                time_stage(manifest, url, state, work / "stage" / "0" / "store", out, c)
                for out in (work / "stage-rerun" / str(i) for i in range(repeats))
            ]
    if not args.no_diagnostics:
        with Standin(StandinState(latency_s=0.0)) as standin:
            runner_rows("latency 0: client + stand-in overhead only", standin.url, standin.state)
        with standin_process(latency) as url:
            runner_rows(f"latency {latency:g} s, stand-in in its own process", url, None)
        with standin_process(0.0) as url:
            runner_rows("latency 0, stand-in in its own process", url, None)

    loop = " | event loop busy (s)" if args.loop_stats else ""
    lines = [
        f"### Throughput: {n} images, concurrency {c}, stand-in latency {latency:g} s, "
        f"{repeats} repeats (ideal {n} / {c} x {latency:g} s = {ideal_s:.1f} s, "
        f"{c / latency if latency > 0 else float('inf'):.1f} img/s)",
        "",
        f"| run | median wall (s) | min-max (s) | images/s | % of ideal | API requests "
        f"| mean in flight at stand-in{loop} |",
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if loop else ""),
    ]
    for name, timings in rows.items():
        if not timings:
            continue
        walls = [t.wall_s for t in timings]
        wall = med(walls)
        requests = med([float(t.api_requests) for t in timings])
        paced = requests > 0 and latency > 0 and not name.startswith("latency 0")
        share = f"{100 * ideal_s / wall:.0f}%" if paced else "-"
        flight = [t.in_flight for t in timings if t.in_flight is not None]
        cells = [
            name,
            f"{wall:.2f}",
            f"{min(walls):.2f}-{max(walls):.2f}",
            f"{n / wall:.1f}",
            share,
            f"{requests:.0f}",
            f"{med(flight):.1f}" if flight else "-",
        ]
        if loop:
            busy = [t.loop_busy_s for t in timings if t.loop_busy_s is not None]
            cells.append(f"{med(busy):.2f}" if busy else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if args.quick:
        lines += ["", "(--quick: too few images for the throughput goal to mean anything)"]
    elif repeats and latency > 0:
        wall = med([t.wall_s for t in rows[headline]])
        share = ideal_s / wall
        verdict = "meets" if share >= THROUGHPUT_GOAL else "MISSES"
        lines += [
            "",
            f"caption_images: {n / wall:.1f} img/s = {100 * share:.0f}% of ideal: {verdict} the "
            f"{100 * THROUGHPUT_GOAL:.0f}% goal (wall <= {ideal_s / THROUGHPUT_GOAL:.1f} s)",
        ]
    return lines


# -- part 2: no-op rerun --------------------------------------------------------------------


def copy_workflow(dest: Path) -> Path:
    """A self-contained copy of the workflow, as tests/test_workflow.py makes it."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, dest / part)
    return dest


def snakemake(workdir: Path, *args: str, env: dict[str, str]) -> tuple[float, str]:
    """Run Snakemake; return its wall time and output (fails loudly on a non-zero exit)."""
    started = time.perf_counter()
    result = subprocess.run(
        [str(SNAKEMAKE), "--cores", "2", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        stdin=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {args} failed:\n{result.stdout}\n{result.stderr}")
    return wall, result.stdout + result.stderr


def noop(args: argparse.Namespace, work: Path) -> list[str]:
    shutil.rmtree(work, ignore_errors=True)
    workdir = copy_workflow(work / "wf")
    started = time.perf_counter()
    make_corpus(workdir / "photos", workdir / "labels.csv", args.corpus)
    print(f"{args.corpus} corpus images made in {time.perf_counter() - started:.1f} s")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["corpus"] = {"name": "noop-bench", "images": "photos", "metadata": "labels.csv"}
    config["captions"] = {**config["captions"], "max_new_requests": None}
    caption_dir = f"results/geocaptions/{captioner_name(config['captions'])}/geocaption-v1"
    with contextlib.ExitStack() as stack:
        if args.noop_backend == "gemini":  # the stand-in is only asked during the first run
            standin = stack.enter_context(Standin(StandinState(latency_s=0.0)))
            env["GEMINI_API_KEY"] = DUMMY_KEY
            config["captions"] |= {"backend": "gemini", "concurrency": 32}
            config["captions"]["gemini"] = {"base_url": standin.url}
            caption_dir = f"results/geocaptions/{captioner_name(config['captions'])}/geocaption-v1"
        (workdir / "config" / "bench.yaml").write_text(yaml.safe_dump(config))
        base = ("--configfile", "config/bench.yaml")
        targets = {"caption index": [f"{caption_dir}/index.csv"], "whole DAG (all)": []}
        if args.noop_target == "captions":
            del targets["whole DAG (all)"]
        first, _ = snakemake(workdir, *targets[next(reversed(targets))], *base, env=env)
    print(f"first complete run ({next(reversed(targets))}): {first:.1f} s")
    index = pl.read_csv(workdir / caption_dir / "index.csv")
    captioned = int((index["status"] == "captioned").sum())

    floor_dir = work / "floor"
    floor_dir.mkdir(parents=True, exist_ok=True)
    (floor_dir / "done.txt").write_text("done\n")
    (floor_dir / "Snakefile").write_text('rule all:\n    input:\n        "done.txt",\n')

    results: dict[str, list[float]] = {}
    for _ in range(args.noop_repeats):  # interleaved, so drift hits every row alike
        for label, target in targets.items():
            wall, output = snakemake(workdir, *target, *base, env=env)
            if "Nothing to be done" not in output:
                raise RuntimeError(f"the rerun of {label} was not a no-op:\n{output}")
            results.setdefault(f"no-op rerun: {label}", []).append(wall)
            wall, _ = snakemake(workdir, *target, *base, "-n", env=env)
            results.setdefault(f"dry run (-n): {label}", []).append(wall)
        wall, _ = snakemake(floor_dir, env=env)
        results.setdefault("one-rule Snakefile, nothing to do", []).append(wall)

    lines = [
        f"### No-op rerun: {args.corpus} images ({captioned} captioned, backend "
        f"{args.noop_backend}); first complete run {first:.1f} s; {args.noop_repeats} repeats",
        "",
        "| command | median (s) | min (s) |",
        "|---|---:|---:|",
    ]
    for name, timings in results.items():
        lines.append(f"| {name} | {med(timings):.2f} | {min(timings):.2f} |")
    lines.append("")
    for label in targets:
        gap = med(results[f"no-op rerun: {label}"]) - med(results[f"dry run (-n): {label}"])
        verdict = "meets" if gap <= NOOP_GOAL_S else "MISSES"
        lines.append(
            f"{label}: no-op rerun is {gap:+.2f} s from the dry-run floor: {verdict} the "
            f"'within {NOOP_GOAL_S:g} s' goal"
        )
    return lines


# -- part 3: pacing at a server that enforces the cap ----------------------------------------


class EarlierLimiter:
    """A copy of the limiter this version replaced, for comparison only: a log of the last
    window's requests, summed on every request; a request is stamped when it is granted, so a
    window's whole budget goes out at once, followed by a wait."""

    def __init__(self, requests: int | None, tokens: int | None, window_s: float = 60.0) -> None:
        self.requests, self.tokens, self.window_s = requests, tokens, window_s
        self.events: collections.deque[list[float]] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> list[float]:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self.events and self.events[0][0] <= now - self.window_s:
                    self.events.popleft()
                used_tokens = sum(e[1] for e in self.events)
                requests_ok = self.requests is None or len(self.events) < self.requests
                tokens_ok = (
                    self.tokens is None or used_tokens + tokens <= self.tokens or not self.events
                )
                if requests_ok and tokens_ok:
                    event = [now, float(tokens)]
                    self.events.append(event)
                    return event
                await asyncio.sleep(max(self.events[0][0] + self.window_s - now, 0.001))

    def settle(self, event: list[float], tokens: int | None) -> None:
        if tokens is not None:
            event[1] = float(tokens)

    def check(self, tokens: int) -> None:
        return None


def pacing(args: argparse.Namespace, work: Path) -> list[str]:
    n, c, latency, rpm = args.pacing_images, args.concurrency, args.latency, args.pacing_rpm
    shutil.rmtree(work, ignore_errors=True)
    items = make_caption_items(work / "images", n, seed=3)
    ideal = min(c / latency, rpm / 60)
    lines = [
        f"### Pacing: {n} images, concurrency {c}, latency {latency:g} s, the server enforces "
        f"{rpm} requests per sliding 60 s window (ideal rate min({c} / {latency:g}, {rpm} / 60) "
        f"= {ideal:.2f} img/s)",
        "",
        "| limiter | wall (s) | images/s | % of ideal | requests sent | 429 over the cap "
        "| most arrivals in 60 s | most admitted in 60 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, earlier in (
        ("smooth, on send time, 5% margin (this version)", False),
        ("log of the last minute, stamped when granted (earlier)", True),
    ):
        state = StandinState(latency_s=latency, requests_per_minute=rpm)
        with Standin(state) as standin:
            settings = configured(
                RunnerSettings, concurrency=c, requests_per_minute=rpm, max_new_requests=None
            )
            run = CaptionRun(
                gemini_backend(standin.url),
                ResponseStore(work / name[:6] / "store"),
                PromptTemplate.load(PROMPT),
                settings,
                work / name[:6] / "captions",
            )
            if earlier:
                run.limiter = run.requester.limiter = EarlierLimiter(rpm, None)  # type: ignore[assignment]
            started = time.perf_counter()
            index = asyncio.run(run.run(items, progress=False))
            wall = time.perf_counter() - started
            summary = run.summary(index, wall)
        rate = summary["captioned"] / wall
        lines.append(
            f"| {name} | {wall:.1f} | {rate:.2f} | {100 * rate / ideal:.0f}% "
            f"| {summary['requests_sent']} | {state.rejected_over_cap} "
            f"| {state.max_requests_in_window(60.0)} "
            f"| {state.max_requests_in_window(60.0, admitted_only=True)} |"
        )
        print(lines[-1], flush=True)
    return lines


# -- part 4: what the limiter costs per request ----------------------------------------------


def limiter_cost() -> list[str]:
    lines = [
        "### Limiter cost per request (microseconds; the window holds P requests)",
        "",
        "| P requests in the window | this version, RPM cap | this version, no cap "
        "| earlier, RPM cap | earlier, no cap |",
        "|---:|---:|---:|---:|---:|",
    ]

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    for population in (1_000, 10_000, 100_000):
        cells = []
        for cap in (population * 10, None):
            clock = Clock()
            limiter = RateLimiter(cap, None, 60.0, 0.05, clock)
            step = 60.0 / population
            for _ in range(population):  # fill the window
                clock.now += step
                limiter.reserve(100)
            calls = 100_000
            started = time.perf_counter()
            for _ in range(calls):
                clock.now += step
                limiter.reserve(100)
            cells.append(1e6 * (time.perf_counter() - started) / calls)
        for cap in (population * 10, None):
            earlier = EarlierLimiter(cap, None)
            now = time.monotonic()
            earlier.events.extend([now + i * 1e-9, 100.0] for i in range(population))
            calls = max(200, 2_000_000 // population)

            async def many(limiter: EarlierLimiter = earlier, count: int = calls) -> float:
                started = time.perf_counter()
                for _ in range(count):
                    await limiter.acquire(100)
                    limiter.events.popleft()  # keep P events in the window
                return time.perf_counter() - started

            cells.append(1e6 * asyncio.run(many()) / calls)
        lines.append(f"| {population:,} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return lines


# -- part 5: caption files rebuilt at scale ---------------------------------------------------


def scale_manifest(path: Path, count: int, seed: int = 5) -> pl.DataFrame:
    """``count`` manifest rows of images that need not exist (no image is read here)."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:07d}" for i in range(count)]
    frame = pl.DataFrame(
        {
            "image_id": ids,
            "path": [f"/nonexistent/{i}.jpg" for i in ids],
            "sha256": [hashlib.sha256(i.encode()).hexdigest() for i in ids],
            "lat": np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, count))).round(6),
            "lon": rng.uniform(-180, 180, count).round(6),
            "split": ["train"] * count,
            "nearest_place": ["Benchmarkville"] * count,
            "admin1": ["Nowhere"] * count,
            "country_code": ["ZZ"] * count,
        }
    )
    frame.write_parquet(path)
    return frame


def fill_store(manifest: pl.DataFrame, config: dict[str, Any], store: Path) -> None:
    """Write one valid answer per row straight into the store (what a paid run leaves)."""
    from geolocsft.captions.stage import backend_identity
    from geolocsft.captions.store import response_key
    from geolocsft.io import atomic_write_bytes, json_bytes
    from geolocsft.testing.standin import caption_for

    backend, model, params = backend_identity(config)
    prompt = PromptTemplate.load(PROMPT)
    for image_id, sha256, lat, lon in manifest.select(
        "image_id", "sha256", "lat", "lon"
    ).iter_rows():
        key = response_key(
            image_sha256=sha256,
            prompt_sha256=prompt.sha256,
            backend=backend,
            model=model,
            params=params,
            schema_version="geocaption-2",
        )
        record = {
            "key": key,
            "identity": {
                "image_sha256": sha256,
                "prompt_sha256": prompt.sha256,
                "backend": backend,
                "model": model,
                "params": params,
                "schema_version": "geocaption-2",
            },
            "origin": "api",
            "first_image_id": image_id,
            "prompt_version": prompt.version,
            "response": {
                "text": json.dumps(caption_for(lat, lon)),
                "finish_reason": "STOP",
                "block_reason": None,
                "usage": {"prompt_tokens": 1290, "output_tokens": 410, "total_tokens": 1700},
                "model_version": "standin",
                "response_id": None,
                "latency_s": 1.0,
                "max_output_tokens": 4096,
            },
            "raw": {},
            "sdk": "benchmark",
            "received_at": "2026-01-01T00:00:00Z",
        }
        path = store / "responses" / key[:2] / f"{key}.json"
        atomic_write_bytes(path, json_bytes(record), fsync=False)


def stage_in_child(
    manifest: Path, config: dict[str, Any], out: Path, memo: Path
) -> tuple[float, float]:
    """``run_stage`` in a fresh process: its wall time and peak RSS (MB)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_stage_child, (manifest, config, out, memo))


def _stage_child(
    manifest: Path, config: dict[str, Any], out: Path, memo: Path
) -> tuple[float, float]:
    import resource

    os.environ["GEMINI_API_KEY"] = DUMMY_KEY
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = run_stage(
        manifest,
        PROMPT,
        config,
        out / "captions",
        out / "index.csv",
        out / "summary.json",
        progress=False,
        memo_dir=memo,
    )
    wall = time.perf_counter() - started
    if summary["captioned"] != summary["images"] or summary["requests_sent"]:
        raise RuntimeError(f"not a rebuild without requests: {summary}")
    return wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rebuild(args: argparse.Namespace, work: Path) -> list[str]:
    n = args.rebuild_images
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    manifest_path = work / "manifest.parquet"
    manifest = scale_manifest(manifest_path, n)
    config_gemini = stage_config("http://127.0.0.1:9", work / "store", 32)
    config_metadata = {**config_gemini, "backend": "metadata"}
    backends = args.rebuild_backends.split(",")
    if "gemini" in backends:
        fill_store(manifest, config_gemini, work / "store")
    print(
        f"{n:,} manifest rows and stored answers made in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    lines = [
        f"### Caption files rebuilt: {n:,} images, run_stage in a fresh process each",
        "",
        "| backend | per-item memo | wall (s) | files/s | peak RSS (MB) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, config in (
        ("gemini (answers in the store)", config_gemini),
        ("metadata (offline)", config_metadata),
    ):
        if config["backend"] not in backends:
            continue
        memo = work / f"memo-{config['backend']}"
        for state in ("empty", "full", "full"):
            wall, rss = stage_in_child(manifest_path, config, work / "out", memo)
            lines.append(f"| {name} | {state} | {wall:.1f} | {n / wall:,.0f} | {rss:,.0f} |")
            print(lines[-1], flush=True)
    return lines


# -- main -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    versions = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("google-genai", "snakemake", "pillow", "polars")
    )
    return f"{os.cpu_count()} CPUs ({cpu}){memory}; Python {platform.python_version()}, {versions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images captioned (500)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument("--latency", type=float, default=1.0, help="stand-in seconds/request")
    parser.add_argument("--repeats", type=int, default=3, help="throughput repeats (3)")
    parser.add_argument("--corpus", type=int, default=2700, help="no-op corpus images (2700)")
    parser.add_argument("--noop-repeats", type=int, default=5, help="no-op repeats (5)")
    parser.add_argument(
        "--noop-target",
        choices=("captions", "all"),
        default="captions",
        help="'captions' (default): run and time the caption index and what it needs (ingest, "
        "geocaption); 'all': run the whole DAG once, then time the caption index and the whole DAG",
    )
    parser.add_argument("--noop-backend", choices=("metadata", "gemini"), default="metadata")
    parser.add_argument("--no-stage", action="store_true", help="skip the run_stage rows")
    parser.add_argument(
        "--no-diagnostics", action="store_true", help="skip the latency-0 and separate-process rows"
    )
    parser.add_argument(
        "--loop-stats", action="store_true", help="also report how busy the event loop was"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-noop", action="store_true")
    parser.add_argument("--pacing", action="store_true", help="part 3: pacing at a capped server")
    parser.add_argument("--pacing-images", type=int, default=500)
    parser.add_argument("--pacing-rpm", type=int, default=250)
    parser.add_argument("--limiter", action="store_true", help="part 4: limiter cost")
    parser.add_argument("--rebuild", action="store_true", help="part 5: caption files at scale")
    parser.add_argument("--rebuild-images", type=int, default=100_000)
    parser.add_argument(
        "--rebuild-backends", default="gemini,metadata", help="comma-separated (gemini,metadata)"
    )
    parser.add_argument(
        "--only-new", action="store_true", help="skip parts 1 and 2 (throughput, no-op rerun)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the files here (default: a temp dir); its throughput/ and noop/ are replaced",
    )
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats, args.corpus, args.noop_repeats = 64, 1, 120, 1
        args.pacing_images, args.rebuild_images = 40, 2000
    if args.only_new:
        args.skip_throughput = args.skip_noop = True
    logging.basicConfig(level=logging.WARNING)
    os.environ["GEMINI_API_KEY"] = DUMMY_KEY  # the stand-in accepts any key
    os.environ.pop("GOOGLE_API_KEY", None)

    load = os.getloadavg()[0]
    print(f"{machine()}; 1-minute load average {load:.2f}")
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="geocaption-bench-") as temp:
        work = args.workdir or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_throughput:
            tables += [*throughput(args, work / "throughput"), ""]
            print("\n".join(tables), flush=True)
        if not args.skip_noop:
            noop_lines = noop(args, work / "noop")
            print("\n".join(noop_lines), flush=True)
            tables += noop_lines
        if args.limiter:
            tables += [*limiter_cost(), ""]
            print("\n".join(tables[-6:]), flush=True)
        if args.rebuild:
            tables += [*rebuild(args, work / "rebuild"), ""]
        if args.pacing:
            tables += [*pacing(args, work / "pacing"), ""]
    print("\n# summary\n")
    print("\n".join(tables))
    print(
        f"\n{machine()}\n1-minute load average at the start {load:.2f}, at the end "
        f"{os.getloadavg()[0]:.2f} (other processes on the machine skew the timings)"
    )


if __name__ == "__main__":
    main()
