"""create_app(settings): the FastAPI app; its lifespan starts the V2 gRPC server in the same
event loop and loads the models in the background, so the health routes answer (not ready)
while they load."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api import health, models, openai, repository
from app.api import metrics as metrics_route
from app.api.errors import install_error_handlers
from app.api.middleware import ObservabilityMiddleware
from app.cache.embedding_cache import EmbeddingCache
from app.dataplane import DataPlane
from app.grpc_api.server import start_grpc_server
from app.images.decode import set_pillow_pixel_limit
from app.images.fetch import ImageFetcher, Resolver, system_resolver
from app.images.url_policy import UrlPolicy
from app.inference.budgets import ByteBudget
from app.inference.model_configs import ModelConfig, model_configs
from app.inference.model_thread import ModelHost
from app.inference.preparation import ImagePreparer
from app.inference.registry import ModelRegistry
from app.inference.served_model import ServedModel, ServingLimits
from app.logs import configure_logging
from app.metrics import ServiceMetrics
from app.protocol.schema import InferRequest
from app.settings import Settings
from app.settings.server import ServerSettings
from app.shutdown import SHUTDOWN_GRACE_S

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, resolver: Resolver = system_resolver, model_host: ModelHost | None = None
) -> FastAPI:
    """The app; `resolver` turns image URL hosts into addresses (tests pass their own);
    `model_host` decides which thread runs the model (default: a thread of its own; several
    models always get a thread each). Raises RepositoryError for a bad MODEL_REPOSITORY."""
    configs = model_configs(settings.server, settings.model)
    return build_app(settings.server, configs, resolver, model_host)


def build_app(
    settings: ServerSettings,
    configs: list[ModelConfig],
    resolver: Resolver = system_resolver,
    model_host: ModelHost | None = None,
) -> FastAPI:
    """The app serving `configs` under the server's settings."""
    set_pillow_pixel_limit(settings.max_image_pixels)
    fetcher = ImageFetcher(
        settings.fetch_timeout_s,
        settings.max_image_bytes,
        UrlPolicy.from_settings(settings),
        resolver=resolver,
        max_concurrent=settings.max_concurrent_fetches,
    )
    metrics = ServiceMetrics()
    # One decoding pool and pixel budget for every model: the memory bound is the process's.
    preparer = ImagePreparer(settings, fetcher)
    if len(configs) > 1:
        model_host = None  # one thread each: the main thread runs one model loop at a time
    limits = ServingLimits.from_settings(settings)
    # One cache for every model (CACHE_BYTES is the process's); keys hold each model's identity.
    cache = EmbeddingCache(settings, metrics)
    registry = ModelRegistry(
        [
            ServedModel(
                c.settings,
                preparer,
                metrics,
                model_host,
                load_at_startup=c.load_at_startup,
                limits=limits,
                cache=cache,
            )
            for c in configs
        ],
        max_loaded=settings.max_loaded_models,
        ttl_s=settings.model_ttl_s,
    )
    body_budget = ByteBudget(
        settings.max_request_bytes_in_flight, "request bodies", "MAX_REQUEST_BYTES_IN_FLIGHT"
    )
    plane = DataPlane(settings, registry, body_budget)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        names = ", ".join(f"'{model.name}'" for model in registry)
        log.info("starting: serving model %s on %s:%d", names, settings.host, settings.port)
        grpc_server = await start_grpc_server(settings, plane, metrics) if settings.grpc_port else None
        loading = registry.start()
        loading.add_done_callback(lambda _: _report_failed_start(app, registry))
        try:
            yield
        finally:
            log.info("shutting down")
            if grpc_server is not None:
                # New calls are refused; calls in flight get the grace period to finish.
                await grpc_server.stop(SHUTDOWN_GRACE_S)
            loading.cancel()
            await registry.close()
            await cache.close()
            preparer.close()
            await fetcher.aclose()

    # /docs and /redoc with Swagger UI 5 and ReDoc from the fastapi-offline wheel (no CDN:
    # most clusters have no egress), favicon included.
    app = FastAPIOffline(
        title="Image embedding server",
        version=__version__,
        description="Image embeddings from HuggingFace vision encoders over the Open Inference "
        "Protocol V2 (KServe / Triton REST).",
        lifespan=lifespan,
    )
    app.state.plane = plane
    app.state.models = registry
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    # Level 1: most of the size gain on float text at a fraction of level 9's CPU.
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=1)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(repository.router)
    app.include_router(openai.router)
    app.include_router(metrics_route.router)
    _document_infer_request(app, registry)
    return app


def _report_failed_start(app: FastAPI, registry: ModelRegistry) -> None:
    """A single model that failed to load: `python -m app` exits (app.state.on_failed_start)
    rather than stay up answering 503. An app without that hook (tests, WORKERS > 1) stays
    up, live false."""
    on_failed_start = getattr(app.state, "on_failed_start", None)
    if on_failed_start is None or len(registry) != 1 or not registry.broken:
        return
    [model] = list(registry)
    on_failed_start(f"model '{model.name}' failed to load: {model.load_error}")


def create_app_from_environment() -> FastAPI:
    """The app of one worker process (`WORKERS` > 1): settings come from the environment."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def _document_infer_request(app: FastAPI, registry: ModelRegistry) -> None:
    """The infer route reads its body raw (any Content-Type, binary data), so FastAPI cannot
    see its schema: add InferRequest to the OpenAPI components by hand. Every `model_name`
    parameter gets a served model's name as its example, which Swagger UI's "Try it out"
    fills in."""
    build = app.openapi
    served = next(iter(registry)).name

    def openapi():
        if app.openapi_schema is None:
            schema = build()
            infer_schema = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(infer_schema.pop("$defs", {}))
            components["InferRequest"] = infer_schema
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", ()):
                        if parameter.get("name") == "model_name":
                            parameter["example"] = served
                            parameter.setdefault("schema", {})["example"] = served
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
