"""The web console in real headless Chromium against the real server under gunicorn."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from urllib.parse import urlparse

import pytest
import requests

from nexus.errors import (
    InferenceMemoryLimit,
    InferenceTimeout,
    ModelLoading,
    ModelTooLarge,
)
from tests import models
from tests.conftest import TOKEN, files_in, with_serving

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.live, pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.live.conftest import demo_server

    started = demo_server(tmp_path_factory, workers=2)
    yield started
    started.stop()


def open_console(browser, server, **options):
    """A new page on the console that records console errors and the URL of every request it makes."""
    context = browser.new_context(**{"viewport": {"width": 1100, "height": 900}, **options})
    tab = context.new_page()
    tab.errors, tab.requests = [], []
    tab.on("console", lambda message: message.type == "error" and tab.errors.append(message.text))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.on("request", lambda r: tab.requests.append(r.url))
    tab.goto(server.url("/"))
    tab.wait_for_selector("#models tbody tr")
    return context, tab


def assert_same_origin(tab, server):
    origin = urlparse(server.url("/")).netloc
    foreign = [url for url in tab.requests if urlparse(url).scheme != "data" and urlparse(url).netloc != origin]
    assert foreign == [], foreign


@pytest.fixture
def page(browser, server, tmp_path, request):
    """A fresh console page; afterwards, a screenshot and a check that nothing left the server."""
    context, tab = open_console(browser, server)
    yield tab
    tab.screenshot(path=str(tmp_path / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert_same_origin(tab, server)


def model_file(tmp_path, data: bytes, name: str = "model.onnx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def upload_through_form(page, path, model_id, name="Browser model", version="v1"):
    page.set_input_files("#upload-file", str(path))
    page.fill("#upload-id", model_id)
    page.fill("#upload-name", name)
    page.fill("#upload-version", version)
    page.click("#upload-submit")


def test_page_loads_offline_with_no_errors_and_shows_the_demo_model(page, server):
    page.wait_for_selector("#status.badge-ready")
    assert "ready" in page.inner_text("#status")
    assert page.inner_text("#models tbody tr:first-child td:first-child") == "iris"
    assert page.inner_text("#version").startswith("server ")
    assert page.inner_text("#models tbody tr[data-id='iris']").split("\t")[1:4] == ["Iris classifier (logistic regression)", "v1.0.0", "678 B"]
    assert_same_origin(page, server)
    assert server.url("/console/console.js") in page.requests and server.url("/health/ready") in page.requests
    assert page.errors == []


def test_the_badge_turns_red_when_the_server_is_not_ready_or_unreachable(page):
    page.wait_for_selector("#status.badge-ready")
    page.route("**/health/ready", lambda route: route.fulfill(
        status=503, content_type="application/json", body='{"error": "model directory is not readable", "code": "not_ready"}'))
    page.click("#refresh")
    page.wait_for_selector("#status.badge-down")
    assert page.inner_text("#status") == "not ready: model directory is not readable"
    page.unroute("**/health/ready")
    page.route("**/health/ready", lambda route: route.abort())
    page.click("#refresh")
    page.wait_for_selector("#status.badge-down:has-text('unreachable')")


def test_upload_open_predict_and_curl(page, server, tmp_path):
    upload_through_form(page, model_file(tmp_path, models.add_mul()), "pair", name="Pair")
    page.wait_for_selector("#models tbody tr[data-id='pair']")
    assert "Uploaded pair" in page.inner_text("#upload-message")
    page.wait_for_selector("#panel:not([hidden])")
    assert page.inner_text("#panel-title") == "Pair (pair)"
    assert page.inner_text("#inputs tbody").count("tensor(float)") == 2
    page.click("#predict")
    page.wait_for_selector("#response:not(:empty)")
    assert "prediction [0,0,0]" in page.inner_text("#response-meta")
    assert '"SUM"' in page.inner_text("#response") and "request " in page.inner_text("#response-meta")
    assert "curl -X POST" in page.input_value("#curl") and "/predict" in page.input_value("#curl")
    assert page.errors == []


def test_the_demo_model_predicts_its_prefilled_example_and_an_edited_one(page):
    page.click("#models tbody tr[data-id='iris']")
    page.wait_for_selector("#panel:not([hidden])")
    assert json.loads(page.input_value("#request")) == {"model_id": "iris", "inputs": {"input": [[0, 0, 0, 0]]}}
    assert [row.split("\t") for row in page.inner_text("#inputs tbody").splitlines()] == [["input", "tensor(float)", "[-1, 4]"]]
    page.click("#predict")
    page.wait_for_selector("#response:not(:empty)")
    assert json.loads(page.inner_text("#response"))["outputs"]["output_label"] == [json.loads(page.inner_text("#response-meta").split(" ")[1])[0]]
    page.fill("#request", '{"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]}')
    assert '"features": [5.1, 3.5, 1.4, 0.2]' in page.input_value("#curl")  # the curl command follows the edit
    page.click("#predict")
    page.wait_for_selector("#response-meta:has-text('prediction [0] ')")
    page.fill("#request", '{"model_id": "iris", "features": [1, 2, 3]}')
    page.click("#predict")
    page.wait_for_selector("#response-meta.error")
    assert "400 Bad Request: input 'input': shape [1, 4] needs 4 values, got 3" in page.inner_text("#response-meta")
    page.fill("#request", '{"model_id": "iris", ')
    page.click("#predict")
    assert "not valid JSON" in page.inner_text("#response-meta")


def test_refusals_are_shown_in_words(page, server, tmp_path):
    upload_through_form(page, model_file(tmp_path, models.identity()), "iris", version="v1.0.0")  # a version it has
    page.wait_for_selector("#upload-message.error")
    assert page.inner_text("#upload-message").startswith("Refused: 409 Conflict: model 'iris' already has version 'v1.0.0'")
    upload_through_form(page, model_file(tmp_path, b"not a model", "notes.onnx"), "notes")
    page.wait_for_selector("#upload-message:has-text('400')")
    assert page.inner_text("#upload-message").startswith("Refused: 400 Bad Request: ")
    assert "not an ONNX model" in page.inner_text("#upload-message")
    assert "notes.onnx" not in files_in(server.model_dir) and "notes.model_info.json" not in files_in(server.model_dir)


def test_delete_asks_first_then_removes_the_model(page, server, tmp_path):
    upload_through_form(page, model_file(tmp_path, models.identity()), "temporary")
    page.wait_for_selector("#panel:not([hidden])")
    page.click("#delete")
    page.click("#confirm-delete button[value=cancel]")
    assert page.is_visible("#models tbody tr[data-id='temporary']")
    page.click("#delete")
    page.click("#confirm-yes")
    page.wait_for_selector("#models tbody tr[data-id='temporary']", state="detached")
    assert [f for f in files_in(server.model_dir) if f.startswith("temporary")] == with_serving([])
    assert page.is_hidden("#panel")


def test_phone_width_and_keyboard(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    page = context.new_page()
    page.goto(server.url("/"))
    page.wait_for_selector("#models tbody tr")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing overflows sideways
    page.focus("#models tbody tr[data-id='iris']")
    page.keyboard.press("Enter")
    page.wait_for_selector("#panel:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "predict"
    page.keyboard.press("Enter")
    page.wait_for_selector("#response:not(:empty)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # still, with the panel and a response
    labelled = page.evaluate("[...document.querySelectorAll('input, textarea')].every(e => e.labels && e.labels.length > 0)")
    assert labelled
    page.screenshot(path=str(tmp_path / "phone-dark.png"), full_page=True)
    context.close()


def test_a_server_with_a_token(browser, tmp_path):
    """With NEXUS_API_TOKEN set, a 401 asks for the token; with it, upload and delete work and it stays entered."""
    from tests.live.server import LiveServer, seed_demo_model

    seed_demo_model(tmp_path / "models")
    with LiveServer(tmp_path / "models", tmp_path / "logs", workers=1, env={"NEXUS_API_TOKEN": TOKEN}) as server:
        context, page = open_console(browser, server)
        path = model_file(tmp_path, models.identity())
        upload_through_form(page, path, "guarded")
        page.wait_for_selector("#upload-message.error")
        assert "401" in page.inner_text("#upload-message") and "enter the server's API token" in page.inner_text("#upload-message")
        assert page.evaluate("document.activeElement.id") == "token"
        page.fill("#token", "wrong")
        upload_through_form(page, path, "guarded")
        page.wait_for_selector("#upload-message:has-text('is not the server')")
        page.fill("#token", TOKEN)
        upload_through_form(page, path, "guarded")
        page.wait_for_selector("#models tbody tr[data-id='guarded']")
        page.wait_for_selector("#panel:not([hidden])")
        assert page.input_value("#token") == TOKEN  # still there for the next upload or delete
        assert page.input_value("#upload-id") == ""
        assert "$NEXUS_API_TOKEN" in page.input_value("#curl") and TOKEN not in page.input_value("#curl")
        upload_through_form(page, path, "guarded", version="v2")  # a new version of it, with the token
        page.wait_for_selector("#versions tbody tr[data-version='v2']")
        page.fill("#token", "wrong")  # the routing and a version's deletion need the token too
        page.select_option("#routing-default", "v1")
        page.click("#routing-submit")
        page.wait_for_selector("#routing-message:has-text('Refused: 401 Unauthorized')")
        page.click("#versions tbody tr[data-version='v1'] button")
        page.click("#confirm-version-yes")
        page.wait_for_selector("#versions-message:has-text('Delete refused: 401 Unauthorized')")
        page.click("#delete")
        page.click("#confirm-yes")
        page.wait_for_selector("#response-meta:has-text('Delete refused: 401 Unauthorized')")
        page.click("#delete")
        page.keyboard.press("Escape")  # no: Escape after a refused "Delete" must not delete
        page.wait_for_selector("#confirm-delete", state="hidden")
        page.click("#refresh")
        page.wait_for_selector("#models tbody tr[data-id='guarded']")
        assert "guarded@v1.onnx" in files_in(server.model_dir)
        page.fill("#token", TOKEN)
        page.click("#delete")
        page.click("#confirm-yes")
        page.wait_for_selector("#models tbody tr[data-id='guarded']", state="detached")
        assert [f for f in files_in(server.model_dir) if f.startswith("guarded")] == with_serving([])
        page.screenshot(path=str(tmp_path / "token.png"), full_page=True)
        context.close()
        assert_same_origin(page, server)


# The console defects, one test each.

def upload_through_api(server, data: bytes, model_id: str, name: str = "API model", version: str = "v1"):
    response = requests.post(server.url("/models/upload"), files={"file": (f"{model_id}.onnx", data)},
                             data={"id": model_id, "name": name, "version": version}, timeout=60)
    assert response.status_code == 201, response.text


def script_errors(page):
    """The page's errors, less Chromium's note on each refused request (which these tests make on purpose)."""
    return [e for e in page.errors if not e.startswith("Failed to load resource: the server responded with a status of")]


def open_model(page, model_id):
    page.click("#refresh")
    page.click(f"#models tbody tr[data-id='{model_id}']")
    page.wait_for_selector(f"#panel:not([hidden]) #panel-title:has-text('({model_id})')")
    # and until this opening has finished (it ends by focusing Predict): when the panel already showed the model,
    # the title is there before this opening reads the sections again (a section opened now would be read twice)
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'predict'")


def test_a_hint_says_what_a_row_does_and_space_opens_a_row_too(page):
    hint = page.locator("#models-hint")
    assert hint.is_visible()
    assert "Click" in hint.inner_text() and "Enter" in hint.inner_text() and "predict" in hint.inner_text()
    assert page.get_attribute("#models tbody tr[data-id='iris']", "aria-describedby") == "models-hint"
    page.focus("#models tbody tr[data-id='iris']")
    page.keyboard.press("Space")
    page.wait_for_selector("#panel:not([hidden])")
    assert page.inner_text("#panel-title").endswith("(iris)")
    assert page.evaluate("document.activeElement.id") == "predict"
    assert script_errors(page) == []


def test_at_phone_width_no_card_or_table_scrolls_sideways(browser, server):
    for version in ("v2.0.0-rc.1+build.20261125", "v2.0.0-rc.2+build.20261126"):  # two: the versions table and the routing form
        upload_through_api(server, models.identity(shape=(None, 4), name="a_rather_long_input_name_without_spaces_at_all"),
                           "zz_a_model_with_a_rather_long_identifier_that_has_no_spaces.v2", version=version)
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(server.url("/"))
    page.wait_for_selector("#models tbody tr[data-id='iris']")
    overflowing = """() => [...document.querySelectorAll('.card, .scroll, .table, .tables > div')]
        .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth)
        .map(e => `${e.id || e.className}: ${e.scrollWidth} > ${e.clientWidth}`)"""
    for model_id in ("iris", "zz_a_model_with_a_rather_long_identifier_that_has_no_spaces.v2"):
        open_model(page, model_id)
        page.wait_for_selector("#versions tbody tr")
        assert page.evaluate(overflowing) == [], model_id
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    open_model(page, "iris")
    # the outputs keep their type column, whole and inside the card
    type_cell, panel = page.locator("#outputs tbody tr:nth-child(2) td:nth-child(2)"), page.locator("#panel").bounding_box()
    assert type_cell.is_visible() and type_cell.inner_text() == "seq(map(int64,tensor(float)))"
    assert type_cell.bounding_box()["x"] + type_cell.bounding_box()["width"] <= panel["x"] + panel["width"]
    assert page.locator("#models tbody tr[data-id='iris'] td:nth-child(3)").is_visible()  # id, name and version stay
    context.close()


def test_a_scalar_input_is_prefilled_as_the_server_accepts_it(page, server):
    upload_through_api(server, models.identity(shape=()), "scalar")
    open_model(page, "scalar")
    assert page.inner_text("#inputs tbody").split("\t") == ["X", "tensor(float)", "[]"]
    assert json.loads(page.input_value("#request")) == {"model_id": "scalar", "inputs": {"X": [0]}}
    page.click("#predict")
    page.wait_for_selector("#response:not(:empty)")
    assert page.get_attribute("#response-meta", "class") != "error", page.inner_text("#response-meta")
    assert json.loads(page.inner_text("#response"))["outputs"] == {"Y": 0}
    assert script_errors(page) == []


def test_the_prefill_follows_each_declared_shape_up_to_its_cap(page):
    cases = [  # shape, type, the value prefilled (None: not prefilled, a note instead)
        ([], "tensor(float)", [0]), ([], "tensor(string)", [""]), ([], "tensor(bool)", [False]),
        ([-1, 4], "tensor(float)", [[0, 0, 0, 0]]), ([3], "tensor(int64)", [0, 0, 0]), ([0, 4], "tensor(float)", []),
        ([-1, -1, 2], "tensor(float)", [[[0, 0]]]), ([10, 100], "tensor(float)", [[0] * 100] * 10),
        ([-1, 1001], "tensor(float)", None), ([100000, 100000], "tensor(float)", None),
    ]
    for shape, kind, expected in cases:
        model = {"id": "m", "inputs": [{"name": "x", "type": kind, "shape": shape}]}
        example = page.evaluate("model => exampleRequest(model)", model)
        assert example["request"]["inputs"]["x"] == ([] if expected is None else expected), shape
        assert (example["notes"] != []) == (expected is None), shape


def test_a_huge_declared_input_gets_a_note_not_an_example(page, server):
    upload_through_api(server, models.identity(shape=(100000, 100000)), "huge")
    page.click("#refresh")
    page.click("#models tbody tr[data-id='huge']")
    page.wait_for_selector("#request-note:not([hidden])", timeout=10000)
    assert page.evaluate("1 + 1") == 2  # the tab still answers
    note = page.inner_text("#request-note")
    assert "X [100000, 100000]" in note and "10,000,000,000 values" in note and "1,000" in note
    assert json.loads(page.input_value("#request")) == {"model_id": "huge", "inputs": {"X": []}}
    page.fill("#request", '{"model_id": "huge", "features": [1, 2]}')  # the user's to edit; the server says what it needs
    assert '"features": [1, 2]' in page.input_value("#curl")
    page.click("#predict")
    page.wait_for_selector("#response-meta.error")
    assert page.inner_text("#response-meta").startswith("400 Bad Request: input 'X': shape [100000, 100000] needs")
    page.click("#models tbody tr[data-id='iris']")
    page.wait_for_selector("#request-note", state="hidden")
    assert script_errors(page) == []


def test_a_new_action_clears_what_earlier_ones_said(page, tmp_path):
    # a failed upload, then a successful prediction
    upload_through_form(page, model_file(tmp_path, b"not a model", "notes.onnx"), "notes")
    page.wait_for_selector("#upload-message.error")
    page.click("#models tbody tr[data-id='iris']")
    page.wait_for_selector("#panel:not([hidden])")
    page.click("#predict")
    page.wait_for_selector("#response:not(:empty)")
    assert page.inner_text("#upload-message") == ""
    # a refused prediction, then a refused upload: only the upload's refusal is left
    page.fill("#request", '{"model_id": "iris", "features": [1, 2, 3]}')
    page.click("#predict")
    page.wait_for_selector("#response-meta.error")
    upload_through_form(page, model_file(tmp_path, models.identity()), "iris", version="v1.0.0")
    page.wait_for_selector("#upload-message.error")
    assert "409 Conflict" in page.inner_text("#upload-message")
    assert page.inner_text("#response-meta") == "" and not page.is_visible("#response-meta.error")
    # a model that could not be opened, then a prediction
    page.route("**/models/iris", lambda route: route.fulfill(
        status=404, content_type="application/json", body='{"error": "model \'iris\' is not registered", "code": "model_not_found"}'))
    page.click("#models tbody tr[data-id='iris']")
    page.wait_for_selector("#models-error:not([hidden])")
    assert page.inner_text("#upload-message") == ""
    page.unroute("**/models/iris")
    page.fill("#request", '{"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]}')
    page.click("#predict")
    page.wait_for_selector("#response-meta:has-text('prediction [0] ')")
    assert page.is_hidden("#models-error")
    # a refused upload, then a new upload: "Uploading…", then its own answer
    upload_through_form(page, model_file(tmp_path, models.identity()), "iris", version="v1.0.0")
    page.wait_for_selector("#upload-message.error")
    upload_through_form(page, model_file(tmp_path, models.identity()), "fresh")
    page.wait_for_selector("#upload-message:has-text('Uploaded fresh')")
    assert "409" not in page.inner_text("#upload-message")
    assert script_errors(page) == []


def test_no_empty_box_is_shown(page):
    page.click("#models tbody tr[data-id='iris']")
    page.wait_for_selector("#panel:not([hidden])")
    assert page.is_hidden("#response") and page.is_hidden("#request-note")  # nothing predicted yet
    page.click("#predict")
    page.wait_for_selector("#response:not(:empty)")
    assert page.is_visible("#response")
    page.fill("#request", '{"model_id": "iris", "features": [1]}')
    page.click("#predict")
    page.wait_for_selector("#response-meta.error")
    assert page.is_hidden("#response")  # the error alone, no grey box under it
    assert page.evaluate("[...document.querySelectorAll('.card pre, .card .note')].filter(e => e.offsetParent && !e.textContent.trim()).length") == 0


def test_limits_timeouts_and_loading_are_said_in_words(page, tmp_path):
    """422 over a limit, 504 a run stopped at the timeout, 503 with Retry-After: as the server sends them, and via a proxy."""
    def answer(error=None, status=None, headers=None, body=None):
        def handle(route):
            route.fulfill(status=status or error.status, headers={"X-Request-ID": "r-1", **(error.headers if error else {}), **(headers or {})},
                          content_type="application/json" if error else "text/html",
                          body=json.dumps({"error": error.message, "code": error.code, "request_id": "r"}) if error else body)
        return handle

    page.click("#models tbody tr[data-id='iris']")
    page.wait_for_selector("#panel:not([hidden])")
    expected = [
        (answer(InferenceMemoryLimit(64)), "422 Over a Limit: the model needed more working memory for this request than the limit of 64 MB"),
        (answer(InferenceTimeout(30)), "504 Timed Out: the model ran longer than the limit of 30 s (NEXUS_INFERENCE_TIMEOUT_S) and was stopped"),
        (answer(ModelLoading("iris", 2)), "503 Not Ready: model 'iris' is still loading in this worker; retry in 2 s (request r-1)"),
        (answer(status=503, headers={"Retry-After": "5"}, body="<html>busy</html>"), "503 Not Ready: the answer carried no JSON error (try again in 5 s) (request r-1)"),
        (answer(status=504, body="<html>gateway timeout</html>"), "504 Timed Out: the answer carried no JSON error (request r-1)"),
    ]
    for handler, words in expected:
        page.route("**/predict", handler)
        page.click("#predict")
        page.wait_for_selector("#response-meta.error")
        assert page.inner_text("#response-meta").startswith(words), page.inner_text("#response-meta")
        page.unroute("**/predict")
    page.route("**/models/upload", answer(ModelTooLarge("loading this model needs more than 8 MB of memory; the limit is 8 MB (NEXUS_MAX_MODEL_MEMORY_MB)")))
    upload_through_form(page, model_file(tmp_path, models.identity()), "big")
    page.wait_for_selector("#upload-message.error")
    assert page.inner_text("#upload-message").startswith("Refused: 422 Over a Limit: loading this model needs more than 8 MB")


def test_the_id_field_takes_its_rule_from_the_servers_document_reserved_ids_included(page):
    # polled from here: a string predicate of wait_for_function is eval'd in the page, which its policy forbids
    playwright_api.expect(page.locator("#upload-id")).to_have_attribute("pattern", re.compile(".+"))
    for value, valid in (("my_model-1.v2", True), ("info", False), ("upload", False), ("stats", False),
                         (".hidden", False), ("a/b", False), ("statistics", True)):
        page.fill("#upload-id", value)
        assert page.eval_on_selector("#upload-id", "el => el.checkValidity()") is valid, value
    playwright_api.expect(page.locator("#upload-version")).to_have_attribute("pattern", re.compile(".+"))
    for value, valid in (("v2", True), ("2.0.0-rc.1+build.5", True), ("v1_final", True), (".v2", False), ("v 2", False),
                         ("v2/3", False), ("x" * 64, True)):
        page.fill("#upload-version", value)
        assert page.eval_on_selector("#upload-version", "el => el.checkValidity()") is valid, value
    assert script_errors(page) == []


# Model versions: the versions table, the routing form, a pinned prediction and a version's deletion.

def version_rows(page):
    """The versions table as {version: [state, traffic, shadow]}, "default" appended for the default version."""
    rows = page.eval_on_selector_all("#versions tbody tr", """rows => rows.map(r => [r.dataset.version,
        r.cells[0].querySelector('.tag') ? 'default' : '', ...[...r.cells].slice(1, 4).map(c => c.innerText)])""")
    return {version: [*cells, *([tag] if tag else [])] for version, tag, *cells in rows}


def test_versions_routing_a_pinned_prediction_and_deleting_a_version(page, server, tmp_path):
    (first, _, first_bias), (second, _, second_bias) = models.linear(seed=1), models.linear(seed=2)
    upload_through_api(server, first, "duo", name="Duo", version="v1")
    upload_through_api(server, second, "duo", name="Duo", version="v2")
    open_model(page, "duo")
    page.wait_for_selector("#versions tbody tr[data-version='v2']")
    # both versions, oldest first; the newest answers everything while no routing is set
    assert page.eval_on_selector_all("#versions tbody tr", "rows => rows.map(r => r.dataset.version)") == ["v1", "v2"]
    page.wait_for_selector("#versions tbody td.state:not(.state-ready)", state="detached")  # a version still loading: looked at again
    assert version_rows(page) == {"v1": ["READY", "0%", "0%"], "v2": ["READY", "100%", "0%", "default"]}
    assert page.inner_text("#models tbody tr[data-id='duo'] td:nth-child(3)") == "v2 (2 versions)"
    assert page.input_value("#routing-default") == "" and page.is_disabled("#routing-weights tr[data-version='v2'] input[data-kind='canary']")

    # a routing the server refuses: its words, and the routing left as it was
    page.select_option("#routing-default", "v1")
    assert page.is_enabled("#routing-weights tr[data-version='v2'] input[data-kind='canary']")
    assert page.is_disabled("#routing-weights tr[data-version='v1'] input[data-kind='canary']")
    page.fill("#routing-weights tr[data-version='v2'] input[data-kind='canary']", "150")
    page.click("#routing-submit")
    page.wait_for_selector("#routing-message.error")
    assert page.inner_text("#routing-message") == (
        "Refused: 400 Bad Request: routing's canary weight of version 'v2' must be a number from 0 to 100 (percent), got 150")
    assert requests.get(server.url("/models/duo/routing"), timeout=10).json()["routing"] == {"default": None, "canary": {}, "shadow": {}}

    # a canary: v1 the default with 90 %, v2 10 %, and a shadow copy of half the routed requests to v2
    page.fill("#routing-weights tr[data-version='v2'] input[data-kind='canary']", "10")
    page.fill("#routing-weights tr[data-version='v2'] input[data-kind='shadow']", "50")
    page.click("#routing-submit")
    page.wait_for_selector("#routing-message.ok")
    assert page.inner_text("#routing-message") == "Routing saved: v1 90%, v2 10% of the traffic; shadow v2 50%."
    routing = requests.get(server.url("/models/duo/routing"), timeout=10).json()
    assert routing["routing"] == {"default": "v1", "canary": {"v2": 10}, "shadow": {"v2": 50}}
    assert routing["default"] == "v1" and routing["traffic"] == {"v1": 90.0, "v2": 10.0} and routing["shadow"] == {"v2": 50.0}
    page.wait_for_selector("#versions tr[data-version='v1'] .tag")
    assert version_rows(page) == {"v1": ["READY", "90%", "0%", "default"], "v2": ["READY", "10%", "50%"]}
    page.wait_for_selector("#models tbody tr[data-id='duo'] td:nth-child(3):has-text('v1 (2 versions)')")

    # a prediction pinned to v2: the request says so, and the answer names v2 and is v2's (Y = b with X = 0)
    page.select_option("#predict-version", "v2")
    assert json.loads(page.input_value("#request")) == {"model_id": "duo", "inputs": {"X": [[0, 0, 0, 0]]}, "version": "v2"}
    assert '"version": "v2"' in page.input_value("#curl")
    page.click("#predict")
    page.wait_for_selector("#response:not(:empty)")
    assert " · version v2 (pinned) · " in page.inner_text("#response-meta")
    answer = json.loads(page.inner_text("#response"))
    assert answer["model_version"] == "v2"
    assert answer["outputs"]["Y"][0] == pytest.approx(second_bias.tolist(), rel=1e-5)
    page.select_option("#predict-version", "v1")
    page.click("#predict")
    page.wait_for_selector("#response-meta:has-text('version v1 (pinned)')")
    assert json.loads(page.inner_text("#response"))["outputs"]["Y"][0] == pytest.approx(first_bias.tolist(), rel=1e-5)
    page.select_option("#predict-version", "")  # routed again: the request no longer pins
    assert "version" not in json.loads(page.input_value("#request"))
    page.click("#predict")
    page.wait_for_selector("#response-meta:has-text('(routed)')")
    assert json.loads(page.inner_text("#response"))["model_version"] in ("v1", "v2")

    # the default cannot be deleted: the server's 409 in words, both versions still there
    page.click("#versions tbody tr[data-version='v1'] button")
    assert page.inner_text("#confirm-version") == "v1" and page.inner_text("#confirm-version-model") == "duo"
    page.click("#confirm-version-yes")
    page.wait_for_selector("#versions-message.error")
    assert page.inner_text("#versions-message") == ("Delete refused: 409 Conflict: version 'v1' of model 'duo' gets traffic as the default; "
                                                     "move it away first with PUT /models/duo/routing")
    assert {"duo@v1.onnx", "duo@v2.onnx"} <= set(files_in(server.model_dir))
    # nor v2 while it has a canary share and a shadow; move them away (blank and 0 both mean none), then it goes
    page.fill("#routing-weights tr[data-version='v2'] input[data-kind='canary']", "")
    page.fill("#routing-weights tr[data-version='v2'] input[data-kind='shadow']", "0")
    page.click("#routing-submit")
    page.wait_for_selector("#routing-message.ok")
    assert requests.get(server.url("/models/duo/routing"), timeout=10).json()["routing"] == {"default": "v1", "canary": {}, "shadow": {}}
    page.wait_for_selector("#versions tr[data-version='v1'] td:nth-child(3):text-is('100%')")
    page.click("#versions tbody tr[data-version='v2'] button")
    page.click("#confirm-version-delete button[value=cancel]")  # no: nothing happens
    assert page.is_visible("#versions tbody tr[data-version='v2']") and page.inner_text("#versions-message") == ""
    page.click("#versions tbody tr[data-version='v2'] button")
    page.click("#confirm-version-yes")
    page.wait_for_selector("#versions tbody tr[data-version='v2']", state="detached")
    assert page.inner_text("#versions-message") == "Deleted version v2 of duo."
    assert version_rows(page) == {"v1": ["READY", "100%", "0%", "default"]}
    assert page.is_hidden("#routing") and page.is_visible("#routing-single")
    assert page.input_value("#predict-version") == "" and "version" not in json.loads(page.input_value("#request"))
    assert [f for f in files_in(server.model_dir) if f.startswith("duo")] == with_serving(["duo.routing.json", "duo@v1.model_info.json", "duo@v1.onnx"])
    assert requests.get(server.url("/models/duo/versions"), timeout=10).json()["default"] == "v1"

    # a new version of the same id through the upload form: accepted, and the routing (v1 the default) gives it nothing yet
    page.click("#new-version")
    assert page.input_value("#upload-id") == "duo" and page.input_value("#upload-name") == "Duo"
    page.set_input_files("#upload-file", str(model_file(tmp_path, second)))
    page.fill("#upload-version", "v3")
    page.click("#upload-submit")
    page.wait_for_selector("#upload-message:has-text('no traffic yet')")
    assert page.inner_text("#upload-message").startswith("Uploaded duo (Duo v3). duo has 2 versions now")
    page.wait_for_selector("#versions tbody tr[data-version='v3']")
    assert version_rows(page)["v3"][1:] == ["0%", "0%"]
    assert script_errors(page) == []


def test_user_strings_in_the_versions_are_text_never_markup(page, server):
    """A model's name is the user's string: shown as typed in the panel, the table and the messages, never as HTML."""
    name = "<img src=x onerror=alert(1)><b>bold</b>"
    upload_through_api(server, models.identity(), "markup", name=name, version="v1")
    upload_through_api(server, models.identity(), "markup", name=name, version="v2")
    open_model(page, "markup")
    page.wait_for_selector("#versions tbody tr[data-version='v2']")
    assert page.inner_text("#panel-title") == f"{name} (markup)"
    assert page.inner_text("#models tbody tr[data-id='markup'] td:nth-child(2)") == name
    page.click("#new-version")
    assert page.input_value("#upload-name") == name
    assert page.eval_on_selector_all("img, b", "e => e.length") == 0
    assert script_errors(page) == []


def test_a_version_still_loading_is_looked_at_again_until_ready(page, server):
    """The worker that lists the versions may still be loading one just uploaded: the state follows without a click."""
    real = requests.get(server.url("/models/iris/versions"), timeout=10).json()
    loading = {**real, "versions": [{"id": "iris", "version": v["version"], "state": "LOADING", "reason": "loading",
                                     "traffic_percent": v["traffic_percent"], "shadow_percent": v["shadow_percent"]}
                                    for v in real["versions"]]}
    page.route("**/models/iris/versions", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(loading)))
    open_model(page, "iris")
    page.wait_for_selector("#versions tbody tr[data-version='v1.0.0'] td.state-loading")
    assert page.inner_text("#versions tbody tr[data-version='v1.0.0'] td:nth-child(2)") == "LOADING (loading)"
    page.unroute("**/models/iris/versions")
    page.wait_for_selector("#versions tbody tr[data-version='v1.0.0'] td.state-ready", timeout=5000)
    assert page.inner_text("#versions tbody tr[data-version='v1.0.0'] td:nth-child(5)").endswith("UTC")
    assert script_errors(page) == []


# Monitoring: the panel drawn from GET /models/<id>/monitoring (stubbed here: a rendering test; the endpoint has its own).

def feature(name, verdict, psi, js, kind="numeric"):
    return {"name": name, "kind": kind, "verdict": verdict, "psi": psi, "js": js, "live": [1, 2, 3], "reference": [2, 2, 2], "missing": 0}


def report(version="1", **changes):
    """A classifier's REPORT as the server describes it, with ``changes`` on top."""
    return {
        "model_id": "iris", "version": version,
        "task": {"kind": "classifier", "output": "output_probability", "declared": False},
        "reference": {"source": "upload", "rows": 150, "created_at": "2026-11-25T02:21:26.801Z",
                      "features": ["sepal_length", "sepal_width", "petal_length", "species"], "collecting": None},
        "windows": {"window": {"seconds": 3600, "predictions": 1234}, "last_n": {"size": 1000, "predictions": 1000}},
        "confidence": {"count": 1234, "mean": 0.91, "mean_margin": 0.8,
                       "buckets": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0],
                       "counts": [0, 0, 0, 0, 3, 5, 10, 40, 100, 300, 700, 76]},
        "classes": {"setosa": 400, "versicolor": 420, "other": 0},
        "output": None,
        "drift": {"status": "warn",
                  "window": {"status": "alert", "rows": 1234, "features": [
                      feature("sepal_length", "ok", 0.02, 0.05), feature("sepal_width", "warn", 0.15, 0.1),
                      feature("petal_length", "alert", 0.4, 0.3), feature("species", "ok", None, 0.05, kind="categorical")]},
                  "last_n": {"status": "alert", "rows": 1000, "features": [
                      feature("sepal_length", "alert", 0.5, 0.4), feature("sepal_width", "ok", 0.01, 0.02),
                      feature("petal_length", "ok", 0.03, 0.02), feature("species", "insufficient", None, 0.2, kind="categorical")]}},
        **changes,
    }


