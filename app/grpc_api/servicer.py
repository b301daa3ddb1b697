"""`inference.GRPCInferenceService`: each call a thin adapter over the data plane, as the
REST routes are. Domain errors become gRPC status codes here, once, with the REST
messages; every call is counted in the metrics, inference calls are logged like REST's."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc

from app.dataplane import DataPlane
from app.errors import BadRequest, ServiceError, release_frames
from app.grpc_api.codec import decode_infer_request, encode_infer_response
from app.grpc_api.receive import receive_infer_request
from app.grpc_api.v2 import grpc_service_pb2 as pb
from app.grpc_api.v2.grpc_service_pb2_grpc import GRPCInferenceServiceServicer
from app.inference.budgets import Reservation
from app.metrics import ServiceMetrics
from app.request_ids import new_request_id, safe_request_id

log = logging.getLogger("app.access")

# The HTTP status each domain error carries -> its gRPC code (the V2 gRPC spec's mapping).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(error: ServiceError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status_code, grpc.StatusCode.INTERNAL)


def _rpc(handler):
    """Errors to status codes, metrics, and the access log line of inference calls."""
    method = handler.__name__

    @functools.wraps(handler)
    async def call(self: InferenceServicer, request, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        trailers: tuple[tuple[str, str], ...] = ()
        fields: dict = {}
        self.metrics.in_flight.inc()
        try:
            return await handler(self, request, context, fields)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except ServiceError as exc:
            code, message = grpc_status(exc), exc.message
            trailers = tuple((k.lower(), v) for k, v in getattr(exc, "headers", {}).items())
            release_frames(exc)
        except Exception as exc:  # noqa: BLE001 - answered as INTERNAL, logged with its traceback
            log.exception("unhandled error in gRPC %s", method)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
            release_frames(exc)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            self.metrics.grpc_requests.labels(method, code.name).inc()
            self.metrics.grpc_seconds.labels(method).observe(elapsed)
            if method == "ModelInfer" or code == grpc.StatusCode.INTERNAL:
                # As REST's access log: ids, names and counts only, never image data or URLs.
                log.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": fields.get("request_id"),
                            "method": "gRPC",
                            "route": method,
                            "model": fields.get("model"),
                            "images": fields.get("images"),
                            "status": code.name,
                            "duration_ms": round(elapsed * 1000, 1),
                        }
                    },
                )
        await context.abort(code, message, trailing_metadata=trailers)

    return call


class InferenceServicer(GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, metrics: ServiceMetrics):
        self.plane = plane
        self.metrics = metrics

    @_rpc
    async def ServerLive(self, request, context, fields):
        return pb.ServerLiveResponse(live=self.plane.live)

    @_rpc
    async def ServerReady(self, request, context, fields):
        return pb.ServerReadyResponse(ready=self.plane.ready)

    @_rpc
    async def ModelReady(self, request, context, fields):
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))

    @_rpc
    async def ServerMetadata(self, request, context, fields):
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    @_rpc
    async def ModelMetadata(self, request, context, fields):
        metadata = self.plane.model_metadata(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**t) for t in metadata["inputs"]],
            outputs=[tensor(**t) for t in metadata["outputs"]],
        )

    @_rpc
    async def ModelInfer(self, request_stream, context, fields):
        """A unary call whose handler reads the message itself (app/grpc_api/receive.py)."""
        settings = self.plane.settings
        reservation = Reservation(self.plane.body_budget)
        try:
            request = await receive_infer_request(
                context,
                reservation,
                settings.grpc_max_message_bytes,
                settings.max_inflation_ratio,
                settings.grpc_receive_timeout_s,
            )
            fields["request_id"] = safe_request_id(request.id) or new_request_id()
            fields["model"] = request.model_name

            async def decode(limits):
                spec = decode_infer_request(request, limits)
                fields["images"] = len(spec.images)
                return spec

            outcome = await self.plane.infer(
                request.model_name, request.model_version or None, decode, context.time_remaining()
            )
        finally:
            reservation.release()
        return encode_infer_response(
            fields["request_id"],
            outcome.model_name,
            request.model_version or "1",
            outcome.model_id,
            outcome.embeddings,
            outcome.spec.outputs,
            outcome.parameters,
        )

    @_rpc
    async def ModelStatistics(self, request, context, fields):
        stats = self.plane.statistics(request.name or None, request.version or None)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(s) for s in stats])

    @_rpc
    async def RepositoryIndex(self, request, context, fields):
        entries = self.plane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries]
        )

    @_rpc
    async def RepositoryModelLoad(self, request, context, fields):
        authorization = _authorization(context)
        self.plane.authorize_model_control(authorization)
        name = _repository_model_name(request)
        await self.plane.load(name, request.parameters, authorization)
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    @_rpc
    async def RepositoryModelUnload(self, request, context, fields):
        authorization = _authorization(context)
        self.plane.authorize_model_control(authorization)
        name = _repository_model_name(request)
        await self.plane.unload(name, authorization)
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)


def _authorization(context) -> str | None:
    """The `authorization` metadata (gRPC's form of the HTTP header)."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return value if isinstance(value, str) else None
    return None


def _repository_model_name(request) -> str:
    # Triton's message has the model at field 2; KServe's proto puts it at field 1, which
    # this message reads as repository_name (this server has one repository).
    name = request.model_name or request.repository_name
    if not name:
        raise BadRequest("model_name is empty")
    return name


def _statistics(stats: dict) -> pb.ModelStatistics:
    duration = pb.StatisticDuration
    return pb.ModelStatistics(
        name=stats["name"],
        version=stats["version"],
        last_inference=stats["last_inference"],
        inference_count=stats["inference_count"],
        execution_count=stats["execution_count"],
        inference_stats=pb.InferStatistics(
            **{phase: duration(**value) for phase, value in stats["inference_stats"].items()}
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=batch["batch_size"],
                **{phase: duration(**value) for phase, value in batch.items() if phase != "batch_size"},
            )
            for batch in stats["batch_stats"]
        ],
    )
