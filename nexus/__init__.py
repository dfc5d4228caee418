"""Model Nexus: upload ONNX models over HTTP and get predictions from them.

Importing the package is light (no Flask, no onnxruntime, no files touched): gunicorn's master
imports it for its hooks, the model sandbox starts from it, and only the workers build the app
and its sessions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nexus import config

if TYPE_CHECKING:
    from flask import Flask

    from nexus.registry import Registry
    from nexus.store import ModelStore

__version__ = "0.1.0"


@dataclass(frozen=True)
class Nexus:
    """What a running app holds: its settings, the model directory and this worker's registry."""

    settings: config.Settings
    store: ModelStore
    registry: Registry


def create_app(settings: config.Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment, with ``settings`` (a Settings or overrides) on top."""
    from flask import Flask

    from nexus.api import register_blueprints
    from nexus.http import NexusRequest, init_errors, note_route
    from nexus.middleware import Edge
    from nexus.monitoring.live import Monitoring, MonitoringSettings
    from nexus.observability import exporter, logs, metrics
    from nexus.registry import Registry
    from nexus.store import ModelStore

    if not isinstance(settings, config.Settings):
        settings = config.with_overrides(config.from_env(), settings or {})
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.request_class = NexusRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    # The directory is made once at start (gunicorn's master, app.py), never by a worker: a worker
    # restarted while the volume is unmounted must report it missing, not serve an empty new one.
    store = ModelStore(settings.model_dir)
    watch = MonitoringSettings(settings.monitoring, settings.reference_rows, settings.drift_window_s, settings.drift_last_n,
                               settings.drift_warn, settings.drift_alert, settings.drift_min_count)
    registry = Registry(store, settings.ort_threads, observer=metrics, limits=settings.limits, load_wait_s=settings.load_wait_s,
                        monitoring=Monitoring(watch, store, failed=metrics.monitoring_failed) if settings.monitoring else None,
                        recorder=recorder(settings), budget_mb=settings.memory_budget_mb,
                        shared_weights=settings.shared_weights)
    app.extensions["nexus"] = Nexus(settings, store, registry)
    init_errors(app)
    app.before_request(note_route)
    exporter.init_app(app)
    register_blueprints(app)
    app.wsgi_app = Edge(app, settings.cors_origins, hot_routes())
    return app


def recorder(settings: config.Settings):
    """This server's prediction records (None with NEXUS_RECORDS=0): the database is opened on first use."""
    if not settings.records:
        return None
    from nexus.observability import metrics
    from nexus.records.database import Database, engine_url
    from nexus.records.recorder import RecordSettings, Recorder

    keep = RecordSettings(settings.record_inputs, settings.record_retention_days * 86_400, settings.record_queue)
    return Recorder(Database(engine_url(settings.database_url, settings.state_path)), keep,
                    dropped=metrics.records_dropped, written=metrics.records_written)


def hot_routes() -> dict:
    """The Flask endpoints whose POSTs the middleware serves itself, and the handler of each."""
    from nexus.api import predict, v2

    return {"predict.predict": predict.handle, "v2.infer": v2.handle_infer}


_grpc = None  # this worker's gRPC server, if it runs one
_worker: Nexus | None = None  # this worker's app state, once started


def start_worker(app: Flask) -> None:
    """In a gunicorn worker, after the fork: start loading the model directory in a background thread,
    and serve gRPC beside HTTP (NEXUS_GRPC_PORT)."""
    global _grpc, _worker
    state = _worker = app.extensions["nexus"]
    state.registry.start()
    if state.registry.recorder is not None:
        state.registry.recorder.start()
    if state.settings.grpc_port:
        from nexus.rpc import server

        _grpc = server.start(state)


def stop_worker(grace_s: float) -> None:
    """When the worker exits: let gRPC calls in flight finish for up to ``grace_s``, then count the
    predictions monitoring still has queued and write the records still queued."""
    if _grpc is not None:
        _grpc.stop(grace_s)
    if _worker is not None and _worker.registry.monitoring is not None:
        _worker.registry.monitoring.flush()
    if _worker is not None and _worker.registry.recorder is not None:
        _worker.registry.recorder.flush()