def regressor_report(version="2"):
    """A regressor with no reference yet: 230 of the 1000 rows it collects for one."""
    return report(version, task={"kind": "regressor", "output": "variable", "declared": True},
                  reference={"source": None, "rows": 0, "created_at": None, "features": [], "collecting": {"rows": 230, "target": 1000}},
                  confidence=None, classes={}, output={"count": 230, "mean": 12.5, "std": 2.25, "min": 3, "max": 20.125},
                  drift={"status": "no_reference", "window": {"status": "no_reference", "rows": 230, "features": []},
                         "last_n": {"status": "no_reference", "rows": 230, "features": []}})


THRESHOLDS = {"warn": 0.1, "alert": 0.25, "min_count": 100, "method": "psi"}


def serve_monitoring(page, body, status=200, model_id="iris"):
    """Answer the console's GET /models/<id>/monitoring with ``body`` (JSON) until told otherwise."""
    pattern = f"**/models/{model_id}/monitoring"
    page.unroute(pattern)
    page.route(pattern, lambda route: route.fulfill(status=status, content_type="application/json", body=json.dumps(body)))


def open_monitoring(page, model_id="iris"):
    open_model(page, model_id)
    page.click("#monitoring-box summary")
    page.wait_for_selector("#monitoring .monitor, #monitoring-message.error, #monitoring-message:has-text('Nothing')")


