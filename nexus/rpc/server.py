"""Run the gRPC server inside each gunicorn worker, beside its HTTP server, on the worker's own registry.

gRPC objects made before a fork break in the child (grpc/grpc#29586), so nothing here runs in
gunicorn's master: ``start`` is called from the worker's ``post_worker_init`` hook and ``stop``
from its ``worker_exit`` hook. Every worker binds the same port with ``SO_REUSEPORT``, so the
kernel spreads gRPC connections over the workers as it does HTTP ones, each worker serves them
from the sessions it already holds, and a model uploaded over HTTP is served over gRPC on the
next call. Beside the inference service: the standard health service (``""``: the process
serves; ``inference.GRPCInferenceService``: this worker has loaded the model directory) and
server reflection (``grpcurl list``).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nexus.config import MB
from nexus.errors import ApiError
from nexus.rpc import inference_pb2, inference_pb2_grpc
from nexus.rpc.servicer import SERVICE, Servicer

log = logging.getLogger("nexus.grpc")

READY_EVERY_S = 0.5  # how often the readiness the health service reports is brought up to date


class Running:
    """A started gRPC server and the thread that keeps its health service in step."""

    def __init__(self, server: grpc.Server, stopped: threading.Event) -> None:
        self.server, self.stopped = server, stopped

    def stop(self, grace_s: float) -> None:
        """Refuse new calls, let the ones in flight finish for up to ``grace_s``, then stop."""
        self.stopped.set()
        self.server.stop(grace_s).wait()


def start(state) -> Running | None:
    """Start serving gRPC for this worker on NEXUS_GRPC_PORT (None when it is 0)."""
    settings = state.settings
    if settings.grpc_port == 0:
        return None
    limit = int(settings.grpc_max_message_mb * MB)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.grpc_threads, thread_name_prefix="nexus-grpc"),
        options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit)],
    )
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(state), server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    names = (inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    host = settings.host
    address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address} (NEXUS_GRPC_PORT)")
    server.start()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    stopped = threading.Event()
    threading.Thread(target=_follow_readiness, args=(state.registry, checker, stopped), name="nexus-grpc-health",
                     daemon=True).start()
    log.info("serving gRPC", extra={"address": address, "max_message_mb": settings.grpc_max_message_mb})
    return Running(server, stopped)


def _follow_readiness(registry, checker: health.HealthServicer, stopped: threading.Event) -> None:
    """Report the inference service SERVING exactly while this worker is ready, as /health/ready does."""
    while not stopped.is_set():
        try:
            registry.check_ready()
            status = health_pb2.HealthCheckResponse.SERVING
        except ApiError:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        checker.set(SERVICE, status)
        stopped.wait(READY_EVERY_S)

