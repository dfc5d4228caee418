"""How sure a classifier is of each answer: the top class's probability and its margin to the second."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Confidence(NamedTuple):
    """One batch's answers: per sample the top class, its probability and the margin to the runner-up."""

    best: np.ndarray  # int [N]: the top class's column in ``labels``
    labels: list[str]
    top: np.ndarray  # float64 [N]
    margin: np.ndarray  # float64 [N]

    @property
    def classes(self) -> list[str]:
        """The top class of each sample, by label."""
        return [self.labels[i] for i in self.best.tolist()]


def rows_of(value: Any) -> int:
    """How many samples an answer holds: a ZipMap list's length, a tensor's first dimension (1 for a scalar)."""
    return len(value) if isinstance(value, list) else (int(np.shape(value)[0]) if np.ndim(value) else 1)


def joined(values: list[Any]) -> Any:
    """Several answers of one output as one: ZipMap lists end to end, or tensors stacked along their
    samples (ValueError when their shapes do not stack)."""
    if all(isinstance(value, list) for value in values):
        return [row for value in values for row in value]
    return values[0] if len(values) == 1 else np.concatenate(values)


def class_scores(value: Any) -> tuple[np.ndarray, list[str]] | None:
    """Return a classifier output as scores [N, K] with its class labels, or None when it is no classifier output.

    A ZipMap (a list of maps from class to probability, what skl2onnx classifiers give) or a
    float tensor [N, K] with K > 1 (labels are then the column numbers).
    """
    if isinstance(value, list):
        if not value or not all(isinstance(row, dict) and row for row in value):
            return None
        labels = list(value[0])
        try:
            scores = np.array([[float(row[label]) for label in labels] for row in value], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            return None
        return scores, [str(label) for label in labels]
    array = np.asarray(value)
    if array.dtype.kind != "f" or array.ndim != 2 or array.shape[1] < 2:
        return None
    return array.astype(np.float64, copy=False), [str(k) for k in range(array.shape[1])]


def confidence(value: Any) -> Confidence | None:
    """Return the confidence of each sample of a classifier output, or None when it is no classifier output."""
    found = class_scores(value)
    if found is None:
        return None
    scores, labels = found
    if not len(scores):
        return Confidence(np.zeros(0, np.int64), labels, np.zeros(0), np.zeros(0))
    best = scores.argmax(axis=1)  # a tie goes to the first class
    top = scores[np.arange(len(scores)), best]
    second = np.partition(scores, -2, axis=1)[:, -2]
    return Confidence(best, labels, top, top - second)