def drift_bars(page, version):
    """The drift chart of a version: [feature, class, bar width] per bar, in order."""
    return page.eval_on_selector_all(f"#monitoring section[data-version='{version}'] .drift-bar",
                                     "bars => bars.map(b => [b.parentNode.dataset.feature, b.getAttribute('class'), Number(b.getAttribute('width'))])")


def monitoring_requests(page):
    return [url for url in page.requests if url.endswith("/monitoring")]


def test_the_monitoring_panel_draws_each_version(page):
    serve_monitoring(page, {"model_id": "iris", "thresholds": THRESHOLDS, "versions": [report("1"), regressor_report("2")]})
    open_model(page, "iris")
    assert monitoring_requests(page) == []  # read only when the section is opened
    open_monitoring(page)
    classifier = "#monitoring section[data-version='1']"
    assert page.inner_text(f"{classifier} .monitor-head") == (
        "version 1 · classifier · reference: upload, 150 rows · 1234 predictions in the last 1 h · drift warn")
    assert page.get_attribute(f"{classifier} .drift-badge", "class") == "badge drift-badge drift-warn"
    # the confidence histogram: a bar per bucket, the tallest for the most counted, and the mean
    heights = page.eval_on_selector_all(f"{classifier} .confidence-bar", "bars => bars.map(b => Number(b.getAttribute('height')))")
    assert len(heights) == 12 and heights.index(max(heights)) == 10 and heights[0] == 0
    assert page.locator(f"{classifier} line.mean").count() == 1
    assert "Confidence of 1234 predictions · mean 0.91 · mean margin 0.8" in page.inner_text(classifier)
    assert page.eval_on_selector_all(f"{classifier} .class-bar", "bars => bars.map(b => b.parentNode.textContent)") == [
        "setosa: 400setosa400", "versicolor: 420versicolor420", "other: 0other0"]
    # drift over the window: a bar per feature colored by its verdict (JS where PSI is null), two threshold lines
    window = drift_bars(page, "1")
    assert [(name, kind) for name, kind, _ in window] == [
        ("sepal_length", "bar drift-bar verdict-ok"), ("sepal_width", "bar drift-bar verdict-warn"),
        ("petal_length", "bar drift-bar verdict-alert"), ("species", "bar drift-bar verdict-ok")]
    assert window[0][2] < window[1][2] < window[2][2]
    assert page.text_content(f"{classifier} g[data-feature='species']").endswith("js 0.05")
    warn, alert = (float(page.get_attribute(f"{classifier} line.threshold-{kind}", "x1")) for kind in ("warn", "alert"))
    assert page.locator(f"{classifier} line.threshold").count() == 2 and warn < alert
    assert "Drift over the last 1 h: alert · 1234 rows" in page.inner_text(classifier)
    # the last N predictions instead: other bars, from the answer already read
    page.click("#monitoring-box .toggle button[data-view='last_n']")
    page.wait_for_selector(f"{classifier} g[data-feature='sepal_length'] .verdict-alert")
    last_n = drift_bars(page, "1")
    assert [kind.split()[-1] for _, kind, _ in last_n] == ["verdict-alert", "verdict-ok", "verdict-ok", "verdict-insufficient"]
    assert [width for *_, width in last_n] != [width for *_, width in window]
    assert page.get_attribute("#monitoring-box .toggle button[data-view='last_n']", "aria-pressed") == "true"
    assert "Drift over the last 1000 predictions: alert · 1000 rows" in page.inner_text(classifier)
    # a regressor that is still collecting its reference
    regressor = "#monitoring section[data-version='2']"
    assert "reference: collecting 230/1000" in page.inner_text(f"{regressor} .monitor-head")
    assert page.inner_text(f"{regressor} .drift-badge") == "no reference"
    assert "drift-no_reference" in page.get_attribute(f"{regressor} .drift-badge", "class")
    assert page.inner_text(f"{regressor} .numbers").split("\n") == ["count", "230", "mean", "12.5", "std", "2.25", "min", "3", "max", "20.1"]
    assert page.locator(f"{regressor} .confidence-bar, {regressor} .drift-bar").count() == 0
    assert "No reference to compare with yet." in page.inner_text(regressor)
    assert len(monitoring_requests(page)) == 1  # the toggle asked the server nothing
    page.click("#monitoring-refresh")
    page.wait_for_function("() => !document.getElementById('monitoring-refresh').disabled")
    assert len(monitoring_requests(page)) == 2
    assert page.locator("#monitoring .monitor").count() == 2
    page.set_viewport_size({"width": 390, "height": 844})  # at phone width the charts shrink to the card
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("document.getElementById('panel').scrollWidth <= document.getElementById('panel').clientWidth")
    assert script_errors(page) == []


