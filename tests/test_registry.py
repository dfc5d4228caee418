"""Two registries on one directory behave like two gunicorn workers: each sees the other's writes."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest

from nexus import registry as registry_module
from nexus.config import Settings, with_overrides
from nexus.errors import ModelBusy, VersionExists, ModelLoading, ModelNotFound, StorageUnavailable
from nexus.registry import Registry
from nexus.store import ModelStore
from tests import models


@pytest.fixture
def workers(model_dir):
    return Registry(ModelStore(model_dir), 1), Registry(ModelStore(model_dir), 1)


def publish(registry: Registry, model_id: str, data: bytes, version: str = "1"):
    pending = registry.store.new_pending()
    pending.file.write(data)
    try:
        return registry.upload(model_id, model_id, version, pending)
    finally:
        pending.discard()


def run(registry: Registry, model_id: str, x):
    model = registry.get(model_id)
    return model.runtime.run({model.inputs[0].name: np.asarray(x, np.float32)})[0]


def test_an_upload_in_one_worker_is_served_by_the_other_at_once(workers):
    a, b = workers
    b.sync()
    publish(a, "m", models.identity())
    assert b.get("m").id == "m"
    assert [m.id for m in b.models()] == ["m"]


def test_a_delete_in_one_worker_is_seen_by_the_other_at_once(workers):
    a, b = workers
    publish(a, "m", models.identity())
    assert b.get("m")
    a.delete("m")
    with pytest.raises(ModelNotFound):
        b.get("m")
    assert b.models() == []


def test_a_replacement_is_reloaded_not_served_stale(workers):
    a, b = workers
    first, w1, b1 = models.linear(seed=1)
    second, w2, b2 = models.linear(seed=2)
    x = np.ones((1, 4), np.float32)
    publish(a, "m", first)
    assert np.allclose(run(b, "m", x), x @ w1 + b1)
    a.delete("m")
    publish(a, "m", second)
    assert np.allclose(run(b, "m", x), x @ w2 + b2)


def test_changes_within_one_timestamp_tick_are_still_seen(workers, monkeypatch):
    a, b = workers
    publish(a, "m", models.identity())
    b.get("m")
    stamp = b.store.dir_stamp()
    a.delete("m")
    os.utime(b.store.directory, ns=(stamp[1], stamp[1]))  # as if the delete landed in the same tick
    assert b.store.dir_stamp() == stamp
    with pytest.raises(ModelNotFound):
        b.get("m")


def test_a_quiet_directory_costs_one_stat_and_no_scan(workers, monkeypatch):
    a, b = workers
    publish(a, "m", models.identity())
    b.get("m")
    monkeypatch.setattr(registry_module, "RACY_NS", 0)
    b.sync()
    scans = []
    monkeypatch.setattr(b.store, "scan", lambda: scans.append(1) or [])
    for _ in range(5):
        b.get("m")
    assert scans == []


def test_duplicate_upload_is_refused_and_a_held_claim_is_busy(workers):
    a, b = workers
    publish(a, "m", models.identity())
    with pytest.raises(VersionExists):
        publish(b, "m", models.identity())
    with a.store.claim("n"), pytest.raises(ModelBusy):
        publish(b, "n", models.identity())


def _corrupt_sidecar(model_dir):
    (model_dir / "bad@1.model_info.json").write_text("{not json")


def _sidecar_not_an_object(model_dir):
    (model_dir / "bad@1.model_info.json").write_text("[1, 2]")


def _model_file_missing(model_dir):
    (model_dir / "bad@1.onnx").unlink()


def _model_file_not_a_model(model_dir):
    (model_dir / "bad@1.onnx").write_bytes(b"not a model")
    sidecar = json.loads((model_dir / "bad@1.model_info.json").read_text())
    sidecar["sha256"] = hashlib.sha256(b"not a model").hexdigest()
    (model_dir / "bad@1.model_info.json").write_text(json.dumps(sidecar))


def _sha256_mismatch(model_dir):
    (model_dir / "bad@1.onnx").write_bytes(models.add_mul())


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_corrupt_sidecar, "not valid JSON"), (_sidecar_not_an_object, "not a JSON object"), (_model_file_missing, "missing"),
     (_model_file_not_a_model, "not an ONNX model"), (_sha256_mismatch, "sha256")],
    ids=["corrupt-sidecar", "sidecar-not-an-object", "onnx-missing", "onnx-not-a-model", "sha256-mismatch"],
)
def test_a_damaged_model_is_skipped_and_the_others_load(model_dir, damage, reason):
    writer = Registry(ModelStore(model_dir), 1)
    publish(writer, "ok", models.identity())
    publish(writer, "bad", models.identity())
    damage(model_dir)
    fresh = Registry(ModelStore(model_dir), 1)
    assert [m.id for m in fresh.models()] == ["ok"]
    with pytest.raises(ModelNotFound):
        fresh.get("bad")
    assert fresh.get("ok").id == "ok"
    rows = {row["name"]: row for row in fresh.index()}
    assert rows["ok"]["state"] == "READY"
    assert rows["bad"]["state"] == "UNAVAILABLE" and reason in rows["bad"]["reason"]


def test_bad_files_without_a_writer_are_skipped_and_the_rest_load(model_dir):
    good = Registry(ModelStore(model_dir), 1)
    publish(good, "ok", models.identity())
    (model_dir / "garbled.model_info.json").write_text("{")
    (model_dir / "garbled.onnx").write_bytes(models.identity())
    (model_dir / "lonely.model_info.json").write_text('{"id": "lonely"}')
    (model_dir / "junk.model_info.json").write_text('{"id": "junk"}')
    (model_dir / "junk.onnx").write_bytes(b"not a model")
    fresh = Registry(ModelStore(model_dir), 1)
    assert [m.id for m in fresh.models()] == ["ok"]
    reasons = {row["name"]: row.get("reason", "") for row in fresh.index()}
    assert "JSON" in reasons["garbled"] and "missing" in reasons["lonely"] and "not" in reasons["junk"]


def test_a_damaged_model_that_is_repaired_loads_again(model_dir):
    writer = Registry(ModelStore(model_dir), 1)
    publish(writer, "m", models.identity())
    reader = Registry(ModelStore(model_dir), 1)
    good = (model_dir / "m@1.onnx").read_bytes()
    (model_dir / "m@1.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelNotFound):
        reader.get("m")
    (model_dir / "m@1.onnx").write_bytes(good)
    assert reader.get("m").id == "m"


def test_sessions_made_before_a_fork_are_not_used_after_it(workers, monkeypatch):
    a, _ = workers
    publish(a, "m", models.identity())
    before = a.get("m")
    monkeypatch.setattr(os, "getpid", lambda: -1)  # what a forked child sees
    after = a.get("m")
    assert after is not before and after.runtime is not before.runtime


def test_right_after_a_change_a_request_checks_only_its_own_model(workers, monkeypatch):
    a, b = workers
    publish(a, "m", models.identity())
    b.get("m")  # loaded, and the directory changed less than RACY_NS ago
    scans = []
    monkeypatch.setattr(b.store, "scan", lambda: scans.append(1) or [])
    for _ in range(5):
        b.get("m")
    assert scans == []


def test_an_unload_within_one_timestamp_tick_is_seen(workers):
    a, b = workers
    publish(a, "m", models.identity())
    b.get("m")
    stamp = b.store.dir_stamp()
    a.set_loaded("m", False)
    os.utime(b.store.directory, ns=(stamp[1], stamp[1]))
    with pytest.raises(ModelNotFound, match="unloaded"):
        b.get("m")


# -- limits and the loader thread ---------------------------------------------------------------


def test_a_sidecar_without_a_load_check_is_measured_once_and_recorded(model_dir):
    writer = Registry(ModelStore(model_dir), 1)
    publish(writer, "m", models.identity())
    sidecar = json.loads((model_dir / "m@1.model_info.json").read_text())
    assert sidecar["load_check"]["sha256"] == sidecar["sha256"]
    del sidecar["load_check"]  # as an older release wrote it
    (model_dir / "m@1.model_info.json").write_text(json.dumps(sidecar))
    reader = Registry(ModelStore(model_dir), 1)
    assert reader.get("m").load_check["peak_mb"] >= 0
    rewritten = json.loads((model_dir / "m@1.model_info.json").read_text())
    assert rewritten["load_check"]["sha256"] == sidecar["sha256"]
    assert {k: v for k, v in rewritten.items() if k != "load_check"} == sidecar  # nothing else changed


def test_a_model_over_the_limits_is_not_served_and_says_why(model_dir):
    publish(Registry(ModelStore(model_dir), 1), "m", models.identity())
    sidecar = json.loads((model_dir / "m@1.model_info.json").read_text())
    sidecar["load_check"]["peak_mb"] = 900.0
    (model_dir / "m@1.model_info.json").write_text(json.dumps(sidecar))
    strict = Registry(ModelStore(model_dir), 1, limits=with_overrides(Settings(), {"max_model_memory_mb": 512}).limits)
    with pytest.raises(ModelNotFound, match="needs 900 MB of memory; the limit is 512 MB") as info:
        strict.get("m")
    assert info.value.code == "model_unavailable"
    assert strict.index()[0]["state"] == "UNAVAILABLE"
    assert Registry(ModelStore(model_dir), 1).get("m").id == "m"  # under the default 2048 MB it is served


def test_the_loader_thread_never_makes_one_model_wait_for_another(model_dir, monkeypatch):
    writer = Registry(ModelStore(model_dir), 1)
    publish(writer, "fast", models.identity())
    publish(writer, "slow", models.identity())
    # Its serving form is already optimized, so no real model is slow to open in a worker: this one takes 2 s.
    real = registry_module.Runtime

    def opened(data, threads, limits=None, *, serving=None):
        if serving is not None and "slow@" in serving:
            time.sleep(2)
        return real(data, threads, limits, serving=serving)

    monkeypatch.setattr(registry_module, "Runtime", opened)
    worker = Registry(ModelStore(model_dir), 1, load_wait_s=0.2)
    worker.start()
    started = time.monotonic()
    worker.get("fast")  # may wait for its own load, never for "slow"
    with pytest.raises(ModelLoading) as info:
        worker.get("slow")
    assert time.monotonic() - started < 1.5
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    model, deadline = None, time.monotonic() + 30
    while model is None and time.monotonic() < deadline:
        try:
            model = worker.get("slow")
        except ModelLoading:
            time.sleep(0.1)
    assert model is not None and model.id == "slow"


def test_a_missing_directory_is_a_fast_503_on_every_path(model_dir, tmp_path):
    worker = Registry(ModelStore(model_dir), 1)
    publish(worker, "m", models.identity())
    model_dir.rename(tmp_path / "elsewhere")
    started = time.monotonic()
    for call in (lambda: worker.get("m"), worker.models, worker.store.new_pending, lambda: worker.delete("m")):
        with pytest.raises(StorageUnavailable):
            call()
    assert time.monotonic() - started < 1


def test_a_sidecar_without_a_sha256_is_not_trusted(model_dir):
    publish(Registry(ModelStore(model_dir), 1), "m", models.identity())
    sidecar = json.loads((model_dir / "m@1.model_info.json").read_text())
    del sidecar["sha256"]
    (model_dir / "m@1.model_info.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelNotFound, match="does not name the model's sha256"):
        Registry(ModelStore(model_dir), 1).get("m")
