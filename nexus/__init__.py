"""Model Nexus: upload ONNX models over HTTP and get predictions from them.

Importing the package is light (no onnxruntime, no files touched): gunicorn's master imports
it for its hooks, and only the workers build the app and its sessions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, Request, current_app

from nexus import config

if TYPE_CHECKING:
    from nexus.registry import Registry
    from nexus.store import ModelStore

__version__ = "0.1.0"
ROUTE_ENVIRON = "nexus.route"


@dataclass(frozen=True)
class Nexus:
    """What a running app holds: its settings, the model directory and this worker's registry."""

    settings: config.Settings
    store: ModelStore
    registry: Registry


class NexusRequest(Request):
    """A request that streams uploads into the model directory and tells the middleware its route."""

    _url_rule = None

    @property
    def url_rule(self):
        return self._url_rule

    @url_rule.setter
    def url_rule(self, rule) -> None:
        # Flask sets this when routing; the middleware labels metrics with the route template.
        self._url_rule = rule
        self.environ[ROUTE_ENVIRON] = rule.rule if rule is not None else None

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        pending = current_app.extensions["nexus"].store.new_pending()
        self.environ.setdefault("nexus.pending", []).append(pending)
        return pending.file


def create_app(settings: config.Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment, with ``settings`` (a Settings or overrides) on top."""
    from nexus import errors
    from nexus.api import register_blueprints
    from nexus.middleware import Edge
    from nexus.observability import logs, metrics
    from nexus.registry import Registry
    from nexus.store import ModelStore

    if not isinstance(settings, config.Settings):
        settings = config.with_overrides(config.from_env(), settings or {})
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.request_class = NexusRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    store = ModelStore(settings.model_dir)
    store.ensure()
    app.extensions["nexus"] = Nexus(settings, store, Registry(store, settings.ort_threads, observer=metrics))
    errors.init_app(app)
    metrics.init_app(app)
    register_blueprints(app)
    app.wsgi_app = Edge(app, settings.cors_origins, hot_routes())
    return app


def hot_routes() -> dict:
    """The POST routes the middleware serves without Flask (the Flask routes stay for the url map)."""
    from nexus.api import predict, v2

    return {predict.ROUTE: predict.handle, **dict.fromkeys(v2.INFER_ROUTES, v2.handle_infer)}


def start_worker(app: Flask) -> None:
    """Load the model directory in this process (call after the fork, before serving)."""
    app.extensions["nexus"].registry.sync()