def test_the_monitoring_panel_says_what_went_wrong_and_writes_server_strings_as_text(page):
    serve_monitoring(page, {"error": "model 'iris' is not registered", "code": "model_not_found"}, status=404)
    open_monitoring(page)
    assert page.inner_text("#monitoring-message") == "Could not read the monitoring: 404 Not Found: model 'iris' is not registered"
    page.unroute("**/models/iris/monitoring")
    page.route("**/models/iris/monitoring", lambda route: route.abort())
    page.click("#monitoring-refresh")
    page.wait_for_selector("#monitoring-message:has-text('the server did not answer')")

    markup = "<img src=x onerror=alert(1)>"
    hostile = report(f"{markup}v1", classes={markup: 3})
    hostile["drift"]["window"]["features"][0]["name"] = markup
    serve_monitoring(page, {"model_id": "iris", "thresholds": THRESHOLDS, "versions": [hostile]})
    page.click("#monitoring-refresh")
    page.wait_for_selector("#monitoring .monitor")
    assert page.inner_text("#monitoring .monitor-head").startswith(f"version {markup}v1 · classifier")
    assert page.eval_on_selector("#monitoring .drift-bar", "b => b.parentNode.dataset.feature") == markup
    assert page.eval_on_selector("#monitoring .drift-bar", "b => b.parentNode.querySelector('title').textContent").startswith(f"{markup}: ok")
    assert page.eval_on_selector("#monitoring .class-bar", "b => b.parentNode.querySelector('title').textContent") == f"{markup}: 3"
    assert page.eval_on_selector("#monitoring .class-bar", "b => b.parentNode.querySelector('text').textContent") == markup[:21] + "…"
    assert page.eval_on_selector_all("img", "e => e.length") == 0
    assert page.inner_text("#monitoring-message") == ""

    # fields missing or null, no thresholds: drawn with what there is, no script error
    sparse = [{"version": "3", "task": None, "reference": None, "windows": None, "confidence": None, "classes": None, "output": None,
               "drift": None}, {"version": "4"}, None, report("5", confidence={"count": 10, "buckets": None, "counts": None},
                                                        drift={"status": "ok", "window": {"features": [{"name": "x"}, None]}})]
    serve_monitoring(page, {"model_id": "iris", "versions": sparse})
    page.click("#monitoring-refresh")
    page.wait_for_selector("#monitoring section[data-version='5']")
    assert page.inner_text("#monitoring section[data-version='3'] .monitor-head") == "version 3 · unknown task · no reference · drift unknown"
    assert page.locator("#monitoring .monitor").count() == 3
    assert page.locator("#monitoring .drift-bar, #monitoring line.threshold").count() == 1
    serve_monitoring(page, {"model_id": "iris", "thresholds": THRESHOLDS, "versions": []})
    page.click("#monitoring-refresh")
    page.wait_for_selector("#monitoring-message:has-text('Nothing monitored yet.')")
    assert page.locator("#monitoring .monitor").count() == 0
    assert [e for e in script_errors(page) if e != "Failed to load resource: net::ERR_FAILED"] == []  # the request aborted above


