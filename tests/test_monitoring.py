"""The pure monitoring pieces: classifier confidence, reference sketches and drift measures."""

from __future__ import annotations

import numpy as np
import pytest

from nexus.monitoring.confidence import class_scores, confidence
from nexus.monitoring.sketch import (
    BINS,
    MIN_COUNT,
    FeatureSketch,
    build,
    drift,
    jensen_shannon,
    noise,
    psi,
    verdict,
)


def test_confidence_of_a_zipmap_is_the_top_probability_and_its_margin():
    found = confidence([{0: 0.7, 1: 0.2, 2: 0.1}, {0: 0.1, 1: 0.45, 2: 0.45}])
    assert found.classes == ["0", "1"]  # a tie goes to the first label, in a batch as for one row
    assert found.top.tolist() == pytest.approx([0.7, 0.45]) and found.margin.tolist() == pytest.approx([0.5, 0.0])


def test_confidence_of_a_probability_tensor_labels_the_columns():
    found = confidence(np.array([[0.1, 0.9], [0.6, 0.4]], np.float32))
    assert found.classes == ["1", "0"] and found.top.tolist() == pytest.approx([0.9, 0.6])
    assert found.margin.tolist() == pytest.approx([0.8, 0.2])


@pytest.mark.parametrize("value", [np.array([1, 2]), np.array([[0.5]], np.float32), np.array([[1, 2]], np.int64), [], [1, 2],
                                   [{"a": "x"}], np.zeros((2, 3, 4), np.float32)])
def test_what_is_no_classifier_output_has_no_confidence(value):
    assert class_scores(value) is None and confidence(value) is None


def test_an_empty_batch_has_empty_confidence():
    assert confidence(np.zeros((0, 3), np.float32)).top.size == 0


def test_a_numeric_reference_has_quantile_bins_of_equal_counts():
    rng = np.random.default_rng(0)
    [sketch] = build(rng.normal(size=(10_000, 1)), ["x"])
    assert sketch.kind == "numeric" and len(sketch.edges) == BINS - 1 and len(sketch.counts) == BINS
    assert sum(sketch.counts) == 10_000 and max(sketch.counts) - min(sketch.counts) <= 2


def test_an_integer_feature_with_few_values_is_categorical_with_a_bin_for_others():
    [sketch] = build(np.array([[1], [2], [2], [3], [np.nan]]), ["c"])
    assert sketch.kind == "categorical" and sketch.categories == (1.0, 2.0, 3.0) and sketch.counts == (1, 2, 1, 0)
    assert sketch.count(np.array([2, 2, 7])).tolist() == [0, 2, 0, 1]


def test_a_sketch_round_trips_through_its_document():
    [sketch] = build(np.random.default_rng(1).random((500, 1)), ["x"])
    assert FeatureSketch.from_document(sketch.document()) == sketch


def test_a_reference_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="2 columns"):
        build(np.zeros((5, 3)), ["a", "b"])


def test_the_same_distribution_does_not_drift_and_a_shifted_one_does():
    rng = np.random.default_rng(2)
    [sketch] = build(rng.normal(size=(5_000, 1)), ["x"])
    same = sketch.count(rng.normal(size=2_000))
    shifted = sketch.count(rng.normal(loc=1.0, size=2_000))
    assert psi(sketch.counts, same) < 0.02 and jensen_shannon(sketch.counts, same) < 0.05
    assert psi(sketch.counts, shifted) > 0.25 and jensen_shannon(sketch.counts, shifted) > 0.2
    assert verdict(psi(sketch.counts, same), 2_000) == "ok" and verdict(psi(sketch.counts, shifted), 2_000) == "alert"


def test_distances_of_equal_and_disjoint_counts():
    assert psi([5, 5], [5, 5]) == 0 and jensen_shannon([5, 5], [10, 10]) == 0
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize(("score", "count", "expected"), [(0.5, MIN_COUNT - 1, "insufficient"), (0.05, MIN_COUNT, "ok"),
                                                          (0.1, MIN_COUNT, "warn"), (0.25, 10_000, "alert")])
def test_a_verdict_needs_enough_values(score, count, expected):
    assert verdict(score, count) == expected


def test_categorical_drift_has_both_measures_over_the_categories():
    [sketch] = build(np.array([[0]] * 50 + [[1]] * 50), ["c"])
    scores = drift(sketch, sketch.count(np.array([1] * 100)))
    assert set(scores) == {"psi", "js"} and scores["js"] > 0.5 and scores["psi"] > 1


def test_the_verdict_discounts_the_noise_a_sample_of_its_size_shows():
    rng = np.random.default_rng(3)
    [sketch] = build(rng.normal(size=(1_000, 1)), ["x"])
    expected = noise(len(sketch.counts), 100, 1_000)
    assert expected == pytest.approx(9 * (1 / 100 + 1 / 1_000))
    scores = [psi(sketch.counts, sketch.count(rng.normal(size=100))) for _ in range(200)]
    raw = sum(verdict(s, 100) != "ok" for s in scores)
    fair = sum(verdict(s, 100, expected_noise=expected) != "ok" for s in scores)
    assert raw > 80 and fair < 20  # same distribution: the raw thresholds warn on noise half the time, the adjusted ones seldom
    shifted = psi(sketch.counts, sketch.count(rng.normal(loc=1.0, size=100)))
    assert verdict(shifted, 100, expected_noise=expected) == "alert"
