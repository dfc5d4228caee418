"""The console's files as Flask serves them (in-process, no browser): the page, its assets, its policy."""

from __future__ import annotations

import re

import pytest

from nexus.api.console import POLICY, STATIC

FILES = ("index.html", "console.js", "console.css")


def test_the_page_is_served_at_the_root_with_a_self_only_policy(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert b"<title>Model Nexus</title>" in response.data
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize(("name", "mimetype"), [("console.js", "text/javascript"), ("console.css", "text/css")])
def test_the_assets_are_served_under_console(client, name, mimetype):
    response = client.get(f"/console/{name}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.data == (STATIC / name).read_bytes()


def test_a_missing_asset_is_a_json_404(client):
    response = client.get("/console/nothing.js")
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


@pytest.mark.parametrize("name", FILES)
def test_nothing_is_loaded_from_outside_the_server(name):
    text = (STATIC / name).read_text().replace('"http://www.w3.org/2000/svg"', "")  # a namespace name: nothing loads from it
    assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text, re.IGNORECASE), "an absolute URL in " + name
    assert "@import" not in text and "@font-face" not in text


def test_the_page_has_no_inline_script_style_or_handlers():
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE)
    assert re.findall(r"<script[^>]*>(.*?)</script>", html, re.DOTALL) == [""]
    assert "<style" not in html and "style=" not in html
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["data:,", "/console/console.css", "/console/console.js"]


def test_the_script_writes_no_markup():
    """Text from the server (names, versions, errors, features) goes in as text: the script never parses HTML."""
    script = (STATIC / "console.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|createContextualFragment", script)


def test_every_form_control_has_a_label():
    html = (STATIC / "index.html").read_text()
    ids = re.findall(r'<(?:input|textarea|select)[^>]*\sid="([^"]+)"', html)
    assert ids
    assert [i for i in ids if f'for="{i}"' not in html] == []


@pytest.mark.parametrize("path", ["/", "/console/index.html"])
def test_the_page_has_its_policy_on_every_path_that_serves_it(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.data == (STATIC / "index.html").read_bytes()
    assert response.headers["Content-Security-Policy"] == POLICY
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name", FILES)
def test_every_console_file_is_served_nosniff_with_the_policy(client, name):
    response = client.get(f"/console/{name}")
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == POLICY


def test_a_conditional_request_for_the_page_keeps_the_policy(client):
    first = client.get("/console/index.html")
    etag = first.headers["ETag"]
    again = client.get("/console/index.html", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["Content-Security-Policy"] == POLICY
    assert again.headers["X-Content-Type-Options"] == "nosniff"


def test_other_routes_do_not_get_the_console_policy(client):
    response = client.get("/health/live")
    assert "Content-Security-Policy" not in response.headers
