"""The V2 gRPC server (grpc.aio) beside uvicorn, in the same process and event loop: both
transports share the data plane, its models, limits and budgets."""

from __future__ import annotations

import logging

import grpc

from app.dataplane import DataPlane
from app.grpc_api.receive import inflating_deserializer
from app.grpc_api.servicer import InferenceServicer
from app.grpc_api.v2 import grpc_service_pb2 as pb
from app.metrics import ServiceMetrics
from app.settings.server import ServerSettings

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
# Read by its handler as a stream of one raw message (app/grpc_api/receive.py): a unary
# handler would be given the message only once grpc had read and inflated all of it.
SELF_READ_METHODS = ("ModelInfer",)


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(
    settings: ServerSettings, plane: DataPlane, metrics: ServiceMetrics
) -> grpc.aio.Server:
    """Listening on GRPC_PORT when it returns; raises when the port cannot be bound."""
    server = grpc.aio.server(
        options=[
            # The size on the wire (compressed or not); the inflated size is checked in receive.py.
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
            # Compressed messages reach the handlers as they are: inflated under the limits.
            ("grpc.per_message_decompression", 0),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.max_connection_idle_ms", int(settings.grpc_idle_timeout_s * 1000)),
            # Several worker processes share the port (the kernel spreads the connections);
            # one process alone must fail loudly on a port already taken.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ],
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_calls,
    )
    server.add_generic_rpc_handlers((service_handler(InferenceServicer(plane, metrics)),))
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


def service_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's methods, from its descriptor; ModelInfer reads its own message."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name[SERVICE.rsplit(".", 1)[1]].methods:
        behaviour = getattr(servicer, method.name)
        serialize = getattr(pb, method.output_type.name).SerializeToString
        if method.name in SELF_READ_METHODS:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                behaviour, request_deserializer=None, response_serializer=serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=inflating_deserializer(getattr(pb, method.input_type.name)),
                response_serializer=serialize,
            )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
