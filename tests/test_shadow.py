"""nexus.shadow on its own: comparing a shadow's answer with the client's, and the bounded background queue."""

from __future__ import annotations

import itertools
import math
import threading
import time

import numpy as np
import pytest

from nexus import shadow
from nexus.shadow import compare, submit
from tests.conftest import metric

RUNS = "model_shadow_predictions_total"
AGREEMENT = "model_shadow_agreement_total"
DIFFERENCE = "model_shadow_max_abs_difference_count"
DURATION = "model_shadow_duration_seconds_count"

_ids = itertools.count()


@pytest.fixture
def model_id() -> str:
    """A model id no other test labels metrics with (metrics are process-global)."""
    return f"shadow-test-{next(_ids)}"


def runs(model_id: str, status: str, version: str = "v2") -> float:
    return metric(RUNS, model_id=model_id, version=version, status=status)


def agreement(model_id: str, result: str, version: str = "v2") -> float:
    return metric(AGREEMENT, model_id=model_id, version=version, result=result)


def wait_for(condition, timeout: float = 10.0) -> None:
    """Wait for the shadow thread to have done what ``condition`` checks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the shadow thread did not get there in time")
        time.sleep(0.005)


# -- compare ------------------------------------------------------------------------------------


def test_equal_labels_agree_with_no_difference():
    assert compare(np.array([0, 2, 1], np.int64), np.array([0, 2, 1], np.int64)) == (True, 0.0)


def test_unequal_labels_disagree_with_their_difference():
    agree, difference = compare(np.array([0, 2, 1], np.int64), np.array([0, 1, 1], np.int64))
    assert agree is False and difference == 1.0


def test_zipmap_scores_agree_on_the_top_class_whatever_the_scores():
    expected = [{0: 0.9, 1: 0.05, 2: 0.05}, {0: 0.2, 1: 0.7, 2: 0.1}]
    got = [{0: 0.6, 1: 0.3, 2: 0.1}, {0: 0.1, 1: 0.5, 2: 0.4}]
    agree, difference = compare(expected, got)
    assert agree is True
    assert difference == pytest.approx(0.3)


def test_zipmap_scores_with_another_top_class_disagree():
    expected = [{0: 0.9, 1: 0.1}, {0: 0.2, 1: 0.8}]
    got = [{0: 0.9, 1: 0.1}, {0: 0.6, 1: 0.4}]
    agree, difference = compare(expected, got)
    assert agree is False
    assert difference == pytest.approx(0.4)


def test_zipmap_lists_of_another_length_or_kind_disagree():
    assert compare([{0: 1.0}], [{0: 1.0}, {0: 1.0}]) == (False, None)
    assert compare([{0: 1.0}], np.array([[1.0]])) == (False, None)
    assert compare(np.array([[1.0]]), [{0: 1.0}]) == (False, None)


def test_zipmap_with_other_keys_agrees_on_the_top_class_but_has_no_difference():
    agree, difference = compare([{"a": 0.9, "b": 0.1}], [{"c": 0.9, "d": 0.1}])
    assert agree is False and difference is None


@pytest.mark.parametrize(("got", "agree", "difference"), [
    ([[0.3, 0.7], [0.6, 0.4]], True, 0.2),  # the same top class in every row
    ([[0.1, 0.9], [0.3, 0.7]], False, 0.5),  # another top class in the second row
])
def test_class_scores_are_compared_by_their_argmax_with_the_difference(got, agree, difference):
    result = compare(np.array([[0.1, 0.9], [0.8, 0.2]], np.float32), np.array(got, np.float32))
    assert result[0] is agree
    assert result[1] == pytest.approx(difference, abs=1e-6)


def test_regression_floats_agree_when_close():
    expected = np.array([1.0, 2.0, -3.0], np.float32)
    agree, difference = compare(expected, expected + np.float32(1e-7))
    assert agree is True and difference < 1e-6
    # [N, 1] is one value per sample, not class scores: compared as close, not by argmax.
    agree, difference = compare(np.array([[1.0], [2.0]]), np.array([[1.0], [2.0 + 1e-9]]))
    assert agree is True and difference == pytest.approx(1e-9)


def test_regression_floats_disagree_when_not_close():
    agree, difference = compare(np.array([1.0, 2.0], np.float64), np.array([1.0, 2.1], np.float64))
    assert agree is False and difference == pytest.approx(0.1)
    agree, difference = compare(np.array([[1.0], [2.0]]), np.array([[1.5], [2.0]]))
    assert agree is False and difference == pytest.approx(0.5)


def test_nan_or_infinity_in_both_answers_gives_no_nan_difference(model_id):
    for value in (np.nan, np.inf):
        agree, difference = compare(np.array([value, 1.0], np.float32), np.array([value, 1.0], np.float32))
        assert agree is True
        assert difference is None or math.isfinite(difference), difference
    submit(model_id, "v2", lambda: [np.array([np.nan, 1.0], np.float32)], np.array([np.nan, 1.0], np.float32))
    submit(model_id, "v2", lambda: [np.array([1.0], np.float32)], np.array([1.5], np.float32))
    wait_for(lambda: runs(model_id, "success") == 2)
    assert math.isfinite(metric("model_shadow_max_abs_difference_sum", model_id=model_id, version="v2"))


def test_scalars_and_empty_tensors():
    assert compare(np.float32(3.0), np.float32(3.0)) == (True, 0.0)
    assert compare(np.array([], np.float32), np.array([], np.float32)) == (True, 0.0)


def test_a_shape_mismatch_disagrees_without_a_difference():
    assert compare(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32)) == (False, None)
    assert compare(np.zeros(3, np.int64), np.zeros(4, np.int64)) == (False, None)


def test_strings_compare_by_equality_without_a_difference():
    assert compare(np.array(["cat", "dog"]), np.array(["cat", "dog"])) == (True, None)
    assert compare(np.array(["cat", "dog"]), np.array(["cat", "cow"])) == (False, None)
    assert compare(np.array(["cat", "dog"], dtype=object), np.array(["cat", "dog"], dtype=object)) == (True, None)


# -- submit ---------------------------------------------------------------------------------------


def test_a_version_not_loaded_counts_unavailable_and_queues_nothing(model_id):
    before = runs(model_id, "unavailable")
    submit(model_id, "v2", None, np.array([1]))
    assert runs(model_id, "unavailable") == before + 1
    assert runs(model_id, "success") == runs(model_id, "error") == runs(model_id, "dropped") == 0


def test_a_run_that_raises_counts_error_and_nothing_else(model_id):
    def run():
        raise RuntimeError("shadow exploded")

    submit(model_id, "v2", run, np.array([1]))
    wait_for(lambda: runs(model_id, "error") == 1)
    assert runs(model_id, "success") == 0
    assert agreement(model_id, "agree") == agreement(model_id, "disagree") == 0


def test_a_successful_run_counts_success_and_agreement(model_id):
    expected = np.array([[0.1, 0.9], [0.7, 0.3]], np.float32)
    submit(model_id, "v2", lambda: [expected.copy(), np.array([1, 0])], expected)
    wait_for(lambda: runs(model_id, "success") == 1)
    wait_for(lambda: agreement(model_id, "agree") == 1)
    assert agreement(model_id, "disagree") == 0
    labels = {"model_id": model_id, "version": "v2"}
    assert metric(DIFFERENCE, **labels) == 1
    assert metric("model_shadow_max_abs_difference_sum", **labels) == 0.0
    assert metric(DURATION, **labels) == 1


def test_a_disagreeing_run_counts_success_and_disagreement(model_id):
    submit(model_id, "v3", lambda: [np.array([0, 1, 2])], np.array([0, 1, 1]))
    wait_for(lambda: runs(model_id, "success", "v3") == 1)
    wait_for(lambda: agreement(model_id, "disagree", "v3") == 1)
    assert agreement(model_id, "agree", "v3") == 0
    assert metric("model_shadow_max_abs_difference_sum", model_id=model_id, version="v3") == 1.0


def test_answers_too_unlike_to_compare_count_as_disagreement(model_id, monkeypatch):
    def broken(expected, got):
        raise ValueError("cannot compare")

    monkeypatch.setattr(shadow, "compare", broken)
    submit(model_id, "v2", lambda: [np.array([1])], np.array([1]))
    wait_for(lambda: agreement(model_id, "disagree") == 1)
    assert runs(model_id, "success") == 1
    assert metric(DIFFERENCE, model_id=model_id, version="v2") == 0  # no difference to record


def test_the_shadow_version_is_the_label(model_id):
    submit(model_id, "canary-7", lambda: [np.array([1.0])], np.array([1.0]))
    wait_for(lambda: runs(model_id, "success", "canary-7") == 1)
    assert runs(model_id, "success", "v2") == 0


def test_a_full_queue_drops_the_copy_and_counts_it(model_id, monkeypatch):
    # A fresh queue of 2 with its own thread; the module's own queue is put back afterwards.
    monkeypatch.setattr(shadow, "QUEUE_SIZE", 2)
    monkeypatch.setattr(shadow, "_queue", None)
    monkeypatch.setattr(shadow, "_pid", None)
    started, release = threading.Event(), threading.Event()

    def blocker():
        started.set()
        release.wait(10)
        return [np.array([1])]

    try:
        submit(model_id, "v2", blocker, np.array([1]))
        assert started.wait(5), "the shadow thread never took the first copy"
        queued = shadow._queue
        assert queued is not None and queued.maxsize == 2
        for _ in range(2):  # fill the queue behind the blocked run
            submit(model_id, "v2", lambda: [np.array([1])], np.array([1]))
        assert runs(model_id, "dropped") == 0
        before = time.monotonic()
        submit(model_id, "v2", lambda: [np.array([1])], np.array([1]))
        submit(model_id, "v2", lambda: [np.array([1])], np.array([1]))
        assert time.monotonic() - before < 1, "a full queue must never make the request wait"
        assert runs(model_id, "dropped") == 2
    finally:
        release.set()
    wait_for(lambda: runs(model_id, "success") == 3)
    assert agreement(model_id, "agree") == 3
    assert runs(model_id, "dropped") == 2 and runs(model_id, "error") == 0


def test_the_queue_is_made_once_per_process(model_id):
    submit(model_id, "v2", lambda: [np.array([1])], np.array([1]))
    first = shadow._queue
    submit(model_id, "v2", lambda: [np.array([1])], np.array([1]))
    assert shadow._queue is first and first.maxsize == shadow.QUEUE_SIZE == 64
    wait_for(lambda: runs(model_id, "success") == 2)
