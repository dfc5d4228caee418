"""What monitoring watches in a model: the features of its inputs, and which output tells how sure it is.

Features. Each numeric input contributes, per sample, either its values one column each ("raw":
``x[0]`` … ``x[3]`` for iris) or, when the model is wide, a bounded set of summaries of them
(``SUMMARIES``: mean, standard deviation, minimum, maximum and the share of zeros). Inputs are kept
raw while every input's per-sample width is declared and they add up to at most ``MAX_FEATURES``;
otherwise the widest inputs are summarized first until the count fits (a 784-pixel image becomes
5 features), and inputs beyond ``MAX_FEATURES`` // 5 summarized ones are not watched. String
inputs are never watched.

A reference given in input space (a table of ``width`` columns: the inputs' values side by side,
in the model's order) goes through the same mapping, so live traffic and reference agree.

Task. A classifier answers with class probabilities: a ZipMap (``seq(map(...))``) or a float tensor
[N, K] next to a label output, or named like probabilities. Everything else is read as a regressor
on its first numeric output. The uploader can declare either, naming the output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nexus.errors import BadInput
from nexus.runtime import TensorSpec

MAX_FEATURES = 64
SUMMARIES = ("mean", "std", "min", "max", "zeros")
_NUMERIC_KINDS = frozenset("biuf")
TASKS = ("classifier", "regressor")


@dataclass(frozen=True)
class Watched:
    """One watched input: its name, per-sample width (None: dynamic) and whether it is summarized."""

    name: str
    width: int | None
    summarized: bool


@dataclass(frozen=True)
class Layout:
    """The features of a model's inputs, in order, and how to compute them from a request's feeds."""

    inputs: tuple[Watched, ...]
    features: tuple[str, ...]

    @property
    def width(self) -> int | None:
        """Columns of a reference given in input space; None when an input's width is dynamic."""
        widths = [watched.width for watched in self.inputs]
        return None if None in widths else sum(widths)  # type: ignore[arg-type]

    def rows(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The features of each sample of ``feeds`` as float64 [samples, features], or None when the
        inputs disagree on the number of samples."""
        if len(self.inputs) == 1:
            watched = self.inputs[0]
            values = feeds[watched.name]
            flat = values.reshape(values.shape[0] if values.ndim else 1, -1)
            return _summaries(flat) if watched.summarized else flat.astype(np.float64, copy=False)
        parts = []
        samples = None
        for watched in self.inputs:
            values = feeds[watched.name]
            flat = values.reshape(values.shape[0] if values.ndim else 1, -1)
            if samples is not None and flat.shape[0] != samples:
                return None
            samples = flat.shape[0]
            parts.append(_summaries(flat) if watched.summarized else flat.astype(np.float64, copy=False))
        return np.hstack(parts) if parts else None

    def from_table(self, table: np.ndarray) -> np.ndarray:
        """The features of a reference table given in input space ([samples, width])."""
        parts, start = [], 0
        for watched in self.inputs:
            block = table[:, start:start + watched.width]
            start += watched.width  # type: ignore[operator]
            parts.append(_summaries(block) if watched.summarized else block)
        return np.hstack(parts).astype(np.float64, copy=False)


def layout(inputs: Sequence[TensorSpec]) -> Layout:
    """Decide which features of ``inputs`` are watched (see the module's docstring)."""
    numeric = [spec for spec in inputs if _numeric(spec)]
    widths = {spec.name: _width(spec.shape) for spec in numeric}
    summarized: set[str] = {name for name, width in widths.items() if width is None}
    cost = lambda: sum(len(SUMMARIES) if n in summarized else widths[n] for n in widths)  # noqa: E731
    for name in sorted(widths, key=lambda n: -(widths[n] or 0)):
        if cost() <= MAX_FEATURES:
            break
        summarized.add(name)
    watched, features = [], []
    for spec in numeric:
        summary = spec.name in summarized
        if len(features) + (len(SUMMARIES) if summary else widths[spec.name] or 0) > MAX_FEATURES:
            continue
        watched.append(Watched(spec.name, widths[spec.name], summary))
        if summary:
            features += [f"{spec.name}:{s}" for s in SUMMARIES]
        elif widths[spec.name] == 1:
            features.append(spec.name)
        else:
            features += [f"{spec.name}[{i}]" for i in range(widths[spec.name])]  # type: ignore[arg-type]
    return Layout(tuple(watched), tuple(features))


def _numeric(spec: TensorSpec) -> bool:
    return spec.dtype is not None and spec.dtype.numpy is not None and spec.dtype.numpy.kind in _NUMERIC_KINDS


def _width(shape: tuple[int, ...]) -> int | None:
    """Values per sample of a tensor whose first dimension is the batch; None when one is dynamic."""
    rest = shape[1:]
    return None if any(d < 0 for d in rest) else math.prod(rest)


def _summaries(flat: np.ndarray) -> np.ndarray:
    """Per sample of ``flat`` ([samples, values]): mean, standard deviation, minimum, maximum, share of zeros.

    Reductions called directly on the ufuncs: numpy's mean and std wrappers cost more than the
    arithmetic on a few hundred values. Float32 inputs are reduced in float32 (a summary's
    precision is plenty for binning), not copied to float64 first.
    """
    values = flat if flat.dtype.kind == "f" else flat.astype(np.float64)
    n = values.shape[1]
    if n == 0:
        return np.full((values.shape[0], len(SUMMARIES)), np.nan)
    found = np.empty((values.shape[0], len(SUMMARIES)))
    mean = np.add.reduce(values, axis=1) / n
    found[:, 0] = mean
    found[:, 1] = np.sqrt(np.maximum(np.einsum("ij,ij->i", values, values) / n - mean * mean, 0.0))
    found[:, 2] = np.minimum.reduce(values, axis=1)
    found[:, 3] = np.maximum.reduce(values, axis=1)
    found[:, 4] = (n - np.count_nonzero(values, axis=1)) / n
    return found


# -- the task: classifier (which output holds the probabilities) or regressor ------------------


@dataclass(frozen=True)
class Task:
    kind: str  # "classifier" or "regressor"
    output: str | None  # the output read; None: nothing to read
    declared: bool = False

    def document(self) -> dict[str, Any]:
        return {"kind": self.kind, "output": self.output, "declared": self.declared}


def _probabilities(spec: TensorSpec) -> bool:
    if spec.type.startswith("seq(map("):
        return True
    return _numeric(spec) and spec.dtype.numpy.kind == "f" and len(spec.shape) == 2 and spec.shape[1] != 1


def detect(outputs: Sequence[TensorSpec]) -> Task:
    """Guess the task from the outputs: a ZipMap, or a float [N, K] named like probabilities or next to a label."""
    for spec in outputs:
        if spec.type.startswith("seq(map("):
            return Task("classifier", spec.name)
    scores = [spec for spec in outputs if _probabilities(spec) and spec.shape[1] != 1]
    first = outputs[0] if outputs else None
    labelled = first is not None and len(outputs) > 1 and first.dtype is not None and len(first.shape) <= 2 \
        and (first.dtype.numpy is None or first.dtype.numpy.kind in "iuUO")
    for spec in scores:
        if labelled or any(word in spec.name.lower() for word in ("prob", "softmax", "score")):
            return Task("classifier", spec.name)
    numeric = [spec for spec in outputs if _numeric(spec)]
    return Task("regressor", numeric[0].name if numeric else None)


def declared(outputs: Sequence[TensorSpec], kind: str | None, output: str | None) -> Task:
    """The task an uploader declared (``kind`` and maybe the ``output``), checked against the outputs; else detected."""
    if kind is None and output is None:
        return detect(outputs)
    if kind is not None and kind not in TASKS:
        raise BadInput(f"field 'task' must be one of {', '.join(TASKS)}, not {kind!r}")
    by_name = {spec.name: spec for spec in outputs}
    if output is not None and output not in by_name:
        raise BadInput(f"field 'task_output' names no output of the model; its outputs are {', '.join(by_name)}")
    found = detect(outputs)
    kind = kind or ("classifier" if output is not None and _probabilities(by_name[output]) else "regressor")
    if kind == "classifier":
        output = output or (found.output if found.kind == "classifier" else None)
        if output is None or not _probabilities(by_name[output]):
            raise BadInput("a classifier needs an output of class probabilities (a ZipMap, or float [N, K] with K > 1); "
                           "name it in field 'task_output'")
    else:
        output = output or next((spec.name for spec in outputs if _numeric(spec)), None)
        spec = by_name.get(output) if output else None
        if spec is None or not _numeric(spec):
            raise BadInput("a regressor needs a numeric output; name it in field 'task_output'")
    return Task(kind, output, declared=True)


def task_of(document: object, outputs: Sequence[TensorSpec]) -> Task:
    """The task a sidecar stored (as :meth:`Task.document`), or the detected one when it stores none."""
    if isinstance(document, dict) and document.get("kind") in TASKS:
        names = {spec.name for spec in outputs}
        output = document.get("output")
        if output is None or output in names:
            return Task(document["kind"], output, bool(document.get("declared")))
    return detect(outputs)