def test_the_monitoring_panel_against_the_real_endpoint(page, server, iris_bytes):
    upload_through_api(server, iris_bytes, "iris_watch", name="Iris watched", version="v1")
    for sample in ([5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]):
        response = requests.post(server.url("/predict"), json={"model_id": "iris_watch", "features": sample}, timeout=10)
        assert response.status_code == 200, response.text
    open_monitoring(page, "iris_watch")
    assert page.inner_text("#monitoring-message") == ""
    assert page.inner_text("#monitoring section[data-version='v1'] .monitor-head").startswith("version v1 · classifier")
    assert script_errors(page) == []


# Accuracy: the panel drawn from GET /models/<id>/performance (stubbed here, following the contract of the
# endpoint: a rendering test), then once against the real endpoint.

def classifier_window(seconds, labels, correct):
    """A classifier's WINDOW: ``labels`` labels that arrived in the last ``seconds`` (None: since the upload)."""
    if not labels:
        return {"seconds": seconds, "labels": 0, "correct": 0, "accuracy": None, "classes": {}, "confusion": {}}
    wrong = labels - correct
    return {"seconds": seconds, "labels": labels, "correct": correct, "accuracy": correct / labels,
            "classes": {"0": {"precision": 1.0, "recall": 1.0, "support": correct, "predicted": correct},
                        "1": {"precision": 0.0, "recall": 0.0, "support": wrong, "predicted": 0},
                        "2": {"precision": 0.0, "recall": None, "support": 0, "predicted": wrong}},
            "confusion": {"0": {"0": correct}, "1": {"2": wrong}} if wrong else {"0": {"0": correct}}}


