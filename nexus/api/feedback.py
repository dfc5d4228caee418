"""Ground truth for past predictions, and the accuracy it shows.

``POST /models/<id>/feedback`` joins labels with the predictions they are about (by the request id
the client got back), in whichever worker or replica the records database is shared by;
``GET /models/<id>/performance`` (and per version) reads the accuracy of each version's upload.
"""

from __future__ import annotations

from flask import Blueprint, request

from nexus.api import nexus, require_predict_token
from nexus.errors import BadInput, RecordsOff
from nexus.http import json_response, read_json
from nexus.observability import metrics
from nexus.records.recorder import MAX_LABELS, parse_labels
from nexus.registry import Model

bp = Blueprint("feedback", __name__)


def _recorder():
    recorder = nexus().registry.recorder
    if recorder is None:
        raise RecordsOff()
    return recorder


@bp.post("/models/<model_id>/feedback")
def feedback(model_id: str):
    """Label past predictions of the model: each item's outcome, and the counts of each outcome."""
    require_predict_token()
    state = nexus()
    recorder = _recorder()
    versions = state.registry.versions_of(model_id)  # an unknown model is a 404 first
    if all(model.kind is None for model in versions):
        raise BadInput(f"model '{model_id}' has no output a label can be compared with (it is neither a classifier nor a regressor)")
    body = read_json(request.environ, state.settings.max_request_bytes, f'a JSON array of up to {MAX_LABELS} {{"request_id": ..., "truth": ...}}')
    labels = parse_labels(body)
    outcomes = recorder.label(model_id, labels, state.registry.uploads(model_id))
    counts = {"matched": 0, "duplicate": 0, "unknown": 0, "expired": 0}
    items = []
    for given, outcome in zip(body, outcomes, strict=True):
        counts[outcome.outcome] += 1
        item: dict = {"request_id": given["request_id"], "outcome": outcome.outcome}  # as the client wrote it
        if outcome.version is not None:
            item["version"] = outcome.version
        if outcome.outcome == "matched":
            item["predicted"] = outcome.predicted
            if outcome.correct is not None:
                item["correct"] = outcome.correct
            if outcome.error is not None:
                item["error"] = outcome.error
            metrics.feedback_counted(model_id, outcome.version or "", outcome.correct, outcome.error)
        items.append(item)
    return json_response({"model_id": model_id, "received": len(labels), **counts, "items": items})


@bp.get("/models/<model_id>/performance")
def performance(model_id: str):
    """Accuracy (or error) of each version this worker serves, from the labels received."""
    require_predict_token()
    registry = nexus().registry
    versions = registry.versions_of(model_id)  # an unknown model is a 404 model_not_found first
    recorder = _recorder()
    return json_response({"model_id": model_id, "versions": [_performance(recorder, model) for model in versions]})


@bp.get("/models/<model_id>/versions/<version>/performance")
def version_performance(model_id: str, version: str):
    require_predict_token()
    model = nexus().registry.get(model_id, version)
    return json_response(_performance(_recorder(), model))


def _performance(recorder, model: Model) -> dict:
    return {"model_id": model.id, "version": model.version, "task": {"kind": model.kind, "output": model.watched},
            **recorder.performance(model.id, model.version, model.upload, model.kind)}
