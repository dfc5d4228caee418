"""Work that requests hand off and a worker does later, in batches: monitoring's counting, the
prediction records.

A request only appends to a :class:`Batcher`'s queue. The batcher's thread, woken by the first item
queued, waits ``wait_s`` (so items gather) and hands everything queued by then to ``handle`` in
one call. When the queue reaches ``limit``, a batcher without ``overflow`` has the request that
fills it handle the batch itself (the queue's memory is bounded and nothing is lost); one with
``overflow`` drops the item and hands it to ``overflow`` (the request is never slowed by the
handler, say a database that is down). A handler that could not finish puts items back and sets
``pause_s``: the thread waits that long before it tries again. :meth:`flush` waits for a batch
the thread is handling, so a worker that stops loses nothing that was queued. Each process has
its own queue and thread: after a fork the child starts empty, and its thread starts with its
first item.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Batcher:
    """One worker's queue of items for ``handle``, and the thread that empties it."""

    def __init__(self, name: str, handle: Callable[[list[Any]], None], wait_s: float, limit: int,
                 overflow: Callable[[Any], None] | None = None) -> None:
        self.name, self.handle, self.wait_s, self.limit, self.overflow = name, handle, wait_s, limit, overflow
        self.pending: collections.deque[Any] = collections.deque()
        self.awake = threading.Event()  # set while the thread has been woken and has not yet taken the queue
        self.pause_s = 0.0  # set by a handler that could not finish: how long the thread waits before trying again
        self._guard = threading.Lock()
        self._handling = threading.Lock()  # held while a batch is taken and handled
        self._thread_pid = 0
        _instances.add(self)

    def put(self, item: Any) -> None:
        """Queue ``item`` (the hot path: an append, and a check)."""
        pending = self.pending
        if self.overflow is not None and len(pending) >= self.limit:
            self.overflow(item)
            return
        pending.append(item)
        if not self.awake.is_set():
            self.wake()
        elif self.overflow is None and len(pending) >= self.limit:
            self.flush()

    def wake(self) -> None:
        """Have the thread handle the queue ``wait_s`` from now (started on first use in each process)."""
        if self._thread_pid != os.getpid():
            with self._guard:
                if self._thread_pid != os.getpid():
                    self._thread_pid = os.getpid()
                    atexit.register(self.flush)
                    try:
                        threading.Thread(target=self._run, name=f"nexus-{self.name}", daemon=True).start()
                    except RuntimeError:  # no thread to be had: the queue is handled at its limit, or by flush()
                        log.exception("a batching thread could not start", extra={"batcher": self.name})
        self.awake.set()

    def _run(self) -> None:
        while True:
            self.awake.wait()
            time.sleep(self.wait_s)
            self.awake.clear()  # from here on, an item queued wakes the thread again
            try:
                self.flush()
            except Exception:  # never let the thread die: the next wake-up handles what is left
                log.exception("handling a batch failed", extra={"batcher": self.name})
            if self.pause_s:
                time.sleep(self.pause_s)
            if self.pending:  # handed back (a handler that could not finish) or queued meanwhile
                self.awake.set()

    def take(self) -> list[Any]:
        """Take everything queued now (callers may overlap: each item is taken once)."""
        pending, taken = self.pending, []
        try:
            for _ in range(len(pending)):
                taken.append(pending.popleft())
        except IndexError:
            pass  # another caller took the rest
        return taken

    def flush(self) -> None:
        """Handle everything queued now, in the calling thread, after any batch the thread is handling."""
        with self._handling:
            taken = self.take()
            if taken:
                self.handle(taken)

    def _forked(self) -> None:
        """In a child after a fork: the parent's queue and thread are not this process's."""
        self.pending.clear()
        self.awake = threading.Event()
        self._handling = threading.Lock()
        self._thread_pid = 0


_instances: weakref.WeakSet[Batcher] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [batcher._forked() for batcher in list(_instances)])
