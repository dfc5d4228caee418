"""The web console in real headless Chromium against the real server under gunicorn."""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import urlparse

import pytest

from tests import models
from tests.conftest import TOKEN, files_in

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
    upload_through_form(page, model_file(tmp_path, models.identity()), "iris")
    page.wait_for_selector("#upload-message.error")
    assert page.inner_text("#upload-message").startswith("Refused: 409 Conflict: model 'iris' is already registered")
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
    assert "temporary.onnx" not in files_in(server.model_dir)
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
        page.fill("#token", "wrong")
        page.click("#delete")
        page.click("#confirm-yes")
        page.wait_for_selector("#response-meta:has-text('Delete refused: 401 Unauthorized')")
        page.click("#delete")
        page.keyboard.press("Escape")  # no: Escape after a refused "Delete" must not delete
        page.wait_for_selector("#confirm-delete", state="hidden")
        page.click("#refresh")
        page.wait_for_selector("#models tbody tr[data-id='guarded']")
        assert "guarded.onnx" in files_in(server.model_dir)
        page.fill("#token", TOKEN)
        page.click("#delete")
        page.click("#confirm-yes")
        page.wait_for_selector("#models tbody tr[data-id='guarded']", state="detached")
        assert "guarded.onnx" not in files_in(server.model_dir)
        page.screenshot(path=str(tmp_path / "token.png"), full_page=True)
        context.close()
        assert_same_origin(page, server)
