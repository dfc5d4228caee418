"""The change log: every write names what it touched, and a worker follows the log instead of reading
the whole directory, so a change costs it work in proportion to the change."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np

from nexus import store as store_module
from nexus.registry import Registry
from nexus.store import CHANGES_FILE, ModelStore
from tests import models
from tests.conftest import wait_for
from tests.test_registry import publish, run


def lines(model_dir) -> list[str]:
    return (model_dir / CHANGES_FILE).read_text().splitlines()


def test_every_write_names_its_model_and_the_versions_it_touched(model_dir):
    writer = Registry(ModelStore(model_dir), 1)
    publish(writer, "m", models.identity())
    assert lines(model_dir) == ["m m@1"]
    writer.set_routing("m", {"default": "1"})
    writer.set_loaded("m", False)
    writer.set_loaded("m", True)
    writer.delete("m")
    assert lines(model_dir) == ["m m@1", "m", "m m@1", "m m@1", "m m@1"]


def test_a_line_still_being_written_is_left_for_the_next_read(model_dir):
    store = ModelStore(model_dir)
    store.ensure()
    (model_dir / CHANGES_FILE).write_bytes(b"a a@1\nb b@")
    mark = store.changes_mark()
    changed, offset = store.read_changes((mark[0], 0), mark[1])
    assert changed == {"a": {"a@1"}} and offset == len(b"a a@1\n")
    with open(model_dir / CHANGES_FILE, "ab") as log:
        log.write(b"2 ../x b@1 c@1\n")  # keys of another model, or no key at all, are not taken
    changed, _ = store.read_changes((mark[0], offset), store.changes_mark()[1])
    assert changed == {"b": {"b@2", "b@1"}}


def test_a_full_log_is_started_anew_and_a_reader_of_the_old_one_is_told(model_dir, monkeypatch):
    store = ModelStore(model_dir)
    store.ensure()
    store._note("a", "a@1")
    before = store.changes_mark()
    monkeypatch.setattr(store_module, "CHANGES_MAX_BYTES", 16)
    store._note("b", "b@1")
    store._note("c", "c@1")
    after = store.changes_mark()
    assert after[0] != before[0]
    assert store.read_changes(before, after[1]) is None
    assert lines(model_dir) == ["c c@1"]
    assert [n for n in os.listdir(model_dir) if n.startswith(".")] == []


def test_concurrent_writers_never_tear_a_line(model_dir):
    store = ModelStore(model_dir)
    store.ensure()

    def write(i: int) -> None:
        for j in range(100):
            store._note(f"m{i}", f"m{i}@{j}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    changed, offset = store.read_changes((store.changes_mark()[0], 0), store.changes_mark()[1])
    assert offset == store.changes_mark()[1]
    assert changed == {f"m{i}": {f"m{i}@{j}" for j in range(100)} for i in range(8)}


def follower(model_dir) -> Registry:
    """A worker with its loader thread (so it follows the log on requests), having read the directory once."""
    registry = Registry(ModelStore(model_dir), 1)
    registry.start()
    return registry


def test_a_worker_follows_one_change_without_reading_the_directory(model_dir, monkeypatch):
    writer = Registry(ModelStore(model_dir), 1)
    for i in range(30):
        publish(writer, f"m{i}", models.identity())
    reader = follower(model_dir)
    assert len(reader.entries()) == 30
    scans, looked = [], []
    monkeypatch.setattr(reader.store, "scan", lambda *a: scans.append(a) or ModelStore.scan(reader.store, *a))
    monkeypatch.setattr(reader.store, "look", lambda model_id, keys: looked.append(model_id) or ModelStore.look(reader.store, model_id, keys))
    signatures = []
    monkeypatch.setattr(reader.store, "signature", lambda key: signatures.append(key) or ModelStore.signature(reader.store, key))

    publish(writer, "new", models.identity())
    assert np.array_equal(run(reader, "new", [[1, 2, 3, 4]]), [[1, 2, 3, 4]])
    writer.delete("m3")
    assert reader.find("m3") is None
    assert scans == [] and looked == ["new", "m3"]
    assert len(signatures) <= 4  # the changed versions, not the 30 others
    assert len(reader.entries()) == 30


def test_a_change_made_without_the_log_is_found_by_the_loader(model_dir):
    writer = Registry(ModelStore(model_dir), 1)
    publish(writer, "a", models.identity())
    reader = follower(model_dir)
    assert reader.find("b") is None
    for name in os.listdir(model_dir):  # a copy by hand: no line in the log
        if name.startswith("a") and not name.startswith("a."):
            shutil.copy(model_dir / name, model_dir / name.replace("a@", "b@", 1))
    (model_dir / "b@1.model_info.json").write_text((model_dir / "b@1.model_info.json").read_text().replace('"id": "a"', '"id": "b"'))
    wait_for(lambda: reader.find("b") is not None, seconds=10)


def test_a_worker_whose_log_was_started_anew_reads_everything_once(model_dir, monkeypatch):
    writer = Registry(ModelStore(model_dir), 1)
    publish(writer, "a", models.identity())
    reader = follower(model_dir)
    assert reader.find("a") is not None
    monkeypatch.setattr(store_module, "CHANGES_MAX_BYTES", 8)
    publish(writer, "b", models.identity())
    writer.delete("a")
    assert reader.find("b") is not None and reader.find("a") is None
