"""Shadow traffic: a copy of a request run on another version of the model, off the request's path.

With gunicorn's sync workers a request holds its worker until the answer is written, so a
shadow run inside the request would add its whole run time to the client's latency. Instead
the request hands the shadow run to a thread of its worker through a bounded queue and
returns at once. The thread runs at the lowest CPU priority (onnxruntime releases the GIL
while it runs), so it gets the CPU the clients leave; it compares the shadow's answer with
the one the client got and records both in metrics. When the queue is full the copy is
dropped and counted, never waited for: shadows take spare capacity, not the client's
(bench/versions.py: on one core kept busy by clients, a 100 % shadow left them 0.86-0.98× of
their throughput; without the lower priority, 0.65-0.73×).

Nothing a shadow does reaches the client: its answer is only compared, and its failure only
counted.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nexus.observability import metrics

log = logging.getLogger("nexus.shadow")

QUEUE_SIZE = 64  # copies waiting per worker; beyond it they are dropped (and counted)
# Float outputs that are no class scores agree when every value is this close (numpy's isclose).
RTOL, ATOL = 1e-5, 1e-6

Run = Callable[[], list[Any]]  # runs the shadow version on the request's inputs; returns the compared output first

_queue: queue.Queue | None = None
_pid: int | None = None
_start_lock = threading.Lock()


def submit(model_id: str, version: str, run: Run | None, expected: Any) -> None:
    """Queue a shadow run of ``version`` whose first output is compared with ``expected`` (the client's).

    ``run`` is None when this worker has not loaded the version (yet): counted, not waited for.
    """
    if run is None:
        metrics.shadow_done(model_id, version, "unavailable")
        return
    try:
        _worker_queue().put_nowait((model_id, version, run, expected))
    except queue.Full:
        metrics.shadow_done(model_id, version, "dropped")


def _worker_queue() -> queue.Queue:
    """Return this process's queue, starting its thread on first use (after gunicorn's fork)."""
    global _queue, _pid
    if _pid != os.getpid():
        with _start_lock:
            if _pid != os.getpid():
                _queue = queue.Queue(QUEUE_SIZE)
                threading.Thread(target=_work, args=(_queue,), name="nexus-shadow", daemon=True).start()
                _pid = os.getpid()
    return _queue


def _work(jobs: queue.Queue) -> None:
    # The lowest CPU priority (Linux keeps one per thread): when a client's request and a shadow
    # run want the same core, the request goes first.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
    while True:
        model_id, version, run, expected = jobs.get()
        started = time.perf_counter()
        try:
            got = run()[0]
        except Exception as exc:  # a shadow's failure is only counted
            metrics.shadow_done(model_id, version, "error")
            log.info("shadow run failed", extra={"model_id": model_id, "version": version,
                                                 "reason": getattr(exc, "message", None) or str(exc)})
            continue
        try:
            agree, difference = compare(expected, got)
        except Exception:  # outputs too unlike to compare: they disagree
            agree, difference = False, None
        metrics.shadow_done(model_id, version, "success", time.perf_counter() - started, agree, difference)


def compare(expected: Any, got: Any) -> tuple[bool, float | None]:
    """Return whether two answers agree and the largest absolute difference of numeric ones.

    Class scores (a ZipMap's list of maps, or a float tensor whose last axis has several
    classes) agree when every sample has the same top class; labels (integers, strings) when
    they are equal; other floats when they are close (``RTOL``, ``ATOL``).
    """
    if isinstance(expected, list) or isinstance(got, list):
        if not (isinstance(expected, list) and isinstance(got, list)) or len(expected) != len(got):
            return False, None
        return all(_top(a) == _top(b) for a, b in zip(expected, got, strict=True)), _map_difference(expected, got)
    a, b = np.asarray(expected), np.asarray(got)
    if a.shape != b.shape:
        return False, None
    if a.dtype.kind not in "biufc" or b.dtype.kind not in "biufc":
        return bool(np.array_equal(a, b)), None
    difference = _largest_difference(a, b)
    if a.dtype.kind in "fc" and a.ndim >= 2 and a.shape[-1] > 1:
        return bool(np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1))), difference
    if a.dtype.kind in "fc":
        return bool(np.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True)), difference
    return bool(np.array_equal(a, b)), difference


def _largest_difference(a: np.ndarray, b: np.ndarray) -> float | None:
    """The largest absolute difference, where equal values (NaN with NaN, inf with inf) differ by 0; None if infinite."""
    if not a.size:
        return 0.0
    x, y = a.astype(np.float64), b.astype(np.float64)
    same = (x == y) | (np.isnan(x) & np.isnan(y))
    with np.errstate(invalid="ignore"):
        largest = float(np.max(np.where(same, 0.0, np.abs(x - y))))
    return largest if np.isfinite(largest) else None


def _top(scores: Any) -> Any:
    return max(scores, key=scores.get) if isinstance(scores, dict) and scores else scores


def _map_difference(expected: list, got: list) -> float | None:
    try:
        return max((abs(float(a[k]) - float(b[k])) for a, b in zip(expected, got, strict=True) for k in a), default=0.0)
    except (KeyError, TypeError, ValueError):
        return None
