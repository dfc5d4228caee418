"""``/metrics``: prometheus-flask-exporter's endpoint over the counters of ``metrics``.

Under gunicorn the values of every worker are merged from the multiprocess directory at each
scrape; samples of models and versions that are no longer in the model directory are left out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Flask
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_flask_exporter import PrometheusMetrics

from nexus.observability import metrics
from nexus.observability.metrics import METRICS_PATH

if TYPE_CHECKING:
    from nexus.registry import Model

log = logging.getLogger(__name__)


class _KnownModelsOnly:
    """A collector that passes on ``source``'s samples except those of models and versions no longer in the directory.

    Counters of a deleted model live on in the multiprocess files of every worker that served
    it; without this, each upload/delete cycle would leave its series in /metrics for good.
    """

    def __init__(self, source, known: Callable[[], dict[str, set[str]]]) -> None:
        self.source, self.known = source, known

    def collect(self):
        known = self.known()
        for family in self.source.collect():
            family.samples = [s for s in family.samples if _kept(s.labels, known)]
            yield family


def _kept(labels: dict[str, str], known: dict[str, set[str]]) -> bool:
    model_id = labels.get("model_id")
    if model_id is None:
        return True
    versions = known.get(model_id)
    return versions is not None and ("version" not in labels or labels["version"] in versions)


class _Monitoring:
    """A collector of the monitoring series, computed from every worker's counts of each served version."""

    def __init__(self, models: Callable[[], list[Model]]) -> None:
        self.models = models

    def collect(self):
        summaries = []
        for model in self.models():
            if model.monitor is not None:
                try:
                    summaries.append((model.id, model.version, model.monitor.series()))
                except Exception:  # a scrape shows what it can
                    log.exception("monitoring series failed", extra={"model_id": model.id, "version": model.version})
        yield from metrics.monitoring_families(summaries)


class _Exporter(PrometheusMetrics):
    """prometheus-flask-exporter's endpoint, with the samples of deleted models left out and the monitoring series added."""

    def __init__(self, known: Callable[[], dict[str, set[str]]], models: Callable[[], list[Model]], **kwargs) -> None:
        super().__init__(app=None, **kwargs)
        self.known, self.models = known, models

    def generate_metrics(self, accept_header=None, names=None):
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            source = multiprocess.MultiProcessCollector(None)
        else:
            source = self.registry
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_KnownModelsOnly(source, self.known))
        registry.register(_Monitoring(self.models))
        if names:
            registry = registry.restricted_registry(names)
        encode, content_type = choose_encoder(accept_header)
        return encode(registry).decode("utf-8"), content_type


def init_app(app: Flask) -> None:
    """Serve ``/metrics`` (multiprocess-aware, deleted models left out); our hooks do the counting."""
    registry = app.extensions["nexus"].registry
    exporter = _Exporter(registry.known_versions, registry.loaded_now, path=METRICS_PATH, export_defaults=False)
    exporter.init_app(app)
