"""The tensor codec: one datatype table, strict casts, shapes, and output encoding."""

from __future__ import annotations

import numpy as np
import pytest

from nexus.errors import BadInput
from nexus.tensors import BY_ONNX, BY_ORT, BY_V2, DTYPES, check_shape, decode_features, encode_output, flatten_output, sample_shape, to_array


def test_the_table_is_consistent_in_every_direction():
    assert len({d.onnx for d in DTYPES}) == len({d.ort for d in DTYPES}) == len({d.v2 for d in DTYPES}) == len(DTYPES)
    for d in DTYPES:
        assert BY_ONNX[d.onnx] is BY_ORT[d.ort] is BY_V2[d.v2] is d


@pytest.mark.parametrize(("v2", "numpy_type"), [("FP32", np.float32), ("FP64", np.float64), ("FP16", np.float16), ("INT8", np.int8),
                                                ("UINT64", np.uint64), ("BOOL", np.bool_), ("BYTES", np.object_)])
def test_v2_names_map_to_numpy(v2, numpy_type):
    assert BY_V2[v2].numpy == np.dtype(numpy_type)


@pytest.mark.parametrize(
    ("ort", "values", "words"),
    [
        ("tensor(float)", ["1"], "needs numbers"),
        ("tensor(float)", [None], "null"),
        ("tensor(float)", [True], "needs numbers"),
        ("tensor(float)", [1e39], "out of range"),
        ("tensor(int32)", [1.5], "whole numbers"),
        ("tensor(int8)", [128], "out of range"),
        ("tensor(uint8)", [-1], "out of range"),
        ("tensor(uint64)", [2**64], "out of range"),
        ("tensor(bool)", [1], "true/false"),
        ("tensor(string)", [1], "needs strings"),
        ("tensor(float)", [[1, 2], [3]], "rectangular"),
    ],
)
def test_strict_casts_name_the_input(ort, values, words):
    with pytest.raises(BadInput, match=words) as info:
        to_array("X", values, BY_ORT[ort])
    assert "input 'X'" in info.value.message


def test_casts_that_are_exact_are_accepted():
    assert to_array("X", [1, 2.0], BY_ORT["tensor(int64)"]).tolist() == [1, 2]
    assert to_array("X", [0, 2**64 - 1], BY_ORT["tensor(uint64)"]).tolist() == [0, 2**64 - 1]
    assert to_array("X", [[0, 1], [2, 2**64 - 1]], BY_ORT["tensor(uint64)"]).tolist() == [[0, 1], [2, 2**64 - 1]]
    assert to_array("X", ["a", "b"], BY_ORT["tensor(string)"]).dtype == object
    assert to_array("X", [1, 2], BY_ORT["tensor(float16)"]).dtype == np.float16


@pytest.mark.parametrize(
    ("count", "declared", "shape"),
    [(4, (-1, 4), (1, 4)), (4, (4,), (4,)), (7, (-1,), (7,)), (6, (-1, -1, 3), (1, 2, 3)), (6, (2, 3), (2, 3)), (1, (), ())],
)
def test_a_flat_list_is_one_sample(count, declared, shape):
    assert sample_shape("X", count, declared) == shape


@pytest.mark.parametrize(
    ("count", "declared", "words"),
    [(3, (-1, 4), "needs 4 values, got 3"), (5, (-1, -1, 3), "multiple of 3"), (4, (-1, -1, -1), "several dynamic"),
     (3, (4,), "needs 4 values, got 3"), (2, (), "scalar")],
)
def test_a_flat_list_that_does_not_fit(count, declared, words):
    with pytest.raises(BadInput, match=words):
        sample_shape("X", count, declared)


def test_nested_shapes_are_checked():
    check_shape("X", (2, 4), (-1, 4))
    with pytest.raises(BadInput, match=r"expects shape \[-1, 4\], got \[2, 3\]"):
        check_shape("X", (2, 3), (-1, 4))
    with pytest.raises(BadInput, match="expects shape"):
        check_shape("X", (4,), (-1, 4))


def test_decode_features_reshapes_flat_and_keeps_nested():
    float32 = BY_ORT["tensor(float)"]
    assert decode_features("X", [1, 2, 3, 4], float32, (-1, 4)).shape == (1, 4)
    assert decode_features("X", [[1, 2, 3, 4]] * 3, float32, (-1, 4)).shape == (3, 4)
    with pytest.raises(BadInput, match="must be a list"):
        decode_features("X", 3, float32, (-1, 4))


def test_outputs_are_encoded_for_json():
    assert encode_output(np.array(["a", "b"], dtype=object)) == ["a", "b"]
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    assert encode_output(transposed).flags.c_contiguous
    assert flatten_output(np.arange(4).reshape(2, 2)).tolist() == [0, 1, 2, 3]
    maps = [{0: 0.5, 1: 0.5}]
    assert flatten_output(maps) is maps
