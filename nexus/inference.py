"""The one inference path every protocol calls.

Resolve the model and the version that answers (the one pinned, else the one its routing plan
chooses) → check and convert the inputs through the tensor codec (missing, unknown and
duplicate inputs are checked here, once, with one set of messages) → run within the limits →
describe the outputs asked for → queue what monitoring and the prediction records need (both work
off the request: nexus/monitoring, nexus/records) → hand copies to shadow versions.

Protocols (``/predict``, V2 REST, and next gRPC) only parse their wire format into an
:class:`InferenceRequest` and render the :class:`InferenceResponse`, or the error this raises.
Nothing here knows about HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from nexus import shadow
from nexus.errors import BadInput
from nexus.observability import metrics
from nexus.registry import Entry, Model, Registry
from nexus.runtime import TensorSpec
from nexus.tensors import DType

# How a protocol's input is decoded once its declared spec is known: (name, dtype, declared shape).
Decoder = Callable[[str, DType, tuple[int, ...]], np.ndarray]


class Input(NamedTuple):
    """One input as a protocol received it: its name (None: the model's only input) and its decoder."""

    name: str | None
    decode: Decoder


class InferenceRequest(NamedTuple):
    """What every protocol asks: a model (and maybe a version), its inputs, the outputs wanted."""

    model_id: str
    inputs: Sequence[Input]
    outputs: Sequence[str] | None = None  # names in the order wanted; None: all, in the model's order
    version: str | None = None  # pinned; None: the model's routing chooses
    routing_key: str | None = None  # the same key gets the same version under a given routing
    request_id: str | None = None  # the id the client gets back: the prediction's record is filed under it


class InferenceResponse(NamedTuple):
    """The model that answered and each output asked for, with its spec, in the order asked."""

    model: Model
    outputs: list[tuple[TensorSpec, Any]]


class Call:
    """What one prediction leaves for the protocol's metrics and log line; filled in as it goes."""

    __slots__ = ("started", "model_id", "version", "latency_ms")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.model_id: str | None = None  # set once the model is known: unknown ids are never labels
        self.version: str | None = None  # the version that answered
        self.latency_ms: float | None = None

    def finish(self) -> None:
        """Note the time from the call's start, when the protocol has encoded its answer."""
        self.latency_ms = round((time.perf_counter() - self.started) * 1000, 3)


def resolve(registry: Registry, model_id: str, version: str | None = None) -> Model:
    """Return ``model_id`` in ``version`` (None: its default version), or raise; for metadata, not traffic."""
    return registry.get(model_id, version)


def infer(registry: Registry, request: InferenceRequest, call: Call) -> InferenceResponse:
    """Answer one inference request, noting in ``call`` what the protocol's metrics and log need."""
    entry = registry.entry(request.model_id)
    routed = request.version is None
    model = registry.version(entry, entry.plan.choose(request.routing_key) if routed else request.version)
    call.model_id, call.version = model.id, model.version
    feeds = _feeds(model, request.inputs)
    specs = _outputs(model, request.outputs)
    names = [spec.name for spec in specs]
    monitor, recorder = model.monitor, registry.recorder if request.request_id is not None else None
    watched = model.watched if monitor is not None or recorder is not None else None
    extra = watched is not None and watched not in names  # run the output monitoring and records read too, then drop it
    started = time.perf_counter()
    users = model.users
    users.append(None)  # running: a memory budget never closes it now
    try:
        results = model.runtime.run(feeds, [*names, watched] if extra else names)
    finally:
        users.pop()
    metrics.observe_inference(model.id, model.version, time.perf_counter() - started)
    if monitor is not None or recorder is not None:
        value = results.pop() if extra else results[names.index(watched)] if watched else None
        if monitor is not None:
            monitor.observe(feeds, value)
        if recorder is not None:
            recorder.observe(request.request_id, model.id, model.version, model.upload, model.kind, value, feeds)  # type: ignore[arg-type]
    if routed and entry.plan.shadows:
        for version in entry.plan.shadows_for(model.version, request.routing_key):
            _shadow(registry, entry, version, request, specs[0].name, results[0])
    return InferenceResponse(model, list(zip(specs, results, strict=True)))


def _shadow(registry: Registry, entry: Entry, version: str, request: InferenceRequest, output: str, value: Any) -> None:
    """Hand a copy of the request to shadow ``version``; its first output is compared with the client's ``value``.

    The copy is decoded and run in the shadow's thread; under a memory budget, that thread also
    opens the version if this worker has not (the client never waits for it)."""
    loaded = registry.loaded(entry, version)
    run = None
    if loaded is not None or registry.budget_mb is not None:
        def run() -> list[Any]:
            model = loaded or registry.version(entry, version)
            names = [output if output in model.runtime.output_names else model.runtime.output_names[0]]
            model.users.append(None)
            try:
                return model.runtime.run(_feeds(model, request.inputs), names)
            finally:
                model.users.pop()
    shadow.submit(entry.id, version, run, value)


def _feeds(model: Model, inputs: Sequence[Input]) -> dict[str, np.ndarray]:
    specs = model.runtime.input_by_name
    feeds: dict[str, np.ndarray] = {}
    for given in inputs:
        if given.name is None:
            if len(specs) != 1:
                names = ", ".join(specs)
                raise BadInput(
                    f"model '{model.id}' has {len(specs)} inputs ({names}); send 'inputs': {{name: values}} instead of 'features'"
                )
            spec = model.inputs[0]
        else:
            spec = specs.get(given.name)
            if spec is None:
                raise BadInput(f"model '{model.id}' has no input named '{given.name}'; its inputs are {', '.join(specs)}")
        if spec.name in feeds:
            raise BadInput(f"input '{spec.name}' is given twice")
        if spec.dtype is None:
            raise BadInput(f"input '{spec.name}' has type {spec.type}, which this server cannot decode")
        feeds[spec.name] = given.decode(spec.name, spec.dtype, spec.shape)
    missing = [name for name in specs if name not in feeds]
    if missing:
        raise BadInput(f"input(s) {', '.join(repr(m) for m in missing)} missing for model '{model.id}'")
    return feeds


def _outputs(model: Model, names: Sequence[str] | None) -> list[TensorSpec]:
    if names is None:
        return list(model.outputs)
    by_name = {spec.name: spec for spec in model.outputs}
    wanted = []
    for name in names:
        spec = by_name.get(name)
        if spec is None:
            raise BadInput(f"model '{model.id}' has no output named '{name}'; its outputs are {', '.join(by_name)}")
        wanted.append(spec)
    return wanted
