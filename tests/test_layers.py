"""The arrows point one way: protocols -> inference layer -> registry -> store/runtime -> tensors.

Only the protocol layers (nexus.api, nexus.http, the middleware, the /metrics exporter, and
nexus.rpc, which shares nexus.http's request ids) know Flask; only nexus.rpc knows gRPC.
"""

from __future__ import annotations

import subprocess
import sys

BELOW_THE_PROTOCOLS = ["nexus.inference", "nexus.registry", "nexus.sandbox", "nexus.store", "nexus.runtime",
                       "nexus.tensors", "nexus.errors", "nexus.config", "nexus.clock", "nexus.onnx_scan",
                       "nexus.observability.metrics", "nexus.routing", "nexus.shadow", "nexus.oip", "nexus.auth",
                       "nexus.monitoring.confidence", "nexus.monitoring.sketch"]


def imported_by(modules: list[str]) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing ``modules``."""
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_nothing_below_the_protocols_imports_flask_werkzeug_or_grpc():
    assert not imported_by(BELOW_THE_PROTOCOLS) & {"flask", "werkzeug", "prometheus_flask_exporter", "grpc"}


def test_what_gunicorns_master_loads_imports_neither_onnxruntime_nor_the_metrics():
    """The master loads the logger class before its hooks run; the metrics made in it would open files in a
    PROMETHEUS_MULTIPROC_DIR that on_starting has not made yet."""
    assert not imported_by(["nexus.observability.logs"]) & {"onnxruntime", "numpy", "grpc", "prometheus_client"}


def test_the_http_app_does_not_import_grpc():
    """gRPC is started in each worker after the fork, never imported where it could cross one."""
    assert "grpc" not in imported_by(["nexus.api", "nexus.middleware", "nexus.http"])


def test_the_package_and_the_sandbox_import_neither_flask_nor_onnxruntime():
    """gunicorn's master imports the package for its hooks; the sandbox child starts from it."""
    assert not imported_by(["nexus", "nexus.config"]) & {"flask", "werkzeug", "onnxruntime", "numpy"}
