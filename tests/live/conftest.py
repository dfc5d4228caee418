"""Live-server fixtures: gunicorn with 4 workers on a free loopback port."""

from __future__ import annotations

import pytest

from tests.live.server import LiveServer, seed_demo_model


def demo_server(tmp_path_factory, workers: int = 4) -> LiveServer:
    """Start a server with the demo model in a fresh directory."""
    base = tmp_path_factory.mktemp("live")
    seed_demo_model(base / "models")
    return LiveServer(base / "models", base / "logs", workers=workers).start()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server with 4 workers and the demo model, shared by one test module."""
    server = demo_server(tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture
def make_server(tmp_path):
    """Start servers with custom settings; every one is stopped after the test."""
    started = []

    def start(model_dir=None, workers=4, **kwargs):
        directory = model_dir or tmp_path / "models"
        if model_dir is None and not directory.exists():
            seed_demo_model(directory)
        server = LiveServer(directory, tmp_path / "logs", workers=workers, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/live" in str(item.fspath):
            item.add_marker(pytest.mark.live)
