"""A model version's reference: sample inputs an uploader sends (CSV or ``.npy``), or the first
predictions it served, kept as a sketch document next to the model, never as rows.

The document (``<key>.reference.json`` in the model directory, written by the store)::

    {"format": 1, "model_sha256": "...", "source": "upload" | "predictions", "rows": 150,
     "created_at": "...", "file": "iris.csv", "features": [FeatureSketch.document(), ...]}

It names the model's sha256: a document that does not match the version's bytes, or its features,
is not used.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from nexus.clock import utc_now
from nexus.errors import BadInput
from nexus.monitoring import sketch
from nexus.monitoring.features import Layout

FORMAT = 1
MIN_ROWS = sketch.MIN_COUNT  # a reference smaller than a verdict's minimum says too little
MAX_ROWS = 1_000_000
MAX_REFERENCE_BYTES = 64 * 1024 * 1024
_NPY_MAGIC = b"\x93NUMPY"


def from_upload(filename: str, data: bytes, layout: Layout, sha256: str) -> dict[str, Any]:
    """Read an uploaded reference file (CSV with a header row, or ``.npy``) against ``layout``, or raise BadInput."""
    width = layout.width
    if not layout.inputs:
        raise BadInput("field 'reference': the model has no numeric input to watch")
    if width is None:
        raise BadInput("field 'reference': the model's input has a dynamic width, so a table cannot match it; "
                       "leave the reference out and the first predictions become it")
    if data.startswith(_NPY_MAGIC):
        table, names = _npy(data), None
    else:
        table, names = _csv(data, width)
    if table.ndim == 1 and width == 1:
        table = table.reshape(-1, 1)
    if table.ndim != 2 or table.shape[1] != width:
        raise BadInput(f"field 'reference': the model takes {width} value(s) per sample, "
                       f"the reference has shape {list(table.shape)}")
    if not MIN_ROWS <= table.shape[0] <= MAX_ROWS:
        raise BadInput(f"field 'reference': {table.shape[0]} rows; a reference needs {MIN_ROWS} to {MAX_ROWS}")
    if not np.isfinite(table).all(axis=1).any():
        raise BadInput("field 'reference': no row is made of finite numbers")
    features = layout.features
    if names is not None and not any(w.summarized for w in layout.inputs):
        features = tuple(names)  # the header names raw columns one for one
    sketches = sketch.build(layout.from_table(table), list(features))
    return document("upload", table.shape[0], sketches, sha256, filename)


def from_rows(rows: np.ndarray, layout: Layout, sha256: str) -> dict[str, Any]:
    """The reference of the first predictions' feature rows ([samples, features])."""
    return document("predictions", len(rows), sketch.build(rows, list(layout.features)), sha256)


def document(source: str, rows: int, sketches: list[sketch.FeatureSketch], sha256: str, filename: str | None = None) -> dict[str, Any]:
    found = {"format": FORMAT, "model_sha256": sha256, "source": source, "rows": int(rows), "created_at": utc_now(),
             "features": [s.document() for s in sketches]}
    if filename:
        found["file"] = filename
    return found


def sketches_of(document: dict[str, Any] | None, layout: Layout, sha256: str) -> list[sketch.FeatureSketch] | None:
    """The feature sketches of a stored document, or None when it is missing or belongs to other bytes or features."""
    if not document or document.get("format") != FORMAT or document.get("model_sha256") != sha256:
        return None
    try:
        found = [sketch.FeatureSketch.from_document(f) for f in document["features"]]
    except (KeyError, TypeError, ValueError):
        return None
    return found if len(found) == len(layout.features) else None


def _npy(data: bytes) -> np.ndarray:
    """Read a .npy of numbers, its header checked against the bytes there are before anything is allocated."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version} is not read here; save with numpy's default")
        shape, _, dtype = read_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise BadInput(f"field 'reference': not a readable .npy array ({exc})") from None
    if dtype.kind not in "biuf":
        raise BadInput(f"field 'reference': a .npy of numbers is needed, not {dtype}")
    if math.prod(shape) * dtype.itemsize > len(data) - stream.tell():
        raise BadInput(f"field 'reference': the .npy header promises shape {list(shape)}, more than its {len(data)} bytes hold")
    try:
        table = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise BadInput(f"field 'reference': not a readable .npy array ({exc})") from None
    return table.astype(np.float64, copy=False)


def _csv(data: bytes, width: int) -> tuple[np.ndarray, list[str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput("field 'reference': neither a .npy array nor UTF-8 CSV text") from None
    try:
        return _csv_rows(csv.reader(io.StringIO(text, newline="")), width)
    except csv.Error as exc:
        raise BadInput(f"field 'reference': not readable as CSV ({exc})") from None


def _csv_rows(reader: Any, width: int) -> tuple[np.ndarray, list[str]]:
    header = next(reader, None)
    if not header:
        raise BadInput("field 'reference': the CSV is empty; send a header row, then one row per sample")
    names = [name.strip() for name in header]
    if _numbers(names) is not None:
        raise BadInput("field 'reference': the CSV's first row must be a header of column names")
    if len(names) != width:
        raise BadInput(f"field 'reference': the model takes {width} value(s) per sample, the CSV header has {len(names)} columns")
    if len(set(names)) != len(names) or not all(names) or max(map(len, names)) > 64:
        raise BadInput("field 'reference': CSV column names must be distinct, not empty, and at most 64 characters")
    rows = []
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        values = _numbers(row)
        if values is None or len(values) != width:
            raise BadInput(f"field 'reference': CSV line {reader.line_num} is not {width} numbers")
        rows.append(values)
        if len(rows) > MAX_ROWS:
            break
    return np.array(rows, dtype=np.float64).reshape(len(rows), width), names


def _numbers(cells: list[str]) -> list[float] | None:
    try:
        return [float(cell) for cell in cells]
    except ValueError:
        return None
