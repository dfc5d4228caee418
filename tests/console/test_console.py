"""The web console in real headless Chromium against the real server under gunicorn."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlparse

import pytest

from tests import models
from tests.conftest import files_in

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


@pytest.fixture
def page(browser, server, tmp_path, request):
    """A fresh page on the console that records console errors and every request it makes."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    tab = context.new_page()
    tab.errors, tab.requests = [], []
    tab.on("console", lambda message: message.type == "error" and tab.errors.append(message.text))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.on("request", lambda r: tab.requests.append(r.url))
    tab.goto(server.url("/"))
    tab.wait_for_selector("#models tbody tr")
    yield tab
    tab.screenshot(path=str(tmp_path / f"{request.node.name}.png"), full_page=True)
    context.close()


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
    origin = urlparse(server.url("/")).netloc
    assert all(urlparse(url).netloc == origin for url in page.requests), page.requests
    assert page.errors == []


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


def test_the_demo_model_predicts_its_prefilled_example(page):
    page.click("#models tbody tr[data-id='iris']")
    page.wait_for_selector("#panel:not([hidden])")
    page.fill("#request", '{"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]}')
    page.click("#predict")
    page.wait_for_selector("#response:not(:empty)")
    assert "prediction [0]" in page.inner_text("#response-meta")


def test_refusals_are_shown_in_words(page, server, tmp_path):
    upload_through_form(page, model_file(tmp_path, models.identity()), "iris")
    page.wait_for_selector("#upload-message.error")
    assert "409" in page.inner_text("#upload-message") and "already registered" in page.inner_text("#upload-message")
    upload_through_form(page, model_file(tmp_path, b"not a model", "notes.onnx"), "notes")
    page.wait_for_selector("#upload-message:has-text('400')")
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
