"""The arrows point one way: protocols -> inference layer -> registry -> store/runtime -> tensors.

Only the protocol layers (nexus.api, nexus.http, the middleware, the /metrics exporter) know Flask.
"""

from __future__ import annotations

import subprocess
import sys

BELOW_THE_PROTOCOLS = ["nexus.inference", "nexus.registry", "nexus.sandbox", "nexus.store", "nexus.runtime",
                       "nexus.tensors", "nexus.errors", "nexus.config", "nexus.clock", "nexus.onnx_scan",
                       "nexus.observability.metrics"]


def imported_by(modules: list[str]) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing ``modules``."""
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_nothing_below_the_protocols_imports_flask_or_werkzeug():
    assert not imported_by(BELOW_THE_PROTOCOLS) & {"flask", "werkzeug", "prometheus_flask_exporter"}


def test_the_package_and_the_sandbox_import_neither_flask_nor_onnxruntime():
    """gunicorn's master imports the package for its hooks; the sandbox child starts from it."""
    assert not imported_by(["nexus", "nexus.config"]) & {"flask", "werkzeug", "onnxruntime", "numpy"}
