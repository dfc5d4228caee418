"""The model directory: ids, claims, atomic publish, removal and crash leftovers."""

from __future__ import annotations

import re

import pytest

from nexus.errors import BadInput, ModelBusy
from nexus.onnx_scan import ProtobufError, uses_external_data
from nexus.store import ID_PATTERN, RESERVED_IDS, ModelStore, check_id, check_version, split_key, version_key
from tests import models
from tests.conftest import files_in


@pytest.fixture
def store(model_dir) -> ModelStore:
    return ModelStore(model_dir)


@pytest.mark.parametrize("model_id", ["iris", "a.b-c_1", "A", "0", "-dash", "x" * 64])
def test_valid_ids(model_id):
    assert check_id(model_id) == model_id


@pytest.mark.parametrize("model_id", ["", ".hidden", "..", "../x", "a/b", "a b", "x" * 65, "ünï", "a\x00b", None, 7])
def test_invalid_ids_raise_bad_input(model_id):
    with pytest.raises(BadInput):
        check_id(model_id)


@pytest.mark.parametrize("model_id", sorted(RESERVED_IDS))
def test_reserved_ids_raise_bad_input_naming_the_route(model_id):
    with pytest.raises(BadInput, match=f"id '{model_id}' is reserved: it names the route {RESERVED_IDS[model_id]}"):
        check_id(model_id)


def test_reserved_ids_are_the_fixed_routes_where_a_model_id_goes(app):
    """A new fixed route /models/<word> or /v2/models/<word> must reserve <word>: no model could be reached there."""
    rules = [rule.rule for rule in app.url_map.iter_rules()]
    fixed = {rule.rsplit("/", 1)[1]: rule for rule in rules if re.fullmatch(r"(/v2)?/models/[^/<]+", rule)}
    assert fixed == RESERVED_IDS


@pytest.mark.parametrize(
    "model_id",
    ["iris", "a.b-c_1", "x" * 64, "information", "Info", "upload.v2", "", ".hidden", "a/b", "x" * 65,
     *sorted(RESERVED_IDS)],
)
def test_the_id_pattern_accepts_what_check_id_accepts(model_id):
    try:
        check_id(model_id)
        accepted = True
    except BadInput:
        accepted = False
    assert (re.fullmatch(ID_PATTERN, model_id) is not None) == accepted


@pytest.mark.parametrize("model_id", sorted(RESERVED_IDS))
def test_a_model_stored_under_a_reserved_id_is_still_read_and_removed(store, model_dir, model_id):
    """Files an older release wrote under an id now reserved keep working: listed, read, claimed, removed."""
    _write_old_layout(model_dir, model_id, models.identity())
    assert [s.model_id for s in store.scan()] == [model_id]
    assert store.read_sidecar(model_id) == {"id": model_id, "version": "1"}
    assert store.read_model(model_id) == models.identity()
    with store.claim(model_id):
        store.remove(model_id, None)
    assert files_in(model_dir) == []


def _write_old_layout(model_dir, model_id: str, data: bytes) -> None:
    """A model as the release before versions wrote it: <id>.onnx and <id>.model_info.json."""
    (model_dir / f"{model_id}.onnx").write_bytes(data)
    (model_dir / f"{model_id}.model_info.json").write_text(f'{{"id": "{model_id}", "version": "1"}}')


def test_a_claim_is_exclusive_and_released(store, model_dir):
    with store.claim("m"):
        assert files_in(model_dir) == [".m.claim"]
        with pytest.raises(ModelBusy), store.claim("m"):
            pass
        with store.claim("other"):  # other ids are independent
            pass
    assert files_in(model_dir) == []
    with store.claim("m"):
        pass


def test_a_claim_excludes_another_store_on_the_same_directory(store, model_dir):
    other_worker = ModelStore(model_dir)
    with store.claim("m"):
        with pytest.raises(ModelBusy, match="model 'm' is being written"), other_worker.claim("m"):
            pass
    with other_worker.claim("m"):
        assert files_in(model_dir) == [".m.claim"]
    assert files_in(model_dir) == []


def test_a_claim_is_released_when_the_work_fails(store, model_dir):
    with pytest.raises(RuntimeError), store.claim("m"):
        raise RuntimeError("upload failed")
    assert files_in(model_dir) == []
    with store.claim("m"):
        pass


def test_a_claim_checks_the_id(store, model_dir):
    with pytest.raises(BadInput), store.claim("../m"):
        pass
    assert files_in(model_dir) == []


ROUTING = {"default": None, "canary": {}, "shadow": {}}


def _publish(store, model_id: str, data: bytes, version: str = "v1"):
    pending = store.new_pending()
    pending.file.write(data)
    with store.claim(model_id):
        store.publish(version_key(model_id, version), pending, {"id": model_id, "version": version}, ROUTING)
    pending.discard()


def test_publish_places_model_then_sidecar_then_routing_and_leaves_no_hidden_file(store, model_dir):
    _publish(store, "m", models.identity())
    assert files_in(model_dir) == ["m.routing.json", "m@v1.model_info.json", "m@v1.onnx"]
    assert store.exists("m@v1") and store.read_model("m@v1") == models.identity()
    assert store.read_sidecar("m@v1") == {"id": "m", "version": "v1"}
    assert store.read_routing("m") == ROUTING
    [stored] = store.scan()
    assert stored.model_id == "m" and [(v.key, v.version) for v in stored.versions] == [("m@v1", "v1")]
    assert store.has_model("m") and not store.has_model("other")


