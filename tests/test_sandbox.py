"""nexus.sandbox: a candidate is opened in a child, measured, and refused past the limits."""

from __future__ import annotations

import os
import time

import pytest

from nexus import sandbox
from nexus.config import Settings, with_overrides
from nexus.errors import InvalidModel, ModelLoadTimeout, ModelTooLarge
from nexus.store import sha256_of
from tests import hostile_models, models


def limits(**overrides):
    return with_overrides(Settings(), overrides).limits


def check(tmp_path, data: bytes, **overrides):
    path = tmp_path / "candidate.onnx"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return sandbox.check(fd, sha256_of(data), limits(**overrides))
    finally:
        os.close(fd)


def test_a_model_is_measured_and_the_record_names_its_bytes(tmp_path):
    data = models.iris_classifier()
    record = check(tmp_path, data)
    assert record["sha256"] == sha256_of(data)
    assert 0 <= record["peak_mb"] < 100 and 0 <= record["seconds"] < 5
    assert sandbox.verdict(record, sha256_of(data), limits()) is None


def test_a_load_time_bomb_is_killed_at_the_memory_limit(tmp_path):
    started = time.monotonic()
    with pytest.raises(ModelTooLarge, match=r"more than 512 MB.*limit is 512 MB \(NEXUS_MAX_MODEL_MEMORY_MB\)"):
        check(tmp_path, hostile_models.load_time_bomb(), max_model_memory_mb=512)
    assert time.monotonic() - started < 10


def test_a_slow_model_is_killed_at_the_time_limit(tmp_path):
    started = time.monotonic()
    with pytest.raises(ModelLoadTimeout, match=r"0\.3 s \(NEXUS_MAX_LOAD_SECONDS\)"):
        check(tmp_path, hostile_models.slow_to_load(2000, 8), max_load_seconds=0.3)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("data", "words"),
    [(b"\x08\x07" + b"\xff" * 40, "not an ONNX model"), (models.identity()[:-9], "not"),
     (hostile_models.external_initializer("secret.txt"), "external data")],
    ids=["garbage", "truncated", "external-data"],
)
def test_a_file_that_is_not_a_loadable_model_is_refused_with_the_reason(tmp_path, data, words):
    with pytest.raises(InvalidModel, match=words) as info:
        check(tmp_path, data)
    assert "/tmp" not in info.value.message and ".cc:" not in info.value.message


GOOD = {"sha256": "abc", "peak_mb": 100.0, "seconds": 2.0}
REFUSED = {"sha256": "abc", "refused": "too big", "memory_limit_mb": 512, "time_limit_s": 30}


@pytest.mark.parametrize(
    ("record", "overrides", "outcome"),
    [
        (GOOD, {}, None),
        (GOOD, {"max_model_memory_mb": 64}, "needs 100 MB"),
        (GOOD, {"max_load_seconds": 1}, "longer than the limit of 1 s"),
        ({**GOOD, "sha256": "other"}, {}, KeyError),  # a record of other bytes decides nothing
        (None, {}, KeyError),
        ({"sha256": "abc", "peak_mb": "x", "seconds": 1}, {}, KeyError),
        ({**REFUSED}, {"max_model_memory_mb": 512}, "too big"),
        ({**REFUSED}, {"max_model_memory_mb": 4096}, KeyError),  # refused under a smaller limit: check again
    ],
)
def test_the_verdict_on_a_record(record, overrides, outcome):
    if outcome is KeyError:
        with pytest.raises(KeyError):
            sandbox.verdict(record, "abc", limits(**overrides))
    elif outcome is None:
        assert sandbox.verdict(record, "abc", limits(**overrides)) is None
    else:
        assert outcome in sandbox.verdict(record, "abc", limits(**overrides))
