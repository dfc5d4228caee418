"""nexus.batching.Batcher: the queue a request appends to and the thread that empties it in batches.

Each test makes its own batcher with a name of its own, so its thread (``nexus-<name>``) is told apart.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import threading
import time

import pytest

from nexus.batching import Batcher
from tests.conftest import wait_for

_names = itertools.count()


def unique(name: str) -> str:
    return f"{name}-{next(_names)}-{os.getpid()}"


class Calls:
    """What ``handle`` was given, by which thread, and when; optionally failing on chosen calls."""

    def __init__(self, fail_on: tuple[int, ...] = ()) -> None:
        self.batches: list[list] = []
        self.threads: list[str] = []
        self.times: list[float] = []
        self.fail_on = fail_on
        self.calls = 0
        self.lock = threading.Lock()
        self.event = threading.Event()

    def __call__(self, items: list) -> None:
        with self.lock:
            self.calls += 1
            number = self.calls
            self.threads.append(threading.current_thread().name)
            self.times.append(time.monotonic())
            if number in self.fail_on:
                self.event.set()
                raise RuntimeError(f"handler failed on call {number}")
            self.batches.append(list(items))
        self.event.set()

    def items(self) -> list:
        with self.lock:
            return [item for batch in self.batches for item in batch]



def test_items_are_handled_together_by_the_thread_after_wait_s():
    calls = Calls()
    name = unique("wait")
    batcher = Batcher(name, calls, wait_s=0.3, limit=1000)
    started = time.monotonic()
    for item in range(5):
        batcher.put(item)
    assert calls.calls == 0  # queued, not handled by the requests
    assert list(batcher.pending) == [0, 1, 2, 3, 4]
    assert wait_for(lambda: calls.calls >= 1)
    assert calls.batches == [[0, 1, 2, 3, 4]]  # one call for everything queued during the wait
    assert calls.threads == [f"nexus-{name}"]
    assert calls.times[0] - started >= 0.3 - 0.01
    assert not batcher.pending
    # Items queued later wake the thread again.
    batcher.put("later")
    assert wait_for(lambda: calls.calls >= 2)
    assert calls.batches[1] == ["later"] and calls.threads[1] == f"nexus-{name}"
    # A single thread per process, however many wake-ups.
    assert [t.name for t in threading.enumerate()].count(f"nexus-{name}") == 1


def test_without_overflow_the_request_that_fills_the_queue_handles_it():
    calls = Calls()
    name = unique("limit")
    batcher = Batcher(name, calls, wait_s=30, limit=3)  # the thread would only wake in 30 s
    batcher.put("a")
    batcher.put("b")
    assert calls.calls == 0 and len(batcher.pending) == 2
    batcher.put("c")  # the queue reaches the limit: this caller handles it now
    assert calls.batches == [["a", "b", "c"]]
    assert calls.threads == [threading.current_thread().name]
    assert not batcher.pending
    for item in "defgh":
        batcher.put(item)
    assert calls.items() == list("abcdef")  # again at the limit; nothing lost, nothing over the limit held
    assert list(batcher.pending) == ["g", "h"]
    batcher.flush()
    assert calls.items() == list("abcdefgh") and not batcher.pending


def test_with_overflow_items_past_the_limit_are_dropped_and_handed_to_it():
    calls = Calls()
    dropped = []
    batcher = Batcher(unique("drop"), calls, wait_s=30, limit=2, overflow=dropped.append)
    for item in range(7):
        batcher.put(item)
    assert list(batcher.pending) == [0, 1]  # the first two kept, the rest dropped
    assert dropped == [2, 3, 4, 5, 6]  # each dropped item, as it came (the recorder counts its rows)
    assert calls.calls == 0  # a request never handles the queue of a batcher that drops
    batcher.flush()
    assert calls.batches == [[0, 1]]
    batcher.put(7)  # room again
    assert list(batcher.pending) == [7] and dropped == [2, 3, 4, 5, 6]


def test_a_handler_that_raises_does_not_stop_the_thread():
    calls = Calls(fail_on=(1,))
    name = unique("raise")
    batcher = Batcher(name, calls, wait_s=0.05, limit=1000)
    batcher.put("lost")
    assert wait_for(lambda: calls.calls >= 1)
    time.sleep(0.1)
    assert [t.name for t in threading.enumerate()].count(f"nexus-{name}") == 1  # still alive
    batcher.put("kept")
    assert wait_for(lambda: calls.calls >= 2)
    assert calls.batches == [["kept"]]
    assert calls.threads == [f"nexus-{name}"] * 2


def test_items_handed_back_by_the_handler_are_handled_again_by_the_thread():
    """What the records writer does when the database fails: the batch goes back to the front of the queue."""
    seen = []
    batcher = None

    def handle(items):
        seen.append(list(items))
        if len(seen) == 1:
            batcher.pending.extendleft(reversed(items))

    batcher = Batcher(unique("again"), handle, wait_s=0.05, limit=1000)
    batcher.put(1)
    batcher.put(2)
    assert wait_for(lambda: len(seen) >= 2)
    assert seen[:2] == [[1, 2], [1, 2]]
    assert not batcher.pending


def test_flush_waits_for_a_batch_the_thread_is_handling():
    """A worker that stops flushes: it must not return while the thread still holds a batch it has not handled."""
    started, release = threading.Event(), threading.Event()
    handled: list[tuple[str, list]] = []

    def handle(items):
        if not handled and not started.is_set():
            started.set()
            assert release.wait(10), "the test never released the handler"
        handled.append((threading.current_thread().name, list(items)))

    name = unique("flush-waits")
    batcher = Batcher(name, handle, wait_s=0.01, limit=1000)
    batcher.put("first")
    assert started.wait(5)  # the thread took "first" and is in the middle of handling it
    batcher.put("second")
    flushed = threading.Event()

    def flush():
        batcher.flush()
        flushed.set()

    flusher = threading.Thread(target=flush, name=f"flusher-{name}", daemon=True)
    flusher.start()
    time.sleep(0.3)
    assert not flushed.is_set()  # waiting for the thread's batch
    assert handled == []
    release.set()
    assert flushed.wait(5)
    flusher.join(5)
    # The thread's batch first; then "second", by the flush or by the thread woken for it: all handled once flush returns.
    assert [items for _, items in handled] == [["first"], ["second"]]
    assert handled[0][0] == f"nexus-{name}"
    assert not batcher.pending


def test_a_handler_that_cannot_finish_pauses_the_thread_outside_the_lock():
    """The records writer with its database down: the batch goes back, and the thread waits ``pause_s`` before it tries again."""
    seen: list[tuple[float, list]] = []
    batcher = None

    def handle(items):
        seen.append((time.monotonic(), list(items)))
        if len(seen) == 1:
            batcher.pending.extendleft(reversed(items))
            batcher.pause_s = 0.5
        else:
            batcher.pause_s = 0.0

    batcher = Batcher(unique("pause"), handle, wait_s=0.01, limit=1000)
    batcher.put("x")
    assert wait_for(lambda: len(seen) >= 1)
    time.sleep(0.05)
    # The thread is pausing; a flush meanwhile does not wait for the pause (it is outside the lock).
    before = time.monotonic()
    batcher.flush()
    assert time.monotonic() - before < 0.3
    assert [items for _, items in seen] == [["x"], ["x"]]
    batcher.put("y")
    assert wait_for(lambda: len(seen) >= 3)
    assert seen[2][1] == ["y"]
    assert seen[2][0] - seen[0][0] >= 0.5 - 0.02  # the thread handled nothing during its pause


def test_flush_with_nothing_queued_does_not_call_the_handler():
    calls = Calls()
    batcher = Batcher(unique("empty"), calls, wait_s=0.05, limit=10)
    batcher.flush()
    assert calls.calls == 0
    assert batcher.take() == []


def test_concurrent_takers_take_each_item_once():
    batcher = Batcher(unique("take"), lambda items: None, wait_s=60, limit=10**9)
    for item in range(20_000):
        batcher.pending.append(item)  # queued without waking a thread: only the takers below empty it
    taken: list[list] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def take(index):
        barrier.wait()
        while batcher.pending:
            taken[index].extend(batcher.take())

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    everything = [item for part in taken for item in part]
    assert sorted(everything) == list(range(20_000))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_a_fork_the_child_starts_with_an_empty_queue_and_a_thread_of_its_own():
    calls = Calls()
    name = unique("fork")
    batcher = Batcher(name, calls, wait_s=0.05, limit=1000)
    batcher.put("parent-1")  # the parent's thread runs and has been woken
    assert wait_for(lambda: calls.calls >= 1)
    batcher.wait_s = 30  # from now on, the parent's queue stays queued across the fork
    batcher.put("parent-2")
    batcher.put("parent-3")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report over the pipe, never return into pytest
        code = 1
        try:
            os.close(read_end)
            report = [f"pending={len(batcher.pending)}"]
            batcher.wait_s = 0.05
            batcher.put("child-1")
            handled = wait_for(lambda: calls.calls >= 2, 5.0)
            report.append(f"handled={handled}")
            report.append(f"batches={calls.batches[1:]!r}")
            report.append(f"thread={calls.threads[-1] if calls.threads else None}")
            report.append(f"same_thread_name={calls.threads[-1] == f'nexus-{name}' if calls.threads else False}")
            os.write(write_end, ";".join(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 20)
        data = b""
        if ready:
            while chunk := os.read(read_end, 4096):
                data += chunk
        else:
            os.kill(pid, signal.SIGKILL)  # the child hung: end it (it is ours) and fail below
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    report = dict(part.split("=", 1) for part in data.decode().split(";") if "=" in part)
    assert report.get("pending") == "0", data  # the parent's queued items are not the child's
    assert report.get("handled") == "True", data
    assert report.get("batches") == "[['child-1']]", data
    assert report.get("same_thread_name") == "True", data
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    # The parent's queue is untouched by the child.
    assert list(batcher.pending) == ["parent-2", "parent-3"]
    batcher.flush()
    assert calls.batches[-1] == ["parent-2", "parent-3"]