def performance(version="1", hour=(10, 7), day=(40, 36), since_upload=(120, 102), points=None, model_id="iris"):
    """A classifier's VERSION as GET /models/<id>/performance describes it."""
    return {"model_id": model_id, "version": version, "task": {"kind": "classifier", "output": "output_probability"},
            "windows": {"hour": classifier_window(3600, *hour), "day": classifier_window(86400, *day),
                        "since_upload": classifier_window(None, *since_upload)},
            "timeline": {"bucket_seconds": 3600, "points": [
                {"start": "2026-12-01T01:00:00Z", "labels": 10, "accuracy": 0.9},
                {"start": "2026-12-01T02:00:00Z", "labels": 20, "accuracy": 0.95},
                {"start": "2026-12-01T05:00:00Z", "labels": 10, "accuracy": 0.7},  # hours 03 and 04 had no labels
            ] if points is None else points}}


def regressor_performance(version="2", model_id="iris"):
    """A regressor's VERSION: labels in the day and since the upload, none in the last hour."""
    return {"model_id": model_id, "version": version, "task": {"kind": "regressor", "output": "variable"},
            "windows": {"hour": {"seconds": 3600, "labels": 0, "mae": None, "rmse": None},
                        "day": {"seconds": 86400, "labels": 40, "mae": 0.31, "rmse": 0.4},
                        "since_upload": {"seconds": None, "labels": 55, "mae": 0.35, "rmse": 0.45}},
            "timeline": {"bucket_seconds": 3600, "points": [
                {"start": "2026-12-01T01:00:00Z", "labels": 15, "mae": 0.5},
                {"start": "2026-12-01T02:00:00Z", "labels": 40, "mae": 0.25}]}}