def test_versions_of_one_model_and_a_model_of_the_old_layout_are_listed_together(store, model_dir):
    _publish(store, "m", models.identity(), "v1")
    _publish(store, "m", models.add_mul(), "v2")
    _write_old_layout(model_dir, "old", models.identity())
    found = {s.model_id: [(v.key, v.version) for v in s.versions] for s in store.scan()}
    assert found == {"m": [("m@v1", "v1"), ("m@v2", "v2")], "old": [("old", None)]}
    assert store.has_model("old") and store.read_routing("old") is None


def test_a_sidecar_that_names_another_version_than_its_file_is_refused(store, model_dir):
    _publish(store, "m", models.identity(), "v1")
    (model_dir / "m@v1.model_info.json").write_text('{"id": "m", "version": "v2"}')
    with pytest.raises(ValueError, match="names version 'v2', not 'v1'"):
        store.read_sidecar("m@v1")


@pytest.mark.parametrize("version", ["v1", "1", "v2.0.0-rc.1+build.7", "a_b", "x" * 64])
def test_valid_versions_make_keys_that_split_back(version):
    assert check_version(version) == version
    assert split_key(version_key("m", version)) == ("m", version)


@pytest.mark.parametrize("version", ["", " v1", "v 1", ".v1", "a/b", "a@b", "x" * 65, "é", None, 1])
def test_invalid_versions_are_refused(version):
    with pytest.raises(BadInput, match="invalid version"):
        check_version(version)


def test_a_model_without_its_sidecar_is_not_visible(store, model_dir):
    (model_dir / "half@v1.onnx").write_bytes(models.identity())
    assert not store.exists("half@v1") and store.scan() == []


def test_remove_deletes_the_version_and_rewrites_or_removes_the_routing(store, model_dir):
    _publish(store, "m", models.identity(), "v1")
    _publish(store, "m", models.identity(), "v2")
    _publish(store, "other", models.identity())
    routing_before = store.model_signature("m", ())
    with store.claim("m"):
        store.remove("m@v1", ROUTING)
    assert files_in(model_dir) == ["m.routing.json", "m@v2.model_info.json", "m@v2.onnx",
                                   "other.routing.json", "other@v1.model_info.json", "other@v1.onnx"]
    assert store.model_signature("m", ()) != routing_before  # the routing document was written again
    with store.claim("m"):
        store.remove("m@v2", None)
    assert files_in(model_dir) == ["other.routing.json", "other@v1.model_info.json", "other@v1.onnx"]
    with store.claim("m"):
        store.remove("m@v2", None)  # removing what is gone is harmless


def test_a_discarded_pending_file_is_removed(store, model_dir):
    pending = store.new_pending()
    pending.file.write(b"partial")
    assert len(files_in(model_dir)) == 1
    pending.discard()
    pending.discard()  # twice is harmless
    assert files_in(model_dir) == []


def test_clean_leftovers_removes_only_what_nobody_holds(store, model_dir):
    _publish(store, "kept", models.identity())
    _write_old_layout(model_dir, "old", models.identity())
    (model_dir / ".upload-deadbeef.tmp").write_bytes(b"crashed upload")
    (model_dir / ".gone.claim").write_bytes(b"")
    (model_dir / "orphan.onnx").write_bytes(models.identity())
    (model_dir / "orphan.unloaded").write_bytes(b"")
    (model_dir / "kept@v9.onnx").write_bytes(models.identity())  # a version whose sidecar never came
    (model_dir / "gone.routing.json").write_text("{}")  # a routing document left by a crashed delete
    live = store.new_pending()  # an upload in progress in another worker
    with store.claim("busy"):
        (model_dir / "busy@v1.onnx").write_bytes(b"being published")
        (model_dir / "busy.routing.json").write_text("{}")
        removed = store.clean_leftovers()
        assert set(removed) == {".upload-deadbeef.tmp", ".gone.claim", "orphan.onnx", "orphan.unloaded", "kept@v9.onnx",
                                "gone.routing.json"}
        assert live.path.exists() and (model_dir / "busy@v1.onnx").exists() and (model_dir / ".busy.claim").exists()
    live.discard()
    assert files_in(model_dir) == ["busy.routing.json", "busy@v1.onnx", "kept.routing.json", "kept@v1.model_info.json",
                                   "kept@v1.onnx", "old.model_info.json", "old.onnx"]


def test_scan_signature_changes_when_a_model_is_replaced(store):
    _publish(store, "m", models.identity())
    first = store.signature("m@v1")
    model_first = store.model_signature("m", ("m@v1",))
    with store.claim("m"):
        store.remove("m@v1", None)
    _publish(store, "m", models.add_mul())
    assert store.signature("m@v1") != first
    assert store.model_signature("m", ("m@v1",)) != model_first
    assert store.signature("ghost@v1") is None


def test_read_sidecar_rejects_garbage_and_a_foreign_id(store, model_dir):
    (model_dir / "a.model_info.json").write_text("{nope")
    (model_dir / "b.model_info.json").write_text('{"id": "c"}')
    (model_dir / "d.model_info.json").write_text("[1]")
    for model_id, words in (("a", "not valid JSON"), ("b", "names id"), ("d", "not a JSON object")):
        with pytest.raises(ValueError, match=words):
            store.read_sidecar(model_id)


@pytest.mark.parametrize(
    ("data", "external"),
    [(models.external_data(), True), (models.identity(), False), (models.add_mul(), False), (models.linear()[0], False)],
    ids=["external_data", "identity", "add_mul", "linear"],
)
def test_external_data_scan(data, external):
    assert uses_external_data(data) is external


def test_the_iris_classifier_has_no_external_data(iris_bytes):
    assert uses_external_data(iris_bytes) is False


@pytest.mark.parametrize("garbage", [b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x0f", b"\x3a\x10abc"])
def test_external_data_scan_rejects_malformed_protobuf(garbage):
    with pytest.raises(ProtobufError):
        uses_external_data(garbage)
