"""The V2 gRPC server (grpc.aio) beside uvicorn, in the same process and event loop: both
transports share the data plane, its models, limits and budgets."""

from __future__ import annotations

import logging

import grpc

from app.dataplane import DataPlane
from app.grpc_api.servicer import InferenceServicer
from app.grpc_api.v2.grpc_service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from app.metrics import ServiceMetrics
from app.settings import Settings

log = logging.getLogger(__name__)


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(settings: Settings, plane: DataPlane, metrics: ServiceMetrics) -> grpc.aio.Server:
    """Listening on GRPC_PORT when it returns; raises when the port cannot be bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
            # Several worker processes share the port (the kernel spreads the connections);
            # one process alone must fail loudly on a port already taken.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ]
    )
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, metrics), server)
    address = grpc_address(settings.host, settings.grpc_port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC cannot listen on {address} (GRPC_PORT): {exc}") from None
    if bound == 0:
        raise RuntimeError(f"gRPC cannot listen on {address} (GRPC_PORT)")
    await server.start()
    log.info("V2 gRPC on %s", address)
    return server