def unlabelled_performance(version="3", model_id="iris"):
    """A version with predictions recorded and no label yet."""
    return performance(version, hour=(0, 0), day=(0, 0), since_upload=(0, 0), points=[], model_id=model_id)


def serve_performance(page, body, status=200, model_id="iris", headers=None):
    """Answer the console's GET /models/<id>/performance with ``body`` (JSON) until told otherwise."""
    pattern = f"**/models/{model_id}/performance"
    page.unroute(pattern)
    page.route(pattern, lambda route: route.fulfill(status=status, content_type="application/json", body=json.dumps(body),
                                                    headers=headers or {}))


def open_accuracy(page, model_id="iris"):
    open_model(page, model_id)
    page.click("#accuracy-box summary")
    page.wait_for_function("() => document.querySelector('#accuracy .accuracy-version')"
                           " || !['', 'Reading…'].includes(document.getElementById('accuracy-message').textContent)")


def refresh_accuracy(page):
    page.click("#accuracy-refresh")
    page.wait_for_function("() => !document.getElementById('accuracy-refresh').disabled")


def performance_requests(page):
    return [url for url in page.requests if url.endswith("/performance")]


def window_rows(page, version):
    """The windows table of a version: [window, labels, ...] per row."""
    return [row.split("\t") for row in page.inner_text(f"#accuracy section[data-version='{version}'] .accuracy-windows tbody").splitlines()]


def points(page, version):
    """The dots of a version's line: (x, y, tooltip) each, in order."""
    return page.eval_on_selector_all(f"#accuracy section[data-version='{version}'] circle.point",
                                     "dots => dots.map(d => [Number(d.getAttribute('cx')), Number(d.getAttribute('cy')),"
                                     " d.querySelector('title').textContent])")


def test_the_accuracy_panel_draws_each_version(page):
    seen = []

    def answer(route):
        seen.append(route.request.headers.get("authorization"))
        route.fulfill(status=200, content_type="application/json", body=json.dumps(
            {"model_id": "iris", "versions": [performance("1"), regressor_performance("2"), unlabelled_performance("3")]}))

    page.route("**/models/iris/performance", answer)
    page.fill("#token", TOKEN)  # sent as monitoring sends it
    open_model(page, "iris")
    assert performance_requests(page) == []  # read only when the section is opened
    open_accuracy(page)
    assert seen == [f"Bearer {TOKEN}"]
    assert page.inner_text("#accuracy-message") == ""
    classifier = "#accuracy section[data-version='1']"
    assert page.inner_text(f"{classifier} .monitor-head") == "version 1 · classifier · 120 labels since upload"
    assert page.inner_text(f"{classifier} .accuracy-windows thead").strip() == "Window\tLabels\tCorrect\tAccuracy"
    assert window_rows(page, "1") == [["since upload", "120", "102", "85%"], ["last 24 h", "40", "36", "90%"],
                                      ["last 1 h", "10", "7", "70%"]]
    assert "Accuracy by hour · 3 hours with labels" in page.inner_text(classifier)
    # a dot per hour with labels, oldest left; higher accuracy higher up; the line broken over the hours without labels
    dots = points(page, "1")
    assert [title for *_, title in dots] == ["2026-12-01 01:00 UTC: 90% of 10 labels", "2026-12-01 02:00 UTC: 95% of 20 labels",
                                             "2026-12-01 05:00 UTC: 70% of 10 labels"]
    assert dots[0][0] < dots[1][0] < dots[2][0]
    assert dots[1][1] < dots[0][1] < dots[2][1]
    lines = page.eval_on_selector_all(f"{classifier} polyline.trend", "lines => lines.map(l => l.getAttribute('points').split(' ').length)")
    assert lines == [2]
    assert page.get_attribute(f"{classifier} svg", "aria-label") == "accuracy by hour"
    # a regressor: its mean absolute and root mean square errors, none in the last hour
    regressor = "#accuracy section[data-version='2']"
    assert page.inner_text(f"{regressor} .monitor-head") == "version 2 · regressor · 55 labels since upload"
    assert page.inner_text(f"{regressor} .accuracy-windows thead").strip() == "Window\tLabels\tMAE\tRMSE"
    assert window_rows(page, "2") == [["since upload", "55", "0.35", "0.45"], ["last 24 h", "40", "0.31", "0.4"],
                                      ["last 1 h", "0", "–", "–"]]
    assert "Mean absolute error by hour · 2 hours with labels" in page.inner_text(regressor)
    error_dots = points(page, "2")
    assert [title for *_, title in error_dots] == ["2026-12-01 01:00 UTC: MAE 0.5 of 15 labels",
                                                   "2026-12-01 02:00 UTC: MAE 0.25 of 40 labels"]
    assert error_dots[0][1] < error_dots[1][1]  # the larger error higher up
    # a version with no labels yet says so, and draws nothing
    unlabelled = "#accuracy section[data-version='3']"
    assert page.inner_text(f"{unlabelled} .monitor-head") == "version 3 · classifier · 0 labels since upload"
    assert page.inner_text(f"{unlabelled} p.muted") == "No labels yet."
    assert page.locator(f"{unlabelled} table, {unlabelled} svg").count() == 0
    # the monitoring section is not read for it, and Refresh reads again
    assert [url for url in page.requests if url.endswith("/monitoring")] == []
    refresh_accuracy(page)
    assert len(performance_requests(page)) == 2
    assert page.locator("#accuracy .accuracy-version").count() == 3
    page.set_viewport_size({"width": 390, "height": 844})  # at phone width the tables and charts fit the card
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("document.getElementById('panel').scrollWidth <= document.getElementById('panel').clientWidth")
    assert script_errors(page) == []


