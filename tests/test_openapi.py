"""The OpenAPI document names exactly the routes the app serves."""

from __future__ import annotations

import re

from nexus.openapi import document


def _template(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_every_route_is_documented_and_every_documented_path_is_a_route(app):
    routes = {_template(r.rule) for r in app.url_map.iter_rules() if r.endpoint != "static"}
    assert routes == set(document()["paths"])


def test_documented_methods_match_the_routes(app):
    paths = document()["paths"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        served = {m.lower() for m in rule.methods} - {"head", "options"}
        documented = {k for k in paths[_template(rule.rule)] if k != "parameters"}
        assert served <= documented, rule.rule


def test_document_is_served_as_openapi_3_1(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body = response.get_json()
    assert body["openapi"].startswith("3.1")
    assert "multipart/form-data" in body["paths"]["/models/upload"]["post"]["requestBody"]["content"]
    for status in ("400", "401", "409", "413", "415"):
        assert status in body["paths"]["/models/upload"]["post"]["responses"]
