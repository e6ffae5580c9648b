"""Per-item CPU work in worker processes: the image stages' one way to use every core.

Threads do not scale this work: Pillow's JPEG encoder and numpy's small-array operations hold
the GIL, so two threads on two cores encoded images no faster than one (BENCHMARKS.md,
"incremental"). :func:`map_in_processes` maps a module-level function over the items in forked
worker processes, in order, a chunk of items per task.

The workers are forked, not spawned: a Snakemake ``script:`` job's ``__main__`` is the job
itself, which a spawned worker would import and run again. The functions run in the workers
touch only files, Pillow, numpy and hashlib (never polars, whose threads exist in the parent),
so the parent's threads do not matter to them. A worker that dies (killed for memory) fails the
map with :class:`concurrent.futures.process.BrokenProcessPool` instead of hanging.
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Below this many items, starting workers costs more than it saves: they run in this process.
MIN_ITEMS_FOR_WORKERS = 64
#: A job with fewer new items than this (the rest reused from the memo) asks Snakemake for one
#: thread (config ``scale_out.parallel_from_new_items``): its work is then mostly a pass over
#: known items, which one core does as fast, and the other cores run other jobs meanwhile (see
#: :func:`threads_for_new_items`).
PARALLEL_FROM_NEW_ITEMS = 1_000
#: Items per task sent to a worker: large enough to amortise the pickling, small enough that
#: the workers finish together.
MAX_CHUNK = 256


def map_in_processes(
    function: Callable[[Item], Result], items: Sequence[Item], workers: int
) -> Iterator[Result]:
    """``function(item)`` of every item, in order, computed in ``workers`` processes.

    ``function`` must be picklable by reference (a module-level function, or a
    :func:`functools.partial` of one). With ``workers <= 1`` or fewer than
    :data:`MIN_ITEMS_FOR_WORKERS` items it runs here. An exception raised for an item is raised
    by the iterator when that item's result is reached.
    """
    if workers <= 1 or len(items) < MIN_ITEMS_FOR_WORKERS:
        yield from map(function, items)
        return
    chunk = max(1, min(MAX_CHUNK, len(items) // (workers * 8)))
    # The parent's objects go to the collector's permanent generation: a collection in a
    # worker would otherwise write to every one of them and copy the pages they are on.
    gc.freeze()
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        yield from pool.map(function, items, chunksize=chunk)
    finally:
        # After a failure (or when the caller stops early) the chunks not started are dropped.
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()


def threads_for_new_items(
    most: int, new_items: int | None, parallel_from: int = PARALLEL_FROM_NEW_ITEMS
) -> int:
    """The threads a per-item job asks for: ``most``, or one when it has fewer than
    ``parallel_from`` items to compute (``None``: not known yet, ``most``).

    A rerun that adds 100 images to 100,000 leaves each image stage a pass over known items with
    little to compute; declared with one thread, it runs beside the next job instead of holding
    every core for work that does not use them."""
    if new_items is None or new_items >= parallel_from:
        return most
    return 1