def test_the_accuracy_panel_says_when_recording_is_off_there_are_no_labels_or_it_went_wrong(page):
    serve_performance(page, {"error": "recording is off (NEXUS_RECORDS=0)", "code": "records_off", "request_id": "r1"}, status=404)
    open_accuracy(page)
    assert page.inner_text("#accuracy-message") == (
        "Recording is off on this server (NEXUS_RECORDS=0): it keeps no predictions to compare labels with.")
    assert page.get_attribute("#accuracy-message", "class") == "muted"
    assert page.locator("#accuracy .accuracy-version").count() == 0

    serve_performance(page, {"model_id": "iris", "versions": []})
    refresh_accuracy(page)
    assert page.inner_text("#accuracy-message") == (
        "No labels yet: send the true answers of predictions, by their request ids, to POST /models/iris/feedback.")
    serve_performance(page, {"model_id": "iris", "versions": [unlabelled_performance("1")]})
    refresh_accuracy(page)
    assert page.inner_text("#accuracy-message").startswith("No labels yet: ")
    assert page.inner_text("#accuracy section[data-version='1']").endswith("No labels yet.")

    serve_performance(page, {"error": "model 'iris' is not registered", "code": "model_not_found", "request_id": "r2"}, status=404)
    refresh_accuracy(page)
    assert page.inner_text("#accuracy-message") == "Could not read the accuracy: 404 Not Found: model 'iris' is not registered"
    assert page.get_attribute("#accuracy-message", "class") == "error"
    serve_performance(page, {"error": "the records database is unavailable", "code": "records_unavailable", "request_id": "r3"},
                      status=503, headers={"Retry-After": "5"})
    refresh_accuracy(page)
    assert page.inner_text("#accuracy-message") == (
        "Could not read the accuracy: 503 Not Ready: the records database is unavailable (try again in 5 s)")
    page.unroute("**/models/iris/performance")
    page.route("**/models/iris/performance", lambda route: route.fulfill(status=200, content_type="text/html", body="<html>"))
    refresh_accuracy(page)
    assert page.inner_text("#accuracy-message") == "Could not read the accuracy: the answer was not a JSON object"
    page.unroute("**/models/iris/performance")
    page.route("**/models/iris/performance", lambda route: route.abort())
    refresh_accuracy(page)
    assert page.inner_text("#accuracy-message").startswith("Could not read the accuracy: the server did not answer")

    # the server's strings go in as text; fields missing, null or of the wrong type are drawn as far as they go
    markup = "<img src=x onerror=alert(1)>"
    hostile = performance(f"{markup}v1", points=[{"start": markup, "labels": 1, "accuracy": 1.0},
                                                 {"start": "2026-12-01T01:00:00Z", "labels": 3, "accuracy": 2 / 3}])
    sparse = [{"version": "4"}, None, "5", {"version": "6", "task": None, "windows": None, "timeline": None},
              {"version": "7", "task": {"kind": "classifier"}, "windows": {"hour": None, "day": 3, "since_upload": {"labels": 2}},
               "timeline": {"points": [None, {"start": "2026-12-01T00:00:00Z", "accuracy": "x"}]}}]
    serve_performance(page, {"model_id": "iris", "versions": [hostile, *sparse]})
    refresh_accuracy(page)
    page.wait_for_selector("#accuracy section[data-version='7']")
    assert page.inner_text("#accuracy .monitor-head").startswith(f"version {markup}v1 · classifier")
    assert [title for *_, title in points(page, f"{markup}v1")] == ["2026-12-01 01:00 UTC: 66.67% of 3 labels"]
    assert page.inner_text("#accuracy section[data-version='4'] .monitor-head") == "version 4 · unknown task · – labels since upload"
    assert page.inner_text("#accuracy section[data-version='4'] p.muted") == "No labels yet."
    assert window_rows(page, "7") == [["since upload", "2", "–", "–"], ["last 24 h", "–", "–", "–"],
                                      ["last 1 h", "–", "–", "–"]]
    assert "No labels in the time kept yet." in page.inner_text("#accuracy section[data-version='7']")
    assert page.locator("#accuracy .accuracy-version").count() == 4
    assert page.inner_text("#accuracy-message") == ""
    assert page.eval_on_selector_all("img", "e => e.length") == 0
    assert [e for e in script_errors(page) if e != "Failed to load resource: net::ERR_FAILED"] == []  # the request aborted above


def test_a_late_accuracy_answer_is_dropped_for_a_newer_one(page):
    """The model opened again while the first read is under way: its answer, when it comes, is not drawn over the new one."""
    held = []

    def answer(route):
        if not held:
            held.append(route)  # answered below, last
        else:
            route.fulfill(status=200, content_type="application/json",
                          body=json.dumps({"model_id": "iris", "versions": [performance("new")]}))

    page.route("**/models/iris/performance", answer)
    open_model(page, "iris")
    page.click("#accuracy-box summary")
    page.wait_for_selector("#accuracy-message:has-text('Reading')")
    assert page.is_disabled("#accuracy-refresh")
    page.wait_for_function("() => true")  # a round trip: the route handler has run
    assert len(held) == 1
    open_model(page, "iris")
    page.wait_for_selector("#accuracy section[data-version='new']")
    with page.expect_event("requestfinished"):
        held[0].fulfill(status=200, content_type="application/json",
                        body=json.dumps({"model_id": "iris", "versions": [performance("old")]}))
    page.wait_for_timeout(300)
    assert page.locator("#accuracy section[data-version='old']").count() == 0
    assert page.locator("#accuracy section[data-version='new']").count() == 1
    assert page.is_enabled("#accuracy-refresh") and page.inner_text("#accuracy-message") == ""
    assert script_errors(page) == []


def test_the_accuracy_panel_against_the_real_endpoint(page, server, iris_bytes):
    upload_through_api(server, iris_bytes, "iris_labelled", name="Iris labelled", version="v1")
    ids = []
    for sample in ([5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]):
        response = requests.post(server.url("/predict"), json={"model_id": "iris_labelled", "features": sample}, timeout=10)
        assert response.status_code == 200, response.text
        ids.append(response.json()["request_id"])
    items, waiting = {}, ids
    for _ in range(50):  # the predictions are written to the records within a second
        response = requests.post(server.url("/models/iris_labelled/feedback"), json=[{"request_id": i, "truth": "0"} for i in waiting],
                                 timeout=10)
        assert response.status_code == 200, response.text
        items.update({item["request_id"]: item for item in response.json()["items"] if item["outcome"] == "matched"})
        waiting = [i for i in ids if i not in items]
        if not waiting:
            break
        time.sleep(0.1)
    assert not waiting, response.text
    correct = sum(item["correct"] for item in items.values())
    open_accuracy(page, "iris_labelled")
    assert page.inner_text("#accuracy-message") == ""
    assert page.inner_text("#accuracy section[data-version='v1'] .monitor-head") == "version v1 · classifier · 3 labels since upload"
    accuracy = f"{round(100 * correct / 3, 2):g}%"
    assert window_rows(page, "v1")[2] == ["last 1 h", "3", str(correct), accuracy]
    [(_, _, title)] = points(page, "v1")
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:00 UTC: {re.escape(accuracy)} of 3 labels", title), title
    assert script_errors(page) == []
